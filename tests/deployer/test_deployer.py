"""Deployer bookkeeping with a fake launcher and a fake control plane: no process, no server."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from flame.compute.v1 import compute_pb2
from flame.deployer.deployer import SHUTDOWN_MESSAGE, AgentError, ControlPlaneError, Deployer
from flame.notify.v1 import event_pb2

pytestmark = pytest.mark.timeout(10)

AgentStatus = compute_pb2.AgentStatus
Event = event_pb2.Event
S = AgentStatus


class FakeAgent:
    def __init__(self, job_id: str, task_id: str) -> None:
        self.job_id, self.task_id = job_id, task_id
        self.ended: str | None = None
        self.stop_error: str | None = None
        self.stops = 0

    def reap(self) -> str | None:
        return self.ended

    async def stop(self) -> None:
        self.stops += 1
        await asyncio.sleep(0)
        if self.stop_error:
            raise AgentError(self.stop_error)
        self.ended = "stopped"


class FakeLauncher:
    def __init__(self) -> None:
        self.agents: dict[str, FakeAgent] = {}
        self.launches: list[tuple[str, str, str]] = []
        self.broken: set[str] = set()  # task ids that cannot start

    def launch(self, job_id: str, task: compute_pb2.TaskCredential) -> FakeAgent:
        self.launches.append((job_id, task.task_id, task.task_key))
        if task.task_id in self.broken:
            raise AgentError(f"cannot start {task.task_id}")
        self.agents[task.task_id] = FakeAgent(job_id, task.task_id)
        return self.agents[task.task_id]


class FakeControl:
    def __init__(self, tasks: Sequence[str] = ("t1", "t2")) -> None:
        self.tasks = list(tasks)
        self.config_error: ControlPlaneError | None = None
        self.report_errors: list[ControlPlaneError] = []
        self.reports: list[tuple[str, int, str]] = []  # ("job/task", state, message)

    async def deployment_config(self, job_id: str) -> compute_pb2.DeploymentConfig:
        if self.config_error:
            raise self.config_error
        return compute_pb2.DeploymentConfig(
            job_id=job_id,
            tasks=[compute_pb2.TaskCredential(task_id=t, task_key=f"key-{t}") for t in self.tasks],
        )

    async def report(self, job_id: str, statuses: Sequence[AgentStatus]) -> None:
        if self.report_errors:
            raise self.report_errors.pop(0)
        self.reports += [(f"{job_id}/{s.task_id}", s.state, s.message) for s in statuses]


@pytest.fixture
def launcher() -> FakeLauncher:
    return FakeLauncher()


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


@pytest.fixture
def deployer(control: FakeControl, launcher: FakeLauncher) -> Deployer:
    return Deployer(control, launcher, monitor_seconds=0.01)


def add(job_id: str = "j1", *task_ids: str) -> event_pb2.Event:
    return Event(type=Event.TYPE_ADD_RESOURCE, job_id=job_id, task_ids=task_ids)


def revoke(job_id: str = "j1", *task_ids: str) -> event_pb2.Event:
    return Event(type=Event.TYPE_REVOKE_RESOURCE, job_id=job_id, task_ids=task_ids)


async def test_add_starts_an_agent_per_task_with_its_key_and_reports_them(
    deployer: Deployer, launcher: FakeLauncher, control: FakeControl
) -> None:
    await deployer.handle(add("j1"))
    assert launcher.launches == [("j1", "t1", "key-t1"), ("j1", "t2", "key-t2")]
    assert control.reports == [
        ("j1/t1", S.STATE_DEPLOY_SUCCEEDED, ""),
        ("j1/t2", S.STATE_DEPLOY_SUCCEEDED, ""),
    ]
    assert deployer.running_tasks("j1") == ["t1", "t2"]


async def test_a_repeated_add_starts_nothing_twice(
    deployer: Deployer, launcher: FakeLauncher, control: FakeControl
) -> None:
    await deployer.handle(add("j1"))
    await deployer.handle(add("j1"))
    assert len(launcher.launches) == 2
    assert control.reports[2:] == [
        ("j1/t1", S.STATE_DEPLOY_SUCCEEDED, "already running"),
        ("j1/t2", S.STATE_DEPLOY_SUCCEEDED, "already running"),
    ]


async def test_add_naming_tasks_starts_only_those(
    deployer: Deployer, launcher: FakeLauncher
) -> None:
    await deployer.handle(add("j1", "t2"))
    assert [task for _, task, _ in launcher.launches] == ["t2"]


async def test_an_agent_that_cannot_start_is_reported_failed_with_the_error(
    deployer: Deployer, launcher: FakeLauncher, control: FakeControl
) -> None:
    launcher.broken.add("t1")
    await deployer.handle(add("j1"))
    assert control.reports == [
        ("j1/t1", S.STATE_DEPLOY_FAILED, "cannot start t1"),
        ("j1/t2", S.STATE_DEPLOY_SUCCEEDED, ""),
    ]
    assert deployer.running_tasks("j1") == ["t2"]


async def test_a_refused_config_is_dropped_and_a_transient_failure_raised_for_redelivery(
    deployer: Deployer, launcher: FakeLauncher, control: FakeControl
) -> None:
    control.config_error = ControlPlaneError("refused", reason="JOB_NOT_FOUND")
    await deployer.handle(add("j1"))
    control.config_error = ControlPlaneError("unreachable", retryable=True)
    with pytest.raises(ControlPlaneError):
        await deployer.handle(add("j1"))
    assert launcher.launches == []


async def test_revoke_stops_only_that_jobs_agents(
    deployer: Deployer, launcher: FakeLauncher, control: FakeControl
) -> None:
    await deployer.handle(add("j1"))
    control.tasks = ["t3"]
    await deployer.handle(add("j2"))
    await deployer.handle(revoke("j1"))
    assert [launcher.agents[t].stops for t in ("t1", "t2", "t3")] == [1, 1, 0]
    assert control.reports[-2:] == [
        ("j1/t1", S.STATE_REVOKE_SUCCEEDED, ""),
        ("j1/t2", S.STATE_REVOKE_SUCCEEDED, ""),
    ]
    assert (deployer.running_tasks("j1"), deployer.running_tasks("j2")) == ([], ["t3"])


async def test_a_failed_stop_is_reported_and_the_agent_kept_for_another_try(
    deployer: Deployer, launcher: FakeLauncher, control: FakeControl
) -> None:
    await deployer.handle(add("j1"))
    launcher.agents["t1"].stop_error = "still there"
    await deployer.handle(revoke("j1"))
    assert control.reports[-2:] == [
        ("j1/t1", S.STATE_REVOKE_FAILED, "still there"),
        ("j1/t2", S.STATE_REVOKE_SUCCEEDED, ""),
    ]
    assert deployer.running_tasks("j1") == ["t1"]


async def test_revoke_naming_a_task_not_running_here_reports_it_revoked(
    deployer: Deployer, control: FakeControl
) -> None:
    await deployer.handle(revoke("j1", "t9"))
    assert control.reports == [("j1/t9", S.STATE_REVOKE_SUCCEEDED, "not running")]


async def test_an_agent_that_ends_on_its_own_is_reported_exited_once(
    deployer: Deployer, launcher: FakeLauncher, control: FakeControl
) -> None:
    await deployer.handle(add("j1"))
    launcher.agents["t2"].ended = "flamelet exited with status 5"
    await deployer.check()
    await deployer.check()
    assert control.reports[2:] == [("j1/t2", S.STATE_EXITED, "flamelet exited with status 5")]
    assert deployer.running_tasks("j1") == ["t1"]


async def test_reports_that_fail_transiently_go_later_in_order(
    deployer: Deployer, launcher: FakeLauncher, control: FakeControl
) -> None:
    control.report_errors = [ControlPlaneError("unreachable", retryable=True)]
    await deployer.handle(add("j1"))
    assert control.reports == []
    launcher.agents["t1"].ended = "flamelet exited with status 0"
    monitor = asyncio.create_task(deployer.monitor())
    try:
        async with asyncio.timeout(5):
            while len(control.reports) < 3:
                await asyncio.sleep(0.01)
    finally:
        monitor.cancel()
    assert [state for _, state, _ in control.reports] == [
        S.STATE_DEPLOY_SUCCEEDED,
        S.STATE_DEPLOY_SUCCEEDED,
        S.STATE_EXITED,
    ]


async def test_a_refused_report_is_dropped(deployer: Deployer, control: FakeControl) -> None:
    control.report_errors = [ControlPlaneError("refused", reason="JOB_NOT_FOUND")]
    await deployer.handle(add("j1"))
    await deployer.check()
    assert control.reports == []


async def test_shutdown_stops_every_agent_and_reports_them_gone(
    deployer: Deployer, launcher: FakeLauncher, control: FakeControl
) -> None:
    await deployer.handle(add("j1"))
    await deployer.shutdown()
    assert all(agent.stops == 1 for agent in launcher.agents.values())
    assert control.reports[2:] == [
        ("j1/t1", S.STATE_EXITED, SHUTDOWN_MESSAGE),
        ("j1/t2", S.STATE_EXITED, SHUTDOWN_MESSAGE),
    ]


async def test_other_event_types_are_ignored(
    deployer: Deployer, launcher: FakeLauncher, control: FakeControl
) -> None:
    await deployer.handle(Event(type=Event.TYPE_START_JOB, job_id="j1"))
    assert (launcher.launches, control.reports) == ([], [])


async def test_an_adopted_agent_counts_as_running_and_is_watched(
    deployer: Deployer, launcher: FakeLauncher, control: FakeControl
) -> None:
    adopted = FakeAgent("j1", "t1")
    deployer.adopt("j1", "t1", adopted)
    await deployer.handle(add("j1"))  # a redelivered ADD starts only the other task
    assert [task for _, task, _ in launcher.launches] == ["t2"]
    assert ("j1/t1", S.STATE_DEPLOY_SUCCEEDED, "already running") in control.reports
    adopted.ended = "flamelet ended"
    await deployer.check()
    assert ("j1/t1", S.STATE_EXITED, "flamelet ended") in control.reports
    assert deployer.running_tasks("j1") == ["t2"]
