"""The job lifecycle against real servers: the controller's reconciler, the
notifier and the agent API, with the agents' reports made by the test."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest

from flame.agent.v1 import agent_service_pb2 as agent_pb
from flame.agent.v1 import agent_service_pb2_grpc
from flame.compute.v1 import compute_pb2
from flame.compute.v1 import compute_service_pb2 as compute_pb
from flame.job.v1 import job_pb2, task_pb2
from flame.job.v1 import job_service_pb2 as job_pb
from flame.notify.v1 import event_pb2, notify_service_pb2, notify_service_pb2_grpc
from tests.controlplane.helpers import (
    Client,
    Code,
    create_job,
    expect_refusal,
    list_tasks,
    prepare_example,
)
from tests.support.controlplane import ControlPlane

Job = job_pb2.Job
Task = task_pb2.Task
DEADLINE_SECONDS = 20.0


@dataclass
class Agent:
    """Plays one task's flamelet: calls AgentService with the task's key."""

    stub: agent_service_pb2_grpc.AgentServiceStub
    job_id: str
    task_id: str
    key: str

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-flame-task-key", self.key),)

    def report(self, state: int, *, exit_code: int = 0, reason: str = "") -> None:
        self.stub.UpdateTaskStatus(
            agent_pb.UpdateTaskStatusRequest(
                job_id=self.job_id,
                task_id=self.task_id,
                state=state,  # type: ignore[arg-type]
                exit_code=exit_code,
                reason=reason,
            ),
            metadata=self._metadata(),
            timeout=10,
        )

    def manifest(self) -> agent_pb.GetTaskManifestResponse:
        return self.stub.GetTaskManifest(
            agent_pb.GetTaskManifestRequest(job_id=self.job_id, task_id=self.task_id),
            metadata=self._metadata(),
            timeout=10,
        )

    def code(self) -> bytes:
        stream = self.stub.DownloadTaskCode(
            agent_pb.DownloadTaskCodeRequest(job_id=self.job_id, task_id=self.task_id),
            metadata=self._metadata(),
            timeout=10,
        )
        return b"".join(message.chunk for message in stream)

    def append_log(self, data: bytes) -> int:
        request = agent_pb.AppendTaskLogsRequest(
            job_id=self.job_id, task_id=self.task_id, data=data
        )
        reply = self.stub.AppendTaskLogs(iter([request]), metadata=self._metadata(), timeout=10)
        return int(reply.size_bytes)


def report_all(agents: list[Agent], *states: int, reason: str = "") -> None:
    """Each agent reports `states` in turn, as its flamelet would."""
    for agent in agents:
        for state in states:
            agent.report(state, reason=reason)


@pytest.fixture
def agent_stub(api_channel: grpc.Channel) -> agent_service_pb2_grpc.AgentServiceStub:
    return agent_service_pb2_grpc.AgentServiceStub(api_channel)


def wait_for_state(client: Client, job_id: str, *states: int) -> Job:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        job = client.jobs.GetJob(job_pb.GetJobRequest(job_id=job_id)).job
        if job.state in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} is {Job.State.Name(job.state)}, wanted {states}")


def start_with_agents(
    client: Client, admin: Client, stub: agent_service_pb2_grpc.AgentServiceStub, job_id: str
) -> list[Agent]:
    """Start a job and take the deployer's part: fetch the fresh task keys."""
    client.jobs.StartJob(job_pb.StartJobRequest(job_id=job_id))
    wait_for_state(client, job_id, Job.STATE_DEPLOYING)
    config = admin.computes.GetDeploymentConfig(
        compute_pb.GetDeploymentConfigRequest(compute_id="default", job_id=job_id)
    ).config
    return [Agent(stub, job_id, item.task_id, item.task_key) for item in config.tasks]


@pytest.fixture
def mnist_job(alice: Client) -> Job:
    example = prepare_example(alice, "mnist")
    return create_job(alice, example.job)


def test_a_two_tier_job_runs_to_completed(
    alice: Client,
    admin: Client,
    agent_stub: agent_service_pb2_grpc.AgentServiceStub,
    mnist_job: Job,
) -> None:
    agents = start_with_agents(alice, admin, agent_stub, mnist_job.id)
    assert len(agents) == 2
    for agent in agents:
        manifest = agent.manifest().manifest
        config = json.loads(manifest.config_json)
        assert config["taskid"] == agent.task_id and config["job"]["id"] == mnist_job.id
        names = zipfile.ZipFile(io.BytesIO(agent.code())).namelist()
        assert names == [f"{manifest.role}/main.py"]
        agent.report(Task.STATE_RUNNING)
    assert wait_for_state(alice, mnist_job.id, Job.STATE_RUNNING).task_counts["running"] == 2
    agents[0].append_log(b"round 1\n")
    assert agents[0].append_log(b"round 2\n") == 16
    report_all(agents, Task.STATE_COMPLETED)
    done = wait_for_state(alice, mnist_job.id, Job.STATE_COMPLETED)
    assert dict(done.task_counts) == {"completed": 2}
    assert done.end_time.seconds >= done.start_time.seconds > 0
    logs = alice.jobs.ReadTaskLogs(
        job_pb.ReadTaskLogsRequest(job_id=mnist_job.id, task_id=agents[0].task_id)
    )
    assert b"".join(piece.data for piece in logs) == b"round 1\nround 2\n"


def test_a_failing_task_fails_the_job_with_a_reason(
    alice: Client,
    admin: Client,
    agent_stub: agent_service_pb2_grpc.AgentServiceStub,
    mnist_job: Job,
) -> None:
    agents = start_with_agents(alice, admin, agent_stub, mnist_job.id)
    report_all(agents, Task.STATE_RUNNING)
    agents[0].report(Task.STATE_FAILED, exit_code=3, reason="role code exited with status 3")
    failed = wait_for_state(alice, mnist_job.id, Job.STATE_FAILED)
    assert "failed: role code exited with status 3" in failed.reason
    states = {task.task_id: task.state for task in list_tasks(alice, mnist_job.id)}
    assert states == {
        agents[0].task_id: Task.STATE_FAILED,
        agents[1].task_id: Task.STATE_TERMINATED,
    }


def test_stop_terminates_a_running_job(
    alice: Client,
    admin: Client,
    agent_stub: agent_service_pb2_grpc.AgentServiceStub,
    mnist_job: Job,
) -> None:
    agents = start_with_agents(alice, admin, agent_stub, mnist_job.id)
    report_all(agents, Task.STATE_RUNNING)
    wait_for_state(alice, mnist_job.id, Job.STATE_RUNNING)
    stopping = alice.jobs.StopJob(job_pb.StopJobRequest(job_id=mnist_job.id)).job
    assert stopping.state == Job.STATE_STOPPING
    report_all(agents, Task.STATE_TERMINATED, reason="stopped by the control plane")
    terminated = wait_for_state(alice, mnist_job.id, Job.STATE_TERMINATED)
    assert terminated.reason == "stopped by its user"


def test_illegal_transitions_are_refused_at_once_with_the_current_state(
    alice: Client, mnist_job: Job
) -> None:
    details = expect_refusal(
        lambda: alice.jobs.StopJob(job_pb.StopJobRequest(job_id=mnist_job.id)),
        Code.FAILED_PRECONDITION,
        "ILLEGAL_STATE_TRANSITION",
    )
    assert details.metadata["state"] == "STATE_READY"
    alice.jobs.StartJob(job_pb.StartJobRequest(job_id=mnist_job.id))
    details = expect_refusal(
        lambda: alice.jobs.StartJob(job_pb.StartJobRequest(job_id=mnist_job.id)),
        Code.FAILED_PRECONDITION,
        "ILLEGAL_STATE_TRANSITION",
    )
    assert details.metadata["state"] in {"STATE_STARTING", "STATE_DEPLOYING"}
    alice.jobs.StopJob(job_pb.StopJobRequest(job_id=mnist_job.id))
    wait_for_state(alice, mnist_job.id, Job.STATE_TERMINATED)


def test_max_run_time_terminates_the_job(
    alice: Client, admin: Client, agent_stub: agent_service_pb2_grpc.AgentServiceStub
) -> None:
    example = prepare_example(alice, "mnist")
    example.job.max_run_time_seconds = 2
    job = create_job(alice, example.job)
    agents = start_with_agents(alice, admin, agent_stub, job.id)
    report_all(agents, Task.STATE_RUNNING)
    stopping = wait_for_state(alice, job.id, Job.STATE_STOPPING)
    assert stopping.reason == "exceeded maxRunTime of 2 s"
    report_all(agents, Task.STATE_TERMINATED)
    assert wait_for_state(alice, job.id, Job.STATE_TERMINATED).reason == stopping.reason


def test_task_keys_are_checked_and_renewed_on_every_start(
    alice: Client,
    admin: Client,
    agent_stub: agent_service_pb2_grpc.AgentServiceStub,
    mnist_job: Job,
) -> None:
    first, second = start_with_agents(alice, admin, agent_stub, mnist_job.id)
    again = admin.computes.GetDeploymentConfig(
        compute_pb.GetDeploymentConfigRequest(compute_id="default", job_id=mnist_job.id)
    ).config
    # A deployer asking again (a redelivered event) gets the keys its agents hold.
    assert [(t.task_id, t.task_key) for t in again.tasks] == [
        (first.task_id, first.key),
        (second.task_id, second.key),
    ]
    swapped = Agent(agent_stub, mnist_job.id, first.task_id, second.key)
    expect_refusal(swapped.manifest, Code.UNAUTHENTICATED, "TASK_KEY_INVALID")
    for agent in (first, second):
        agent.report(Task.STATE_RUNNING)
        agent.report(Task.STATE_COMPLETED)
    wait_for_state(alice, mnist_job.id, Job.STATE_COMPLETED)
    renewed = start_with_agents(alice, admin, agent_stub, mnist_job.id)
    expect_refusal(first.manifest, Code.UNAUTHENTICATED, "TASK_KEY_INVALID")
    assert renewed[0].manifest().manifest.task_id == first.task_id


def test_an_agent_that_died_fails_its_task(
    alice: Client,
    admin: Client,
    agent_stub: agent_service_pb2_grpc.AgentServiceStub,
    mnist_job: Job,
) -> None:
    agents = start_with_agents(alice, admin, agent_stub, mnist_job.id)
    agents[0].report(Task.STATE_RUNNING)
    admin.computes.UpdateDeploymentStatus(
        compute_pb.UpdateDeploymentStatusRequest(
            compute_id="default",
            job_id=mnist_job.id,
            statuses=[
                compute_pb2.AgentStatus(
                    task_id=agents[0].task_id,
                    state=compute_pb2.AgentStatus.STATE_EXITED,
                    message="killed by signal SIGKILL",
                )
            ],
        )
    )
    failed = wait_for_state(alice, mnist_job.id, Job.STATE_FAILED)
    assert "killed by signal SIGKILL" in failed.reason


@pytest.fixture
def notifier_events(control_plane: ControlPlane) -> Iterator[Callable[[str, int], list[int]]]:
    """Reads the events stored for a subscriber, straight from the notifier."""
    channel = grpc.insecure_channel(control_plane.notifier.address)
    stub = notify_service_pb2_grpc.NotifyServiceStub(channel)

    def read(subscriber: str, count: int) -> list[int]:
        request = notify_service_pb2.SubscribeEventsRequest(subscriber=subscriber, after_cursor=0)
        types: list[int] = []
        stream = stub.SubscribeEvents(request, timeout=DEADLINE_SECONDS)
        for message in stream:
            if message.HasField("event"):
                types.append(message.event.type)
                if len(types) == count:
                    break
        stream.cancel()
        return types

    yield read
    channel.close()


def test_agents_and_deployers_are_told_through_the_notifier(
    alice: Client,
    admin: Client,
    agent_stub: agent_service_pb2_grpc.AgentServiceStub,
    mnist_job: Job,
    notifier_events: Callable[[str, int], list[int]],
) -> None:
    agents = start_with_agents(alice, admin, agent_stub, mnist_job.id)
    report_all(agents, Task.STATE_RUNNING, Task.STATE_COMPLETED)
    wait_for_state(alice, mnist_job.id, Job.STATE_COMPLETED)
    Event = event_pb2.Event
    assert notifier_events(f"task/{agents[0].task_id}", 2) == [
        Event.TYPE_START_JOB,
        Event.TYPE_STOP_JOB,
    ]


def test_a_job_survives_a_controller_killed_mid_run(
    control_plane: ControlPlane,
    alice: Client,
    admin: Client,
    agent_stub: agent_service_pb2_grpc.AgentServiceStub,
    mnist_job: Job,
) -> None:
    agents = start_with_agents(alice, admin, agent_stub, mnist_job.id)
    report_all(agents, Task.STATE_RUNNING)
    wait_for_state(alice, mnist_job.id, Job.STATE_RUNNING)
    control_plane.kill_controller()
    control_plane.start_controller()
    report_all(agents, Task.STATE_COMPLETED)
    assert wait_for_state(alice, mnist_job.id, Job.STATE_COMPLETED).task_counts["completed"] == 2
