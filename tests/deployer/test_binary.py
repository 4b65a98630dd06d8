"""The `flame-deployer` program end to end: a real notifier on SecantusDB, the fake
ComputeService, fake flamelets, and the deployer as a child process."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from flame.compute.v1 import compute_pb2
from flame.deployer.deployer import SHUTDOWN_MESSAGE
from flame.deployer.launcher import STATUS_UNKNOWN, describe_exit
from flame.notifier.app import Notifier, open_database, start_notifier
from flame.notify.v1 import event_pb2, notify_service_pb2, notify_service_pb2_grpc
from flame.rpc.client import open_channel
from flame.rpc.server import ServerOptions
from tests.deployer.conftest import (
    ADMIN_TOKEN,
    COMPUTE_KEY,
    ComputeServer,
    FakeFlamelet,
    MakeFlamelet,
    alive,
    eventually,
    task_id,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]

S = compute_pb2.AgentStatus
Event = event_pb2.Event
DEPLOYER = Path(sys.executable).parent / "flame-deployer"


class DeployerProcess:
    """A running `flame-deployer`, its output in a file."""

    def __init__(self, process: subprocess.Popen[bytes], output: Path) -> None:
        self.process = process
        self._output = output

    def output(self) -> str:
        return self._output.read_text(errors="replace")

    async def exit_code(self, timeout: float = 15.0) -> int:
        """Wait for it to exit, letting the in-process servers serve meanwhile."""
        await eventually(lambda: self.process.poll() is not None, timeout, "the deployer to exit")
        return self.process.returncode


StartDeployer = Callable[..., Awaitable[DeployerProcess]]


@pytest.fixture
async def notifier(mongo_uri: str, database_name: str) -> AsyncIterator[Notifier]:
    client: AsyncMongoClient[dict[str, Any]]
    client, db = await open_database(mongo_uri, database_name)
    running = await start_notifier(db, ServerOptions(port=0, grace_seconds=1))
    yield running
    await running.stop()
    await client.close()


@pytest.fixture
async def publish(notifier: Notifier) -> AsyncIterator[Callable[..., Awaitable[None]]]:
    async with open_channel(notifier.address, tls=None) as channel:
        stub = notify_service_pb2_grpc.NotifyServiceStub(channel)

        async def publish(event_type: Event.Type.ValueType, job_id: str) -> None:
            request = notify_service_pb2.PublishEventRequest(
                subscribers=["compute/default"], event=Event(type=event_type, job_id=job_id)
            )
            await stub.PublishEvent(request, timeout=10)

        yield publish


@pytest.fixture
async def start_deployer(
    compute_server: ComputeServer, notifier: Notifier, tmp_path: Path
) -> AsyncIterator[StartDeployer]:
    started: list[DeployerProcess] = []

    async def start(flamelet: FakeFlamelet, **env: str) -> DeployerProcess:
        output = tmp_path / f"deployer-{len(started)}.log"
        command = [
            *(str(DEPLOYER), "--plaintext", "--stop-grace-seconds", "5"),
            *("--apiserver", compute_server.address, "--notifier", notifier.address),
            *("--work-root", str(tmp_path / "work"), "--flamelet", str(flamelet.path)),
        ]
        secrets_env = {
            "FLAME_DEPLOYER_ADMIN_TOKEN": ADMIN_TOKEN,
            "FLAME_DEPLOYER_COMPUTE_KEY": COMPUTE_KEY,
        }
        with output.open("wb") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **secrets_env, **env},
            )
        started.append(DeployerProcess(process, output))
        return started[-1]

    yield start
    for deployer in started:
        print(deployer.output())  # shown when the test fails
        if deployer.process.poll() is None:
            deployer.process.send_signal(signal.SIGTERM)
            try:
                await deployer.exit_code(timeout=10)
            except AssertionError:
                deployer.process.kill()
                deployer.process.wait(5)


@pytest.fixture
def job() -> str:
    return secrets.token_hex(12)


async def test_it_registers_and_starts_a_flamelet_per_task_with_its_key(
    start_deployer: StartDeployer,
    fake_flamelet: MakeFlamelet,
    publish: Callable[..., Awaitable[None]],
    compute_server: ComputeServer,
    notifier: Notifier,
    job: str,
    tmp_path: Path,
) -> None:
    fake, flamelet = compute_server.fake, fake_flamelet("sleep")
    await start_deployer(flamelet)
    await publish(Event.TYPE_ADD_RESOURCE, job)
    await fake.wait_for(job, S.STATE_DEPLOY_SUCCEEDED, 2)
    assert (fake.keys, fake.registrations) == ({"default": COMPUTE_KEY}, 1)
    records = await flamelet.wait_for_records(2)
    tasks = [task_id(job, 0), task_id(job, 1)]
    assert sorted(records) == sorted(tasks)
    for task in tasks:
        argv, key = records[task]["argv"], records[task]["task_key"]
        assert argv[1:] == [
            *("--job-id", job, "--task-id", task),
            *("--apiserver", compute_server.address, "--notifier", notifier.address),
            *("--plaintext", "--work-root", str(tmp_path / "work")),
        ]
        assert key == fake.issued[task][-1]
        assert not any(key in arg for arg in argv)
        assert records[task]["deployer_env"] == []
        assert (tmp_path / "work" / "logs" / job / f"{task}.log").exists()


async def test_a_registration_with_the_same_key_is_confirmed(
    start_deployer: StartDeployer,
    fake_flamelet: MakeFlamelet,
    publish: Callable[..., Awaitable[None]],
    compute_server: ComputeServer,
    job: str,
) -> None:
    compute_server.fake.keys["default"] = COMPUTE_KEY
    deployer = await start_deployer(fake_flamelet("sleep"))
    await publish(Event.TYPE_ADD_RESOURCE, job)
    await compute_server.fake.wait_for(job, S.STATE_DEPLOY_SUCCEEDED, 2)
    assert deployer.process.poll() is None


async def test_a_republished_add_starts_nothing_twice(
    start_deployer: StartDeployer,
    fake_flamelet: MakeFlamelet,
    publish: Callable[..., Awaitable[None]],
    compute_server: ComputeServer,
    job: str,
    tmp_path: Path,
) -> None:
    flamelet = fake_flamelet("sleep")
    await start_deployer(flamelet)
    await publish(Event.TYPE_ADD_RESOURCE, job)
    await publish(Event.TYPE_ADD_RESOURCE, job)
    await compute_server.fake.wait_for(job, S.STATE_DEPLOY_SUCCEEDED, 4)
    assert [m for _, _, m in compute_server.fake.states(job)][2:] == ["already running"] * 2
    await asyncio.sleep(0.5)  # a second flamelet, if one had started, would have written by now
    for task in (task_id(job, 0), task_id(job, 1)):
        log = tmp_path / "work" / "logs" / job / f"{task}.log"
        assert log.read_text().count("fake flamelet") == 1


@dataclass
class Deployed:
    """A deployer running the two sleeping flamelets of `job`, and what they recorded."""

    deployer: DeployerProcess
    flamelet: FakeFlamelet
    records: dict[str, Any]


@pytest.fixture
async def deployed(
    start_deployer: StartDeployer,
    fake_flamelet: MakeFlamelet,
    publish: Callable[..., Awaitable[None]],
    job: str,
) -> Deployed:
    flamelet = fake_flamelet("sleep")
    deployer = await start_deployer(flamelet)
    await publish(Event.TYPE_ADD_RESOURCE, job)
    return Deployed(deployer, flamelet, await flamelet.wait_for_records(2))


async def test_revoke_stops_the_flamelets_and_their_children(
    deployed: Deployed,
    publish: Callable[..., Awaitable[None]],
    compute_server: ComputeServer,
    job: str,
) -> None:
    pids = deployed.flamelet.pids()
    assert len(pids) == 4 and all(alive(pid) for pid in pids)
    await publish(Event.TYPE_REVOKE_RESOURCE, job)
    await compute_server.fake.wait_for(job, S.STATE_REVOKE_SUCCEEDED, 2)
    assert not any(alive(pid) for pid in pids)
    await asyncio.sleep(1)  # two monitor ticks: a revoked flamelet is not reported as exited
    assert S.STATE_EXITED not in [state for _, state, _ in compute_server.fake.states(job)]
    assert deployed.deployer.process.poll() is None


async def test_a_flamelet_that_exits_is_reported_with_its_status(
    start_deployer: StartDeployer,
    fake_flamelet: MakeFlamelet,
    publish: Callable[..., Awaitable[None]],
    compute_server: ComputeServer,
    job: str,
) -> None:
    await start_deployer(fake_flamelet("exit5"))
    await publish(Event.TYPE_ADD_RESOURCE, job)
    await compute_server.fake.wait_for(job, S.STATE_EXITED, 2)
    exits = [(t, m) for t, s, m in compute_server.fake.states(job) if s == S.STATE_EXITED]
    assert sorted(exits) == sorted(
        (task_id(job, i), "flamelet exited with status 5") for i in range(2)
    )


async def test_sigterm_stops_every_flamelet_then_exits_0(
    start_deployer: StartDeployer,
    fake_flamelet: MakeFlamelet,
    publish: Callable[..., Awaitable[None]],
    compute_server: ComputeServer,
    job: str,
) -> None:
    flamelet = fake_flamelet("sleep")
    deployer = await start_deployer(flamelet)
    await publish(Event.TYPE_ADD_RESOURCE, job)
    await compute_server.fake.wait_for(job, S.STATE_DEPLOY_SUCCEEDED, 2)
    pids = flamelet.pids()
    began = time.monotonic()
    deployer.process.send_signal(signal.SIGTERM)
    assert await deployer.exit_code() == 0, deployer.output()
    assert time.monotonic() - began < 5
    assert not any(alive(pid) for pid in pids)
    exits = [m for _, s, m in compute_server.fake.states(job) if s == S.STATE_EXITED]
    assert exits == [SHUTDOWN_MESSAGE] * 2


async def test_a_compute_registered_with_another_key_stops_it_with_a_clear_message(
    start_deployer: StartDeployer, fake_flamelet: MakeFlamelet, compute_server: ComputeServer
) -> None:
    compute_server.fake.keys["default"] = "the-key-it-was-registered-with"
    deployer = await start_deployer(fake_flamelet("sleep"))
    assert await deployer.exit_code() == 1
    output = deployer.output()
    assert "cannot register compute 'default'" in output
    assert "registered with another api key: set FLAME_DEPLOYER_COMPUTE_KEY" in output


async def test_a_refused_admin_token_stops_it_with_a_clear_message(
    start_deployer: StartDeployer, fake_flamelet: MakeFlamelet
) -> None:
    deployer = await start_deployer(fake_flamelet("sleep"), FLAME_DEPLOYER_ADMIN_TOKEN="nope")
    assert await deployer.exit_code() == 1
    assert "RegisterCompute refused (PERMISSION_DENIED" in deployer.output()


async def test_a_restarted_deployer_adopts_the_flamelets_a_killed_one_left(
    deployed: Deployed,
    start_deployer: StartDeployer,
    publish: Callable[..., Awaitable[None]],
    compute_server: ComputeServer,
    job: str,
) -> None:
    deployed.deployer.process.kill()  # no shutdown: its flamelets keep running, unwatched
    await deployed.deployer.exit_code()
    assert all(alive(pid) for pid in deployed.flamelet.pids())
    await start_deployer(deployed.flamelet)
    # One flamelet dies: the new deployer reports it, not knowing its status.
    dead, survivor = task_id(job, 0), task_id(job, 1)
    os.kill(deployed.records[dead]["pid"], signal.SIGKILL)
    await compute_server.fake.wait_for(job, S.STATE_EXITED, 1)
    exits = [(t, m) for t, s, m in compute_server.fake.states(job) if s == S.STATE_EXITED]
    assert exits == [(dead, describe_exit(STATUS_UNKNOWN))]
    # The other is stopped by a revoke, with its child.
    await publish(Event.TYPE_REVOKE_RESOURCE, job)
    await compute_server.fake.wait_for(job, S.STATE_REVOKE_SUCCEEDED, 1)
    revoked = [t for t, s, _ in compute_server.fake.states(job) if s == S.STATE_REVOKE_SUCCEEDED]
    assert revoked == [survivor]
    assert not any(alive(pid) for pid in deployed.flamelet.pids())
