"""A deployer's event handling and bookkeeping: which agents run, and what to report.

ADD_RESOURCE starts one agent per task of the job placed on this compute,
REVOKE_RESOURCE stops them, and a monitor notices agents that end on their own.
Every outcome goes to the controller as an `AgentStatus`. How an agent runs is
the `Launcher`'s business and the controller is reached through a
`ControlPlane`; both are injected, so this module starts no process and opens
no connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from flame.compute.v1 import compute_pb2
from flame.notify.v1 import event_pb2

__all__ = [
    "SHUTDOWN_MESSAGE",
    "Agent",
    "AgentError",
    "ControlPlane",
    "ControlPlaneError",
    "Deployer",
    "Launcher",
]

_log = logging.getLogger(__name__)

AgentStatus = compute_pb2.AgentStatus
Event = event_pb2.Event

# How agents stopped by `shutdown` are reported.
SHUTDOWN_MESSAGE = "flamelet stopped: the deployer shut down"


class ControlPlaneError(Exception):
    """A control-plane call failed.

    Attributes:
        reason: The ErrorInfo reason, or "" when the server gave none.
        retryable: Whether the same call may succeed later (the server was
            unreachable or slow), as opposed to being refused.
    """

    def __init__(self, message: str, *, reason: str = "", retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable


class AgentError(Exception):
    """An agent could not be started or stopped."""


class ControlPlane(Protocol):
    """The compute calls a deployer makes; errors are `ControlPlaneError`."""

    async def deployment_config(self, job_id: str) -> compute_pb2.DeploymentConfig:
        """The job's tasks placed on this compute, with fresh task keys."""
        ...

    async def report(self, job_id: str, statuses: Sequence[compute_pb2.AgentStatus]) -> None:
        """Tell the controller what happened to some of the job's agents."""
        ...


class Agent(Protocol):
    """One running task agent."""

    def reap(self) -> str | None:
        """None while the agent runs; once it has ended, clean up after it and say how it ended."""
        ...

    async def stop(self) -> None:
        """Stop the agent and everything it started; raise `AgentError` if that fails."""
        ...


class Launcher(Protocol):
    """Starts task agents on some platform."""

    def launch(self, job_id: str, task: compute_pb2.TaskCredential) -> Agent:
        """Start the agent of one task; raise `AgentError` if it cannot be started."""
        ...


@dataclass
class _Running:
    job_id: str
    agent: Agent
    # Set while a revoke or shutdown stops it: its exit is then expected, not reported.
    stopping: bool = False


class Deployer:
    """Runs the agents of one compute's tasks and reports on them.

    `handle` is the event handler for `flame.notifier.client.follow_events`,
    `monitor` runs beside it, and `shutdown` stops everything at the end.
    Reports that fail for a transient reason wait in an outbox and go with the
    next monitor tick, in the order they were made.
    """

    def __init__(
        self, control: ControlPlane, launcher: Launcher, *, monitor_seconds: float = 0.5
    ) -> None:
        """Start agents with `launcher`, report through `control`, check every `monitor_seconds`."""
        self._control = control
        self._launcher = launcher
        self._monitor_seconds = monitor_seconds
        self._agents: dict[str, _Running] = {}  # by task id
        self._outbox: dict[str, list[AgentStatus]] = {}  # by job id
        self._sending = asyncio.Lock()

    def adopt(self, job_id: str, task_id: str, agent: Agent) -> None:
        """Watch and stop `agent`, which an earlier deployer started for `task_id`, as its own.

        Call before `handle` sees any event: a redelivered ADD then finds it running.
        """
        self._agents[task_id] = _Running(job_id, agent)
        _log.info("adopted agent", extra={"job": job_id, "task": task_id})

    def running_tasks(self, job_id: str) -> list[str]:
        """Ids of the job's tasks whose agents this deployer runs."""
        return [task for task, running in self._agents.items() if running.job_id == job_id]

    async def handle(self, event: event_pb2.Event) -> None:
        """Act on one compute event.

        Raises:
            ControlPlaneError: The deployment config could not be fetched for a
                transient reason; the event should come again.
        """
        if event.type == Event.TYPE_ADD_RESOURCE:
            await self.deploy(event.job_id, event.task_ids)
        elif event.type == Event.TYPE_REVOKE_RESOURCE:
            await self.revoke(event.job_id, event.task_ids)
        else:
            _log.warning(
                "ignoring an event a deployer does not handle",
                extra={"type": Event.Type.Name(event.type), "job": event.job_id},
            )

    async def deploy(self, job_id: str, task_ids: Collection[str] = ()) -> None:
        """Start an agent for each of the job's tasks on this compute (only `task_ids`,
        if given) that is not running yet, and report each outcome.

        Raises:
            ControlPlaneError: Retryable failure to fetch the deployment config.
        """
        try:
            config = await self._control.deployment_config(job_id)
        except ControlPlaneError as error:
            if error.retryable:
                raise
            # Asking again cannot help: the job is gone or this compute may not see it.
            _log.error("cannot deploy job", extra={"job": job_id, "error": str(error)})
            return
        tasks = [task for task in config.tasks if not task_ids or task.task_id in task_ids]
        statuses = [self._start(job_id, task) for task in tasks]
        _log.info("deployed job", extra={"job": job_id, "tasks": len(statuses)})
        await self._report(job_id, statuses)

    def _start(self, job_id: str, task: compute_pb2.TaskCredential) -> AgentStatus:
        if task.task_id in self._agents:
            # A redelivered or republished event: the agent already runs.
            return _status(task.task_id, AgentStatus.STATE_DEPLOY_SUCCEEDED, "already running")
        try:
            agent = self._launcher.launch(job_id, task)
        except AgentError as error:
            _log.error("cannot start agent", extra={"task": task.task_id, "error": str(error)})
            return _status(task.task_id, AgentStatus.STATE_DEPLOY_FAILED, str(error))
        self._agents[task.task_id] = _Running(job_id, agent)
        return _status(task.task_id, AgentStatus.STATE_DEPLOY_SUCCEEDED)

    async def revoke(self, job_id: str, task_ids: Collection[str] = ()) -> None:
        """Stop the job's agents (only those of `task_ids`, if given) and report each outcome.

        A named task whose agent does not run here is reported revoked: nothing is left to stop.
        """
        targets = [task for task in self.running_tasks(job_id) if not task_ids or task in task_ids]
        errors = await self._stop_all(targets)
        statuses = [
            _status(task, AgentStatus.STATE_REVOKE_FAILED, errors[task])
            if errors.get(task)
            else _status(task, AgentStatus.STATE_REVOKE_SUCCEEDED)
            for task in targets
        ]
        statuses += [
            _status(task, AgentStatus.STATE_REVOKE_SUCCEEDED, "not running")
            for task in task_ids
            if task not in targets
        ]
        _log.info("revoked job", extra={"job": job_id, "tasks": len(statuses)})
        await self._report(job_id, statuses)

    async def _stop_all(self, tasks: Sequence[str]) -> dict[str, str]:
        """Stop the agents of `tasks` at once; the error of each that failed, by task id."""
        for task in tasks:
            self._agents[task].stopping = True
        outcomes = await asyncio.gather(
            *(self._agents[task].agent.stop() for task in tasks), return_exceptions=True
        )
        errors: dict[str, str] = {}
        for task, outcome in zip(tasks, outcomes, strict=True):
            if isinstance(outcome, AgentError):
                errors[task] = str(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                # Only forgotten once stopped: a failed or interrupted stop is
                # retried by the next revoke or by shutdown.
                del self._agents[task]
        return errors

    async def monitor(self) -> None:
        """Every `monitor_seconds`, report agents that ended on their own and send
        the reports still waiting. Runs until cancelled."""
        while True:
            try:
                await self.check()
            except Exception:
                # One bad tick must not leave the agents unwatched for good.
                _log.exception("monitoring agents failed")
            await asyncio.sleep(self._monitor_seconds)

    async def check(self) -> None:
        """Report every agent that ended since the last check, then send waiting reports."""
        for task, running in list(self._agents.items()):
            ended = None if running.stopping else running.agent.reap()
            if ended is not None:
                del self._agents[task]
                _log.warning("agent exited", extra={"task": task, "how": ended})
                self._enqueue(running.job_id, [_status(task, AgentStatus.STATE_EXITED, ended)])
        await self._flush()

    async def shutdown(self, *, report_seconds: float = 5.0) -> None:
        """Stop every agent, then report them gone, trying for at most `report_seconds`."""
        jobs = {task: running.job_id for task, running in self._agents.items()}
        errors = await self._stop_all(list(jobs))
        for task, job_id in jobs.items():
            failure = f" (stopping it failed: {errors[task]})" if task in errors else ""
            status = _status(task, AgentStatus.STATE_EXITED, SHUTDOWN_MESSAGE + failure)
            self._enqueue(job_id, [status])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(report_seconds):
                await self._flush()
        if self._outbox:
            _log.error("reports not delivered", extra={"jobs": sorted(self._outbox)})

    async def _report(self, job_id: str, statuses: list[AgentStatus]) -> None:
        if statuses:
            self._enqueue(job_id, statuses)
            await self._flush()

    def _enqueue(self, job_id: str, statuses: list[AgentStatus]) -> None:
        self._outbox.setdefault(job_id, []).extend(statuses)

    async def _flush(self) -> None:
        """Send the outbox, job by job, until done or the first transient failure."""
        async with self._sending:
            for job_id in list(self._outbox):
                statuses = list(self._outbox[job_id])
                try:
                    await self._control.report(job_id, statuses)
                except ControlPlaneError as error:
                    if error.retryable:
                        _log.warning("report delayed", extra={"job": job_id, "error": str(error)})
                        return
                    _log.error("report refused", extra={"job": job_id, "error": str(error)})
                # Removed only after the call, so that a cancelled send is sent again.
                sent = self._outbox[job_id]
                del sent[: len(statuses)]
                if not sent:
                    del self._outbox[job_id]


def _status(task_id: str, state: AgentStatus.State.ValueType, message: str = "") -> AgentStatus:
    return AgentStatus(task_id=task_id, state=state, message=message)
