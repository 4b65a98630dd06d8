"""Notifiers on a real SecantusDB, served in-process on a free port, and their clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from flame.notifier.app import Notifier, start_notifier
from flame.notify.v1 import event_pb2, notify_service_pb2, notify_service_pb2_grpc
from flame.rpc.client import open_channel
from flame.rpc.server import ServerOptions

Document = dict[str, Any]
StartNotifier = Callable[..., Awaitable[Notifier]]

START_JOB = event_pb2.Event.TYPE_START_JOB


@pytest.fixture
async def start(database: AsyncDatabase[Document]) -> AsyncIterator[StartNotifier]:
    """Start notifiers on the test's database; all are stopped at the end."""
    started: list[Notifier] = []

    async def start_one(port: int = 0, poll_seconds: float = 0.2) -> Notifier:
        notifier = await start_notifier(
            database, ServerOptions(port=port, grace_seconds=1), poll_seconds=poll_seconds
        )
        started.append(notifier)
        return notifier

    yield start_one
    for notifier in started:
        await notifier.stop()


@pytest.fixture
async def notifier(start: StartNotifier) -> Notifier:
    return await start()


@pytest.fixture
async def stub(notifier: Notifier) -> AsyncIterator[notify_service_pb2_grpc.NotifyServiceAsyncStub]:
    async with open_channel(notifier.address, tls=None) as channel:
        yield notify_service_pb2_grpc.NotifyServiceStub(channel)


async def publish(
    stub: notify_service_pb2_grpc.NotifyServiceAsyncStub,
    subscribers: list[str],
    job_id: str = "job-1",
    event_type: event_pb2.Event.Type.ValueType = START_JOB,
) -> list[event_pb2.Event]:
    request = notify_service_pb2.PublishEventRequest(
        subscribers=subscribers, event=event_pb2.Event(type=event_type, job_id=job_id)
    )
    response = await stub.PublishEvent(request, timeout=10)
    return list(response.events)


class Subscription:
    """One SubscribeEvents stream, read with a deadline on every message."""

    def __init__(
        self,
        stub: notify_service_pb2_grpc.NotifyServiceAsyncStub,
        subscriber: str,
        *,
        after_cursor: int = 0,
        heartbeat_seconds: int = 0,
    ) -> None:
        request = notify_service_pb2.SubscribeEventsRequest(
            subscriber=subscriber, after_cursor=after_cursor, heartbeat_seconds=heartbeat_seconds
        )
        self._call = stub.SubscribeEvents(request)
        self._responses = aiter(self._call)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._call.cancel()

    async def next(self, timeout: float = 5.0) -> notify_service_pb2.SubscribeEventsResponse:
        async with asyncio.timeout(timeout):
            return await anext(self._responses)

    async def next_event(self, timeout: float = 5.0) -> event_pb2.Event:
        async with asyncio.timeout(timeout):
            while True:
                response = await anext(self._responses)
                if response.HasField("event"):
                    return response.event

    async def cursors(self, count: int, timeout: float = 5.0) -> list[int]:
        return [(await self.next_event(timeout)).cursor for _ in range(count)]
