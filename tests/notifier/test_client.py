"""follow_events: handles each event once, acknowledges it, and outlives the server."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from flame.notifier.client import backoff_delay, follow_events
from flame.notify.v1 import event_pb2, notify_service_pb2, notify_service_pb2_grpc
from flame.rpc.client import open_channel
from tests.notifier.conftest import START_JOB, StartNotifier, publish

if TYPE_CHECKING:
    from flame.notify.v1.notify_service_pb2_grpc import NotifyServiceAsyncStub as Stub

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]


class Follower:
    """follow_events running in the background, recording what it handled."""

    def __init__(self, stub: Stub, subscriber: str) -> None:
        self.handled: list[tuple[int, str]] = []
        self.failures_left = 0
        self.changed = asyncio.Condition()
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(
            follow_events(stub, subscriber, handle=self.handle, stop=self.stop, heartbeat_seconds=1)
        )

    async def handle(self, event: event_pb2.Event) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise RuntimeError("handler failed")
        async with self.changed:
            self.handled.append((event.cursor, event.job_id))
            self.changed.notify_all()

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: len(self.handled) >= count)

    async def close(self) -> None:
        self.stop.set()
        async with asyncio.timeout(2):
            await self.task


async def test_follow_events_survives_a_server_restart(start: StartNotifier) -> None:
    notifier = await start()
    async with open_channel(notifier.address, tls=None) as channel:
        stub = notify_service_pb2_grpc.NotifyServiceStub(channel)
        follower = Follower(stub, "task/a")
        await publish(stub, ["task/a"], job_id="before")
        await follower.wait_for(1)

        await notifier.stop()
        await asyncio.sleep(0.5)  # the follower sees the stream end and retries meanwhile
        await start(port=notifier.running.port)
        # The channel is still in gRPC's reconnect backoff: wait for it to connect.
        after = notify_service_pb2.PublishEventRequest(
            subscribers=["task/a"], event=event_pb2.Event(type=START_JOB, job_id="after")
        )
        await stub.PublishEvent(after, timeout=10, wait_for_ready=True)
        await follower.wait_for(2)
        await follower.close()
        assert follower.handled == [(1, "before"), (2, "after")]

        # Both were acknowledged: a new follower starts after them.
        again = Follower(stub, "task/a")
        await publish(stub, ["task/a"], job_id="later")
        await again.wait_for(1)
        await again.close()
        assert again.handled == [(3, "later")]


async def test_an_event_whose_handler_failed_comes_again(stub: Stub) -> None:
    follower = Follower(stub, "task/a")
    follower.failures_left = 2
    await publish(stub, ["task/a"], job_id="j")
    await follower.wait_for(1)
    await publish(stub, ["task/a"], job_id="k")
    await follower.wait_for(2)
    await follower.close()
    assert follower.handled == [(1, "j"), (2, "k")]


def test_backoff_delay_grows_with_full_jitter_up_to_the_cap() -> None:
    for failures, ceiling in [(0, 0.2), (1, 0.4), (3, 1.6), (6, 10.0), (100, 10.0)]:
        delays = [backoff_delay(failures) for _ in range(200)]
        assert all(0 <= delay <= ceiling for delay in delays)
        assert max(delays) > ceiling * 0.5
