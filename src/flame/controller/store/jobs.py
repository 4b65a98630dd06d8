"""Jobs, their tasks and the tasks' logs.

A job document keeps its spec under `resource` and its changing status at the
top level (state, reason, times), so state transitions are single atomic
updates that compare the current state; a task document does the same. Replacing
and deleting a job compare its state too, in the same write, so that a start
that comes in between wins cleanly instead of running on half-replaced tasks.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

import pymongo
from bson import Binary, ObjectId
from bson.errors import InvalidId
from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from flame.controller.store.documents import Document, from_document, now, timestamp, to_document
from flame.job.v1 import job_pb2, task_pb2
from flame.rpc.errors import NotFound

__all__ = ["ACTIVE_STATES", "TERMINAL_TASK_STATES", "JobStore", "task_state_name"]

Job = job_pb2.Job
Task = task_pb2.Task

ACTIVE_STATES = frozenset(
    {Job.STATE_STARTING, Job.STATE_DEPLOYING, Job.STATE_RUNNING, Job.STATE_STOPPING}
)
# As stored: state names. `_INACTIVE` filters on what may be replaced or deleted.
_ACTIVE_NAMES = sorted(Job.State.Name(state) for state in ACTIVE_STATES)
_INACTIVE = {"state": {"$nin": _ACTIVE_NAMES}}
TERMINAL_TASK_STATES = frozenset({Task.STATE_COMPLETED, Task.STATE_FAILED, Task.STATE_TERMINATED})
# The task states an agent may move a task from, per reported state.
_TASK_TRANSITIONS: dict[Task.State.ValueType, tuple[Task.State.ValueType, ...]] = {
    Task.STATE_RUNNING: (Task.STATE_READY,),
    Task.STATE_COMPLETED: (Task.STATE_RUNNING,),
    Task.STATE_FAILED: (Task.STATE_READY, Task.STATE_RUNNING),
    Task.STATE_TERMINATED: (Task.STATE_READY, Task.STATE_RUNNING),
}
_LOG_TAIL_BYTES = 4096
# A replacement, its retries on write conflicts included, ends within this many seconds.
_REPLACE_TIMEOUT = 30.0


def task_state_name(state: Task.State.ValueType) -> str:
    """`running` for STATE_RUNNING: the short name used in task counts."""
    return Task.State.Name(state).removeprefix("STATE_").lower()


class JobStore:
    """Jobs (owner-scoped), the tasks expanded from them and the tasks' logs."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._jobs = db["jobs"]
        self._tasks = db["tasks"]
        self._logs = db["task_logs"]

    async def ensure_indexes(self) -> None:
        await self._jobs.create_index([("owner", 1), ("_id", -1)])
        await self._jobs.create_index([("owner", 1), ("design_id", 1)])
        await self._jobs.create_index("dataset_ids")
        await self._jobs.create_index("state")
        await self._tasks.create_index([("job_id", 1), ("task_id", 1)], unique=True)
        await self._tasks.create_index([("job_id", 1), ("index", 1)])
        await self._logs.create_index([("job_id", 1), ("task_id", 1), ("offset", 1)], unique=True)

    @staticmethod
    def new_id() -> str:
        return str(ObjectId())

    # Jobs.

    async def create(self, job: Job, tasks: Iterable[Task]) -> Job:
        """Store a job (its `id` already assigned) with its tasks, in state READY."""
        moment = now()
        spec = _spec(job)
        await self._jobs.insert_one(
            {
                "_id": ObjectId(job.id),
                "owner": job.owner,
                "design_id": job.design_id,
                "resource": to_document(spec),
                "dataset_ids": _dataset_ids(job),
                **_status(Job.STATE_READY, moment, create_time=moment),
            }
        )
        await self._insert_tasks(job.id, tasks)
        return await self.get(job.owner, job.id)

    async def get(self, owner: str, job_id: str) -> Job:
        document = await self._jobs.find_one({"_id": _object_id(job_id), "owner": owner})
        if document is None:
            raise _job_not_found(job_id)
        return (await self._with_counts([document]))[0]

    async def get_any(self, job_id: str) -> Job:
        """A job whoever owns it (for the controller's own machinery)."""
        document = await self._jobs.find_one({"_id": _object_id(job_id)})
        if document is None:
            raise _job_not_found(job_id)
        return (await self._with_counts([document]))[0]

    async def list_jobs(self, owner: str, *, before: str | None, limit: int) -> list[Job]:
        query: dict[str, Any] = {"owner": owner}
        if before is not None:
            query["_id"] = {"$lt": _object_id(before)}
        documents = await self._jobs.find(query).sort("_id", -1).limit(limit).to_list()
        return await self._with_counts(documents)

    async def ids_to_reconcile(self) -> list[str]:
        """Active jobs, and finished ones whose agents may still need stopping."""
        query = {"$or": [{"state": {"$in": _ACTIVE_NAMES}}, {"revoke_pending": True}]}
        return [str(document["_id"]) async for document in self._jobs.find(query, {"_id": 1})]

    async def count_using_dataset(self, dataset_id: str) -> int:
        """How many jobs, of any user, read a dataset."""
        return await self._jobs.count_documents({"dataset_ids": dataset_id})

    async def count_for_design(self, owner: str, design_id: str) -> int:
        return await self._jobs.count_documents({"owner": owner, "design_id": design_id})

    async def replace(self, job: Job, tasks: Iterable[Task]) -> Job | None:
        """Store a new spec for an inactive job, with freshly expanded tasks, back in READY;
        None, and nothing changed, if the job is active by now."""
        task_list = list(tasks)

        async def store(session: AsyncClientSession) -> bool:
            # The job first: a start racing this one conflicts here, before any task goes.
            claimed = await self._jobs.update_one(
                {"_id": ObjectId(job.id), **_INACTIVE},
                {
                    "$set": {
                        "resource": to_document(_spec(job)),
                        "dataset_ids": _dataset_ids(job),
                        **_status(Job.STATE_READY, now()),
                    }
                },
                session=session,
            )
            if claimed.matched_count == 0:
                return False
            await self._tasks.delete_many({"job_id": job.id}, session=session)
            await self._logs.delete_many({"job_id": job.id}, session=session)
            await self._insert_tasks(job.id, task_list, session=session)
            return True

        with pymongo.timeout(_REPLACE_TIMEOUT):
            async with self._jobs.database.client.start_session() as session:
                if not await session.with_transaction(store):
                    return None
        return await self.get(job.owner, job.id)

    async def transition(
        self,
        job_id: str,
        to: Job.State.ValueType,
        *,
        expected: Iterable[Job.State.ValueType],
        reason: str = "",
        extra: Document | None = None,
    ) -> Job | None:
        """Move a job to state `to` if it is in one of `expected`; None if it was not."""
        moment = now()
        fields: Document = {**_status(to, moment, reason=reason), **(extra or {})}
        if to == Job.STATE_STARTING:
            fields["start_time"] = moment
        if to in (Job.STATE_COMPLETED, Job.STATE_FAILED, Job.STATE_TERMINATED):
            fields["end_time"] = moment
        document = await self._jobs.find_one_and_update(
            {"_id": _object_id(job_id), "state": {"$in": [Job.State.Name(s) for s in expected]}},
            {"$set": fields},
            return_document=ReturnDocument.AFTER,
        )
        return None if document is None else (await self._with_counts([document]))[0]

    async def mark(self, job_id: str, **flags: Any) -> None:
        """Set bookkeeping fields of a job (e.g. `revoked=True`) without a state change."""
        await self._jobs.update_one({"_id": _object_id(job_id)}, {"$set": flags})

    async def flags(self, job_id: str) -> Document:
        document = await self._jobs.find_one({"_id": _object_id(job_id)})
        if document is None:
            raise _job_not_found(job_id)
        return document

    async def delete(self, owner: str, job_id: str) -> bool:
        """Delete an inactive job with its tasks and logs; False if the job is active.

        Raises:
            NotFound: `owner` has no such job.
        """
        query = {"_id": _object_id(job_id), "owner": owner}
        result = await self._jobs.delete_one({**query, **_INACTIVE})
        if result.deleted_count == 0:
            if await self._jobs.count_documents(query, limit=1) == 0:
                raise _job_not_found(job_id)
            return False
        await self._tasks.delete_many({"job_id": job_id})
        await self._logs.delete_many({"job_id": job_id})
        return True

    async def _with_counts(self, documents: list[Document]) -> list[Job]:
        ids = [str(document["_id"]) for document in documents]
        counts: dict[str, dict[str, int]] = {job_id: {} for job_id in ids}
        pipeline: list[Document] = [
            {"$match": {"job_id": {"$in": ids}}},
            {"$group": {"_id": {"job": "$job_id", "state": "$state"}, "n": {"$sum": 1}}},
        ]
        async for row in await self._tasks.aggregate(pipeline):
            state = row["_id"]["state"].removeprefix("STATE_").lower()
            counts[row["_id"]["job"]][state] = row["n"]
        return [_job(document, counts[str(document["_id"])]) for document in documents]

    # Tasks.

    async def _insert_tasks(
        self, job_id: str, tasks: Iterable[Task], session: AsyncClientSession | None = None
    ) -> None:
        documents = [
            {
                "job_id": job_id,
                "task_id": task.task_id,
                "index": index,
                "role": task.role,
                "compute_id": task.compute_id,
                "resource": to_document(_task_spec(task)),
                **_task_status(Task.STATE_READY),
            }
            for index, task in enumerate(tasks)
        ]
        if documents:
            await self._tasks.insert_many(documents, session=session)

    async def list_tasks(
        self, job_id: str, *, after: int | None = None, limit: int = 0
    ) -> list[tuple[int, Task]]:
        """Tasks in expansion order, each with its index (the page key)."""
        query: dict[str, Any] = {"job_id": job_id}
        if after is not None:
            query["index"] = {"$gt": after}
        cursor = self._tasks.find(query).sort("index", 1).limit(limit)
        return [(int(document["index"]), _task(document)) async for document in cursor]

    async def get_task(self, job_id: str, task_id: str) -> Task:
        document = await self._tasks.find_one({"job_id": job_id, "task_id": task_id})
        if document is None:
            raise _task_not_found(task_id)
        return _task(document)

    async def reset_tasks(self, job_id: str) -> None:
        """Every task back to READY, before a (re)start."""
        await self._tasks.update_many({"job_id": job_id}, {"$set": _task_status(Task.STATE_READY)})
        await self._logs.delete_many({"job_id": job_id})

    async def task_ids_on(self, job_id: str, compute_id: str) -> list[str]:
        """The job's tasks placed on one compute, in expansion order."""
        query = {"job_id": job_id, "compute_id": compute_id}
        cursor = self._tasks.find(query, {"task_id": 1}).sort("index", 1)
        return [document["task_id"] async for document in cursor]

    async def report_task(
        self,
        job_id: str,
        task_id: str,
        state: Task.State.ValueType,
        *,
        exit_code: int = 0,
        reason: str = "",
        log_tail: str = "",
    ) -> bool:
        """Apply a task state reported by its agent or deployer if the transition is
        legal; False when the task was already past it (e.g. a late report)."""
        allowed = [Task.State.Name(s) for s in _TASK_TRANSITIONS.get(state, ())]
        result = await self._tasks.update_one(
            {"job_id": job_id, "task_id": task_id, "state": {"$in": allowed}},
            {"$set": _task_status(state, exit_code=exit_code, reason=reason, log_tail=log_tail)},
        )
        return result.modified_count == 1

    async def end_unfinished_tasks(
        self, job_id: str, state: Task.State.ValueType, reason: str
    ) -> int:
        """Move every task not yet finished to `state` (FAILED or TERMINATED)."""
        unfinished = [Task.State.Name(s) for s in (Task.STATE_READY, Task.STATE_RUNNING)]
        result = await self._tasks.update_many(
            {"job_id": job_id, "state": {"$in": unfinished}},
            {"$set": _task_status(state, reason=reason)},
        )
        return result.modified_count

    async def compute_ids(self, job_id: str) -> list[str]:
        return sorted(await self._tasks.distinct("compute_id", {"job_id": job_id}))

    async def task_ids(self, job_id: str) -> list[str]:
        cursor = self._tasks.find({"job_id": job_id}, {"task_id": 1}).sort("index", 1)
        return [document["task_id"] async for document in cursor]

    # Logs.

    async def append_log(self, job_id: str, task_id: str, data: bytes) -> int:
        """Append bytes to a task's log; returns the log's new size."""
        last = await self._logs.find_one(
            {"job_id": job_id, "task_id": task_id}, sort=[("offset", -1)]
        )
        offset = 0 if last is None else last["offset"] + len(last["data"])
        if data:
            await self._logs.insert_one(
                {"job_id": job_id, "task_id": task_id, "offset": offset, "data": Binary(data)}
            )
        return offset + len(data)

    async def read_log(self, job_id: str, task_id: str, offset: int) -> list[tuple[int, bytes]]:
        """The log pieces from `offset` on, as (offset, bytes), the first one trimmed."""
        cursor = self._logs.find({"job_id": job_id, "task_id": task_id}, sort=[("offset", 1)])
        pieces = []
        async for document in cursor:
            start, data = document["offset"], bytes(document["data"])
            if start + len(data) <= offset:
                continue
            skip = max(0, offset - start)
            pieces.append((start + skip, data[skip:]))
        return pieces


def _dataset_ids(job: Job) -> list[str]:
    return sorted(
        {
            dataset_id
            for role in job.data_spec
            for group in role.dataset_groups.values()
            for dataset_id in group.dataset_ids
        }
    )


def _spec(job: Job) -> Job:
    spec = Job()
    spec.CopyFrom(job)
    for name in (
        "state",
        "reason",
        "task_counts",
        "create_time",
        "start_time",
        "update_time",
        "end_time",
    ):
        spec.ClearField(name)
    return spec


def _status(
    state: Job.State.ValueType,
    moment: datetime.datetime,
    *,
    reason: str = "",
    create_time: datetime.datetime | None = None,
) -> Document:
    fields: Document = {"state": Job.State.Name(state), "reason": reason, "update_time": moment}
    if create_time is not None:
        fields["create_time"] = create_time
    return fields


def _job(document: Document, counts: dict[str, int]) -> Job:
    job = from_document(document["resource"], Job)
    job.id = str(document["_id"])
    job.state = Job.State.Value(document["state"])
    job.reason = document.get("reason", "")
    job.task_counts.update(counts)
    for name in ("create_time", "start_time", "update_time", "end_time"):
        if document.get(name) is not None:
            getattr(job, name).CopyFrom(timestamp(document[name]))
    return job


def _task_spec(task: Task) -> Task:
    spec = Task()
    spec.CopyFrom(task)
    for name in ("state", "exit_code", "reason", "log_tail", "update_time"):
        spec.ClearField(name)
    return spec


def _task_status(
    state: Task.State.ValueType, *, exit_code: int = 0, reason: str = "", log_tail: str = ""
) -> Document:
    return {
        "state": Task.State.Name(state),
        "exit_code": exit_code,
        "reason": reason,
        "log_tail": log_tail[-_LOG_TAIL_BYTES:],
        "update_time": now(),
    }


def _task(document: Document) -> Task:
    task = from_document(document["resource"], Task)
    task.state = Task.State.Value(document["state"])
    task.exit_code = document.get("exit_code", 0)
    task.reason = document.get("reason", "")
    task.log_tail = document.get("log_tail", "")
    if document.get("update_time") is not None:
        task.update_time.CopyFrom(timestamp(document["update_time"]))
    return task


def _object_id(job_id: str) -> ObjectId:
    try:
        return ObjectId(job_id)
    except (InvalidId, TypeError):
        raise _job_not_found(job_id) from None


def _job_not_found(job_id: str) -> NotFound:
    return NotFound("JOB_NOT_FOUND", f"job '{job_id}' not found", metadata={"job": job_id})


def _task_not_found(task_id: str) -> NotFound:
    return NotFound("TASK_NOT_FOUND", f"task '{task_id}' not found", metadata={"task": task_id})
