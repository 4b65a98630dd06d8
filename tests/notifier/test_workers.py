"""`flame-notifier --workers N`: several processes on one port, woken by each other."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pymongo.asynchronous.database import AsyncDatabase

from flame.notifier.app import Notifier, start_notifier
from flame.notifier.wake import Siblings
from flame.notify.v1 import notify_service_pb2_grpc
from flame.rpc.server import ServerOptions
from tests.notifier.conftest import Subscription, publish
from tests.support.processes import ServerProcess, start_server_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Document = dict[str, Any]
WORKERS = 3
# Channels per test: enough that all of them landing on one of three workers
# (probability 3 / 3**12) does not happen.
CHANNELS = 12


@pytest.fixture
def workers(mongo_uri: str, database_name: str) -> Iterator[ServerProcess]:
    args = ["flame-notifier", "--plaintext", "--mongo-uri", mongo_uri, "--database", database_name]
    with start_server_process([*args, "--workers", str(WORKERS)]) as server:
        yield server


@pytest.fixture
async def stubs(
    workers: ServerProcess,
) -> AsyncIterator[list[notify_service_pb2_grpc.NotifyServiceAsyncStub]]:
    """Stubs on `CHANNELS` connections of their own, which the kernel spreads over workers."""
    async with AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(_own_connection(workers.address))
            for _ in range(CHANNELS)
        ]
        yield [notify_service_pb2_grpc.NotifyServiceStub(channel) for channel in channels]


def _own_connection(address: str) -> grpc.aio.Channel:
    # Channels with equal arguments share one connection unless told otherwise.
    return grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


async def test_streams_on_every_worker_receive_events_published_through_any(
    workers: ServerProcess, stubs: list[notify_service_pb2_grpc.NotifyServiceAsyncStub]
) -> None:
    subscribers = [f"task/w{index}" for index in range(CHANNELS)]
    async with AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(Subscription(stub, subscriber, heartbeat_seconds=1))
            for stub, subscriber in zip(stubs, subscribers, strict=True)
        ]
        for stream in streams:
            await stream.next()  # open: a first heartbeat
        assert len(_workers_with_connections(workers)) >= 2
        # Published concurrently through every connection, so through every worker.
        published = await asyncio.gather(
            *(publish(stub, subscribers, job_id=f"job-{i}") for i, stub in enumerate(stubs))
        )
        cursors = sorted(events[0].cursor for events in published)
        for stream in streams:
            # In cursor order, each once: what every worker delivers.
            assert await stream.cursors(len(cursors)) == cursors


async def test_health_and_reflection_answer_on_every_connection(
    workers: ServerProcess, stubs: list[notify_service_pb2_grpc.NotifyServiceAsyncStub]
) -> None:
    for _ in range(CHANNELS):
        async with _own_connection(workers.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            checked = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert checked.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            requests = [reflection_pb2.ServerReflectionRequest(list_services="")]
            async with asyncio.timeout(5):
                async for answer in reflection.ServerReflectionInfo(iter(requests)):
                    names = {s.name for s in answer.list_services_response.service}
                    assert "flame.notify.v1.NotifyService" in names


def test_announces_the_address_once(workers: ServerProcess) -> None:
    workers.stop()
    assert sum(" serving on " in line for line in workers.output) == 1


def test_sigterm_stops_every_worker(workers: ServerProcess) -> None:
    children = _children(workers.process.pid)
    assert len(children) == WORKERS
    assert workers.stop() == 0
    _wait_until_gone(children)


def test_killing_the_supervisor_stops_every_worker(workers: ServerProcess) -> None:
    children = _children(workers.process.pid)
    workers.process.send_signal(signal.SIGKILL)
    workers.process.wait(5)
    _wait_until_gone(children)


def test_a_worker_dying_stops_the_others_and_fails(workers: ServerProcess) -> None:
    children = _children(workers.process.pid)
    os.kill(children[0], signal.SIGKILL)
    assert workers.process.wait(20) != 0
    _wait_until_gone(children)


async def test_siblings_wake_each_other_long_before_the_poll(
    database: AsyncDatabase[Document], tmp_path: Path
) -> None:
    """Two workers polling only every 60 s: an event published through one reaches a
    stream of the other at once."""
    async with AsyncExitStack() as stack:
        notifiers = [
            await _worker(stack, database, Siblings(tmp_path, index, 2)) for index in range(2)
        ]
        stubs = [
            notify_service_pb2_grpc.NotifyServiceStub(
                await stack.enter_async_context(_own_connection(notifier.address))
            )
            for notifier in notifiers
        ]
        stream = await stack.enter_async_context(
            Subscription(stubs[1], "task/woken", heartbeat_seconds=1)
        )
        await stream.next()  # open on the second worker
        [event] = await publish(stubs[0], ["task/woken"])
        assert (await stream.next_event(timeout=5)).cursor == event.cursor


async def _worker(
    stack: AsyncExitStack, database: AsyncDatabase[Document], siblings: Siblings
) -> Notifier:
    options = ServerOptions(grace_seconds=1)
    notifier = await start_notifier(database, options, poll_seconds=60, siblings=siblings)
    stack.push_async_callback(notifier.stop)
    return notifier


def _children(pid: int) -> list[int]:
    listed = subprocess.run(
        ["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True, text=True, timeout=5
    ).stdout
    return [int(child) for child in listed.split()]


def _wait_until_gone(pids: list[int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if _alive(p)]}"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _workers_with_connections(server: ServerProcess) -> set[int]:
    """The workers holding an established connection on the server's port."""
    port = int(server.address.rsplit(":", 1)[1])
    established = _established_inodes(port)
    return {
        worker for worker in _children(server.process.pid) if _socket_inodes(worker) & established
    }


def _established_inodes(port: int) -> set[str]:
    """Socket inodes of TCP connections accepted on `port` (from /proc/net/tcp{,6})."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
            if local_port == port and state == "01":  # TCP_ESTABLISHED
                inodes.add(inode)
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    return inodes
