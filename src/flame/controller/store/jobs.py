"""Jobs and their tasks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo.asynchronous.database import AsyncDatabase

from flame.controller.store.documents import Document, from_document, now, timestamp, to_document
from flame.job.v1 import job_pb2, task_pb2
from flame.rpc.errors import NotFound

__all__ = ["ACTIVE_STATES", "JobStore"]

ACTIVE_STATES = frozenset(
    {
        job_pb2.Job.STATE_STARTING,
        job_pb2.Job.STATE_DEPLOYING,
        job_pb2.Job.STATE_RUNNING,
        job_pb2.Job.STATE_STOPPING,
    }
)


class JobStore:
    """Jobs (owner-scoped) and the tasks expanded from them."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._jobs = db["jobs"]
        self._tasks = db["tasks"]

    async def ensure_indexes(self) -> None:
        await self._jobs.create_index([("owner", 1), ("_id", -1)])
        await self._jobs.create_index([("owner", 1), ("design_id", 1)])
        await self._jobs.create_index("state")
        await self._tasks.create_index([("job_id", 1), ("task_id", 1)], unique=True)
        await self._tasks.create_index([("job_id", 1), ("index", 1)])

    @staticmethod
    def new_id() -> str:
        return str(ObjectId())

    async def create(self, job: job_pb2.Job, tasks: Iterable[task_pb2.Task]) -> job_pb2.Job:
        """Store a job (its `id` already assigned) with its tasks, in state READY."""
        stored = job_pb2.Job()
        stored.CopyFrom(job)
        moment = now()
        stored.state = job_pb2.Job.STATE_READY
        stored.create_time.CopyFrom(timestamp(moment))
        stored.update_time.CopyFrom(timestamp(moment))
        task_documents = [_task_document(stored.id, index, task) for index, task in enumerate(tasks)]
        stored.task_counts.clear()
        stored.task_counts["ready"] = len(task_documents)
        await self._jobs.insert_one({"_id": ObjectId(stored.id), **_job_fields(stored)})
        if task_documents:
            await self._tasks.insert_many(task_documents)
        return stored

    async def get(self, owner: str, job_id: str) -> job_pb2.Job:
        document = await self._jobs.find_one({"_id": _object_id(job_id), "owner": owner})
        if document is None:
            raise _job_not_found(job_id)
        return from_document(document["resource"], job_pb2.Job)

    async def list(self, owner: str, *, before: str | None, limit: int) -> list[job_pb2.Job]:
        query: dict[str, Any] = {"owner": owner}
        if before is not None:
            query["_id"] = {"$lt": _object_id(before)}
        cursor = self._jobs.find(query).sort("_id", -1).limit(limit)
        return [from_document(document["resource"], job_pb2.Job) async for document in cursor]

    async def count_for_design(self, owner: str, design_id: str) -> int:
        return await self._jobs.count_documents({"owner": owner, "design_id": design_id})

    async def replace(self, job: job_pb2.Job, tasks: Iterable[task_pb2.Task]) -> job_pb2.Job:
        """Store a new spec for an inactive job, with freshly expanded tasks, back in READY."""
        stored = job_pb2.Job()
        stored.CopyFrom(job)
        stored.state = job_pb2.Job.STATE_READY
        stored.reason = ""
        stored.update_time.CopyFrom(timestamp(now()))
        task_documents = [_task_document(stored.id, index, task) for index, task in enumerate(tasks)]
        stored.task_counts.clear()
        stored.task_counts["ready"] = len(task_documents)
        await self._tasks.delete_many({"job_id": stored.id})
        if task_documents:
            await self._tasks.insert_many(task_documents)
        await self._jobs.update_one({"_id": ObjectId(stored.id)}, {"$set": _job_fields(stored)})
        return stored

    async def delete(self, owner: str, job_id: str) -> None:
        result = await self._jobs.delete_one({"_id": _object_id(job_id), "owner": owner})
        if result.deleted_count == 0:
            raise _job_not_found(job_id)
        await self._tasks.delete_many({"job_id": job_id})

    async def list_tasks(
        self, job_id: str, *, after: int | None, limit: int
    ) -> list[tuple[int, task_pb2.Task]]:
        """Tasks in expansion order, each with its index (the page key)."""
        query: dict[str, Any] = {"job_id": job_id}
        if after is not None:
            query["index"] = {"$gt": after}
        cursor = self._tasks.find(query).sort("index", 1).limit(limit)
        return [(int(document["index"]), _task(document)) async for document in cursor]

    async def get_task(self, job_id: str, task_id: str) -> task_pb2.Task:
        document = await self._tasks.find_one({"job_id": job_id, "task_id": task_id})
        if document is None:
            raise _task_not_found(task_id)
        return _task(document)


def _job_fields(job: job_pb2.Job) -> Document:
    return {
        "owner": job.owner,
        "design_id": job.design_id,
        "state": job_pb2.Job.State.Name(job.state),
        "resource": to_document(job),
    }


def _task_document(job_id: str, index: int, task: task_pb2.Task) -> Document:
    return {
        "job_id": job_id,
        "task_id": task.task_id,
        "index": index,
        "role": task.role,
        "compute_id": task.compute_id,
        "state": task_pb2.Task.State.Name(task.state),
        "resource": to_document(task),
    }


def _task(document: Document) -> task_pb2.Task:
    return from_document(document["resource"], task_pb2.Task)


def _object_id(job_id: str) -> ObjectId:
    try:
        return ObjectId(job_id)
    except (InvalidId, TypeError):
        raise _job_not_found(job_id) from None


def _job_not_found(job_id: str) -> NotFound:
    return NotFound("JOB_NOT_FOUND", f"job '{job_id}' not found", metadata={"job": job_id})


def _task_not_found(task_id: str) -> NotFound:
    return NotFound("TASK_NOT_FOUND", f"task '{task_id}' not found", metadata={"task": task_id})
