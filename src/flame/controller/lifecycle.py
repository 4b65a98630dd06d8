"""The job lifecycle: a reconciler that drives every active job from MongoDB.

User requests (start, stop) and reports (task status, agent exits) only record
facts and wake the reconciler; every effect on the rest of the system (events to
agents and deployers, state transitions) happens in `reconcile`, which reads the
job from the database and does the next step. Steps are idempotent, so after a
controller crash the next controller finds every active job in MongoDB and
carries it on from wherever it was.

    READY ──start──▶ STARTING ──events published──▶ DEPLOYING ──a task runs──▶ RUNNING
      ▲                 │ stop                          │ stop / maxRunTime     │
      │                 ▼                               ▼                       ▼
    (start again)    STOPPING ──tasks ended or grace──▶ TERMINATED   COMPLETED / FAILED
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections import Counter

from flame.controller.events import EventPublisher, compute_subscriber, task_subscriber
from flame.controller.store.documents import Document, now
from flame.controller.store.jobs import ACTIVE_STATES, JobStore, task_state_name
from flame.controller.taskkeys import new_run_id
from flame.job.v1 import job_pb2, task_pb2
from flame.notify.v1 import event_pb2
from flame.rpc.errors import FailedPrecondition

__all__ = ["JobManager"]

_log = logging.getLogger(__name__)

Job = job_pb2.Job
Task = task_pb2.Task
Event = event_pb2.Event

_STARTABLE = (Job.STATE_READY, Job.STATE_COMPLETED, Job.STATE_FAILED, Job.STATE_TERMINATED)
_STOPPABLE = (Job.STATE_STARTING, Job.STATE_DEPLOYING, Job.STATE_RUNNING)
_RUNNING_STATES = (Job.STATE_DEPLOYING, Job.STATE_RUNNING)


class JobManager:
    """Starts, stops and watches jobs; `run` is its reconcile loop."""

    def __init__(
        self,
        jobs: JobStore,
        publisher: EventPublisher | None,
        *,
        tick_seconds: float = 0.5,
        stop_grace_seconds: float = 30.0,
    ) -> None:
        self._jobs = jobs
        self._publisher = publisher
        self._tick = tick_seconds
        self._grace = datetime.timedelta(seconds=stop_grace_seconds)
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()

    # Requests.

    async def start(self, owner: str, job_id: str) -> Job:
        """Accept a start request; the reconciler does the rest."""
        job = await self._jobs.get(owner, job_id)
        if self._publisher is None:
            raise FailedPrecondition(
                "NOTIFIER_NOT_CONFIGURED", "this controller has no notifier: it cannot run jobs"
            )
        started = await self._jobs.transition(
            job_id,
            Job.STATE_STARTING,
            expected=_STARTABLE,
            extra={
                "run_id": new_run_id(),
                "prepared": False,
                "stop_sent": False,
                "revoke_pending": False,
            },
        )
        if started is None:
            raise _illegal(job, "started")
        self.wake()
        return started

    async def stop(self, owner: str, job_id: str, reason: str = "stopped by its user") -> Job:
        """Accept a stop request; the reconciler does the rest."""
        job = await self._jobs.get(owner, job_id)
        stopped = await self._begin_stop(job_id, reason)
        if stopped is None:
            raise _illegal(job, "stopped")
        return stopped

    async def _begin_stop(self, job_id: str, reason: str) -> Job | None:
        stopping = await self._jobs.transition(
            job_id,
            Job.STATE_STOPPING,
            expected=_STOPPABLE,
            reason=reason,
            extra={"stop_time": now(), "stop_sent": False},
        )
        if stopping is not None:
            self.wake()
        return stopping

    def wake(self) -> None:
        """Reconcile soon (a request or a report changed something)."""
        self._wake.set()

    async def wait_for_change(self, timeout: float) -> None:
        """Wait until the reconciler changed some job, or `timeout` seconds."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    # The loop.

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile every active job until `stop` is set."""
        while not stop.is_set():
            self._wake.clear()
            for job_id in await self._jobs.ids_to_reconcile():
                try:
                    await self.reconcile(job_id)
                except Exception:
                    # One job's trouble (e.g. the notifier down) must not stall the others;
                    # the step is retried on the next tick.
                    _log.exception("reconciling job failed", extra={"job": job_id})
            async with self._changed:
                self._changed.notify_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick)

    async def reconcile(self, job_id: str) -> None:
        """Do the next step of one job."""
        document = await self._jobs.flags(job_id)
        state = Job.State.Value(document["state"])
        if document.get("revoke_pending"):
            await self._revoke(job_id)
        if state == Job.STATE_STARTING:
            await self._deploy(job_id, document)
        elif state in _RUNNING_STATES:
            await self._follow(job_id, state, document)
        elif state == Job.STATE_STOPPING:
            await self._stop(job_id, document)

    async def _deploy(self, job_id: str, document: Document) -> None:
        if not document.get("prepared"):
            await self._jobs.reset_tasks(job_id)
            await self._jobs.mark(job_id, prepared=True)
        publisher = self._require_publisher()
        computes = await self._jobs.compute_ids(job_id)
        tasks = await self._jobs.task_ids(job_id)
        # Agents subscribe to their events when they start, so START_JOB waits for
        # them in the notifier; publishing both now never loses one to a race.
        await publisher.publish([task_subscriber(t) for t in tasks], Event.TYPE_START_JOB, job_id)
        await publisher.publish(
            [compute_subscriber(c) for c in computes], Event.TYPE_ADD_RESOURCE, job_id
        )
        await self._jobs.transition(job_id, Job.STATE_DEPLOYING, expected=[Job.STATE_STARTING])

    async def _follow(self, job_id: str, state: int, document: Document) -> None:
        counts = await self._task_counts(job_id)
        total = sum(counts.values())
        if counts["failed"]:
            await self._finish(job_id, Job.STATE_FAILED, await self._failure_reason(job_id))
        elif counts["completed"] == total:
            await self._finish(job_id, Job.STATE_COMPLETED, "")
        elif self._overdue(document):
            limit = (await self._jobs.get_any(job_id)).max_run_time_seconds
            await self._begin_stop(job_id, f"exceeded maxRunTime of {limit} s")
        elif counts["running"] and state == Job.STATE_DEPLOYING:
            await self._jobs.transition(job_id, Job.STATE_RUNNING, expected=[Job.STATE_DEPLOYING])

    async def _stop(self, job_id: str, document: Document) -> None:
        if not document.get("stop_sent"):
            tasks = await self._jobs.task_ids(job_id)
            await self._require_publisher().publish(
                [task_subscriber(t) for t in tasks], Event.TYPE_STOP_JOB, job_id
            )
            await self._jobs.mark(job_id, stop_sent=True)
        counts = await self._task_counts(job_id)
        grace_over = now() - _aware(document["stop_time"]) > self._grace
        if counts["running"] == 0 or grace_over:
            reason = document.get("reason") or "stopped"
            await self._finish(job_id, Job.STATE_TERMINATED, reason)

    async def _finish(self, job_id: str, state: Job.State.ValueType, reason: str) -> None:
        outcome = Job.State.Name(state).removeprefix("STATE_").lower()
        unfinished_reason = reason if state == Job.STATE_TERMINATED else f"job {outcome}"
        await self._jobs.end_unfinished_tasks(job_id, Task.STATE_TERMINATED, unfinished_reason)
        finished = await self._jobs.transition(
            job_id,
            state,
            expected=ACTIVE_STATES,
            reason=reason,
            extra={"revoke_pending": True},
        )
        if finished is not None:
            _log.info("job finished", extra={"job": job_id, "state": Job.State.Name(state)})
            await self._revoke(job_id)

    async def _revoke(self, job_id: str) -> None:
        """Tell the agents to stop and the deployers to take them down."""
        publisher = self._require_publisher()
        tasks = await self._jobs.task_ids(job_id)
        computes = await self._jobs.compute_ids(job_id)
        await publisher.publish([task_subscriber(t) for t in tasks], Event.TYPE_STOP_JOB, job_id)
        await publisher.publish(
            [compute_subscriber(c) for c in computes], Event.TYPE_REVOKE_RESOURCE, job_id
        )
        await self._jobs.mark(job_id, revoke_pending=False)

    async def _task_counts(self, job_id: str) -> Counter[str]:
        tasks = await self._jobs.list_tasks(job_id)
        return Counter(task_state_name(task.state) for _, task in tasks)

    async def _failure_reason(self, job_id: str) -> str:
        for _, task in await self._jobs.list_tasks(job_id):
            if task.state == Task.STATE_FAILED:
                detail = task.reason or "no reason given"
                return f"task {task.task_id[:12]} (role {task.role}) failed: {detail}"
        return "a task failed"

    def _overdue(self, document: Document) -> bool:
        limit = document["resource"].get("maxRunTimeSeconds", 0)
        started: datetime.datetime | None = document.get("start_time")
        if not (limit and started):
            return False
        return now() - _aware(started) > datetime.timedelta(seconds=limit)

    def _require_publisher(self) -> EventPublisher:
        if self._publisher is None:
            raise FailedPrecondition("NOTIFIER_NOT_CONFIGURED", "this controller has no notifier")
        return self._publisher


def _aware(moment: datetime.datetime) -> datetime.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def _illegal(job: Job, action: str) -> FailedPrecondition:
    state = Job.State.Name(job.state)
    return FailedPrecondition(
        "ILLEGAL_STATE_TRANSITION",
        f"job '{job.id}' is {state.removeprefix('STATE_').lower()} and cannot be {action}",
        metadata={"job": job.id, "state": state},
    )
