"""JobStore on a real database: replacing and deleting a job compare its state in the write."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from flame.controller.store.jobs import JobStore
from flame.job.v1 import job_pb2, task_pb2
from flame.rpc.errors import NotFound

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Job = job_pb2.Job
OWNER = "alice"


def tasks(*task_ids: str) -> list[task_pb2.Task]:
    return [task_pb2.Task(task_id=t, role="trainer", compute_id="default") for t in task_ids]


async def task_ids(store: JobStore, job_id: str) -> list[str]:
    return [task.task_id for _, task in await store.list_tasks(job_id)]


async def test_a_job_started_meanwhile_is_neither_replaced_nor_deleted(
    database: AsyncDatabase[dict[str, Any]],
) -> None:
    store = JobStore(database)
    await store.ensure_indexes()
    job = Job(id=JobStore.new_id(), owner=OWNER, design_id="d1", name="before")
    await store.create(job, tasks("t1"))
    # A start between the servicer's check and its write:
    await store.transition(job.id, Job.STATE_STARTING, expected=[Job.STATE_READY])
    assert await store.replace(Job(id=job.id, owner=OWNER, name="after"), tasks("t2")) is None
    assert not await store.delete(OWNER, job.id)
    stored = await store.get(OWNER, job.id)
    assert (stored.state, stored.name) == (Job.STATE_STARTING, "before")
    assert await task_ids(store, job.id) == ["t1"]
    # Once it is inactive again, both go through.
    await store.transition(job.id, Job.STATE_FAILED, expected=[Job.STATE_STARTING])
    replaced = await store.replace(Job(id=job.id, owner=OWNER, name="after"), tasks("t2", "t3"))
    assert replaced is not None
    assert (replaced.state, replaced.name) == (Job.STATE_READY, "after")
    assert await task_ids(store, job.id) == ["t2", "t3"]
    assert await store.delete(OWNER, job.id)
    with pytest.raises(NotFound):
        await store.delete(OWNER, job.id)
    assert await task_ids(store, job.id) == []
