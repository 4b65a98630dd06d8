"""NotifyService on a real database: order, wake-up, acks, fan-out to streams, errors."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from pymongo import AsyncMongoClient

from flame.notifier.app import Notifier, notifier_services
from flame.notifier.hub import EventHub
from flame.notifier.store import EventStore
from flame.notify.v1 import event_pb2, notify_service_pb2, notify_service_pb2_grpc
from flame.rpc.client import open_channel
from flame.rpc.errors import error_details
from flame.rpc.server import ServerOptions, start_server
from tests.notifier.conftest import START_JOB, StartNotifier, Subscription, publish
from tests.support.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]

if TYPE_CHECKING:
    from flame.notify.v1.notify_service_pb2_grpc import NotifyServiceAsyncStub as Stub


async def test_publish_then_subscribe_delivers_the_events_in_cursor_order(stub: Stub) -> None:
    published = [
        *await publish(stub, ["task/a", "task/b"], job_id="j1"),
        *await publish(stub, ["task/a"], job_id="j2", event_type=event_pb2.Event.TYPE_STOP_JOB),
    ]
    assert [(e.subscriber, e.cursor) for e in published] == [
        ("task/a", 1),
        ("task/b", 1),
        ("task/a", 2),
    ]
    async with Subscription(stub, "task/a") as subscription:
        first, second = await subscription.next_event(), await subscription.next_event()
    assert (first.cursor, first.job_id, first.type) == (1, "j1", START_JOB)
    assert (second.cursor, second.job_id, second.type) == (2, "j2", event_pb2.Event.TYPE_STOP_JOB)
    assert first == published[0]
    assert first.publish_time.seconds > 0


async def test_subscribe_then_publish_wakes_the_stream_at_once(start: StartNotifier) -> None:
    # Polling every 30 s: only the in-process wake-up can be this fast.
    notifier = await start(poll_seconds=30)
    async with open_channel(notifier.address, tls=None) as channel:
        stub = notify_service_pb2_grpc.NotifyServiceStub(channel)
        async with Subscription(stub, "task/a", heartbeat_seconds=1) as subscription:
            assert (await subscription.next()).HasField("heartbeat")  # the stream is open
            began = time.monotonic()
            await publish(stub, ["task/a"])
            event = await subscription.next_event(timeout=1)
            assert time.monotonic() - began < 1
    assert event.cursor == 1


async def test_a_stream_sees_events_published_by_another_notifier(start: StartNotifier) -> None:
    reader, writer = await start(), await start()
    async with (
        open_channel(reader.address, tls=None) as reader_channel,
        open_channel(writer.address, tls=None) as writer_channel,
    ):
        reading = notify_service_pb2_grpc.NotifyServiceStub(reader_channel)
        writing = notify_service_pb2_grpc.NotifyServiceStub(writer_channel)
        async with Subscription(reading, "task/a", heartbeat_seconds=1) as subscription:
            assert (await subscription.next()).HasField("heartbeat")
            began = time.monotonic()
            await publish(writing, ["task/a"])
            assert (await subscription.next_event(timeout=2)).cursor == 1
            assert time.monotonic() - began < 1


async def test_ack_then_reconnect_resumes_after_the_acked_cursor(stub: Stub) -> None:
    for _ in range(3):
        await publish(stub, ["task/a"])
    async with Subscription(stub, "task/a") as subscription:
        assert await subscription.cursors(2) == [1, 2]
    await stub.AckEvents(notify_service_pb2.AckEventsRequest(subscriber="task/a", cursor=2))
    async with Subscription(stub, "task/a") as subscription:
        assert await subscription.cursors(1) == [3]
        await publish(stub, ["task/a"])
        assert await subscription.cursors(1) == [4]


async def test_an_older_ack_does_not_move_the_acked_cursor_back(stub: Stub) -> None:
    for _ in range(3):
        await publish(stub, ["task/a"])
    for cursor in (2, 1):
        await stub.AckEvents(
            notify_service_pb2.AckEventsRequest(subscriber="task/a", cursor=cursor)
        )
    async with Subscription(stub, "task/a") as subscription:
        assert await subscription.cursors(1) == [3]


async def test_reconnect_without_ack_redelivers(stub: Stub) -> None:
    for _ in range(2):
        await publish(stub, ["task/a"])
    async with Subscription(stub, "task/a") as subscription:
        assert await subscription.cursors(2) == [1, 2]
    async with Subscription(stub, "task/a") as subscription:
        assert await subscription.cursors(2) == [1, 2]


async def test_after_cursor_overrides_the_acked_cursor(stub: Stub) -> None:
    for _ in range(3):
        await publish(stub, ["task/a"])
    await stub.AckEvents(notify_service_pb2.AckEventsRequest(subscriber="task/a", cursor=3))
    async with Subscription(stub, "task/a", after_cursor=1) as subscription:
        assert await subscription.cursors(2) == [2, 3]


async def test_two_streams_of_one_subscriber_both_get_every_event(stub: Stub) -> None:
    async with (
        Subscription(stub, "compute/c1", heartbeat_seconds=1) as first,
        Subscription(stub, "compute/c1", heartbeat_seconds=1) as second,
    ):
        await asyncio.gather(first.next(), second.next())  # both streams are open
        await publish(stub, ["compute/c1"], event_type=event_pb2.Event.TYPE_ADD_RESOURCE)
        await publish(stub, ["compute/c1"], event_type=event_pb2.Event.TYPE_REVOKE_RESOURCE)
        assert await first.cursors(2) == [1, 2]
        assert await second.cursors(2) == [1, 2]


async def test_an_idle_stream_carries_heartbeats_with_the_last_cursor(stub: Stub) -> None:
    await publish(stub, ["task/a"])
    async with Subscription(stub, "task/a", heartbeat_seconds=1) as subscription:
        assert await subscription.cursors(1) == [1]
        began = time.monotonic()
        beats = [await subscription.next(timeout=3) for _ in range(2)]
    assert [b.heartbeat.last_cursor for b in beats] == [1, 1]
    assert all(b.HasField("heartbeat") for b in beats)
    assert 1.5 < time.monotonic() - began < 3.5


async def test_stopping_the_server_ends_open_streams_promptly(start: StartNotifier) -> None:
    notifier: Notifier = await start()
    async with open_channel(notifier.address, tls=None) as channel:
        stub = notify_service_pb2_grpc.NotifyServiceStub(channel)
        async with Subscription(stub, "task/a", heartbeat_seconds=1) as subscription:
            await subscription.next()
            began = time.monotonic()
            await notifier.stop()
            with pytest.raises(StopAsyncIteration):
                await subscription.next(timeout=1)
            assert time.monotonic() - began < 1


def request_error(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, list[str]]:
    details = error_details(error)
    return details.code, details.reason, [v.field for v in details.violations]


INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("subscribers", "event", "reason", "fields"),
    [
        ([], event_pb2.Event(type=START_JOB, job_id="j"), "SUBSCRIBER_INVALID", ["subscribers"]),
        (
            ["task/a", "user/b", "task/"],
            event_pb2.Event(type=START_JOB, job_id="j"),
            "SUBSCRIBER_INVALID",
            ["subscribers[1]", "subscribers[2]"],
        ),
        (["task/a"], event_pb2.Event(job_id="j"), "EVENT_INVALID", ["event.type"]),
        (["task/a"], event_pb2.Event(type=START_JOB), "EVENT_INVALID", ["event.job_id"]),
        (
            ["task/a"],
            event_pb2.Event(type=event_pb2.Event.Type.ValueType(42), job_id="j"),
            "EVENT_INVALID",
            ["event.type"],
        ),
    ],
)
async def test_invalid_publish_is_refused(
    stub: Stub, subscribers: list[str], event: event_pb2.Event, reason: str, fields: list[str]
) -> None:
    request = notify_service_pb2.PublishEventRequest(subscribers=subscribers, event=event)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.PublishEvent(request, timeout=5)
    assert request_error(raised.value) == (INVALID, reason, fields)


@pytest.mark.parametrize(
    ("subscriber", "cursor", "reason"),
    [
        ("task/a", 2, "CURSOR_INVALID"),
        ("task/a", 0, "CURSOR_INVALID"),
        ("task/b", 1, "CURSOR_INVALID"),
        ("Task/A", 1, "SUBSCRIBER_INVALID"),
    ],
)
async def test_invalid_ack_is_refused(
    stub: Stub, subscriber: str, cursor: int, reason: str
) -> None:
    await publish(stub, ["task/a"])
    request = notify_service_pb2.AckEventsRequest(subscriber=subscriber, cursor=cursor)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.AckEvents(request, timeout=5)
    code, got_reason, _ = request_error(raised.value)
    assert (code, got_reason) == (INVALID, reason)


@pytest.mark.parametrize(
    ("subscriber", "after_cursor", "reason"),
    [("job/x", 0, "SUBSCRIBER_INVALID"), ("task/a", -1, "CURSOR_INVALID")],
)
async def test_invalid_subscribe_is_refused(
    stub: Stub, subscriber: str, after_cursor: int, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async with Subscription(stub, subscriber, after_cursor=after_cursor) as subscription:
            await subscription.next()
    code, got_reason, _ = request_error(raised.value)
    assert (code, got_reason) == (INVALID, reason)


async def test_fan_out_reaches_200_streams(stub: Stub) -> None:
    subscribers = [f"task/t{index}" for index in range(200)]
    subscriptions = [Subscription(stub, s, heartbeat_seconds=1) for s in subscribers]
    try:
        await asyncio.gather(*(s.next(timeout=10) for s in subscriptions))  # all open
        await publish(stub, subscribers)
        events = await asyncio.gather(*(s.next_event(timeout=10) for s in subscriptions))
    finally:
        for subscription in subscriptions:
            await subscription.__aexit__(None, None, None)
    assert [(e.subscriber, e.cursor) for e in events] == [(s, 1) for s in subscribers]


async def test_an_unreachable_database_answers_unavailable() -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{free_port()}/", serverSelectionTimeoutMS=300
    )
    store = EventStore(client["unreachable"])
    running = await start_server(notifier_services(store, EventHub(store)), ServerOptions())
    try:
        async with open_channel(running.address, tls=None) as channel:
            stub = notify_service_pb2_grpc.NotifyServiceStub(channel)
            # An ack: a publish retries its transaction for up to 10 s before failing alike.
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                ack = notify_service_pb2.AckEventsRequest(subscriber="task/a", cursor=1)
                await stub.AckEvents(ack, timeout=5)
        details = error_details(raised.value)
        assert (details.code, details.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
        )
    finally:
        await running.stop()
        await client.close()


async def test_cursors_skip_the_publishes_to_other_subscribers(stub: Stub) -> None:
    for subscribers in (["task/a"], ["task/b"], ["task/a", "task/b"], ["task/b"], ["task/a"]):
        await publish(stub, subscribers)
    async with Subscription(stub, "task/a") as subscription:
        assert await subscription.cursors(3) == [1, 3, 5]
    # An acknowledgement between two cursors covers the lower one only.
    await stub.AckEvents(notify_service_pb2.AckEventsRequest(subscriber="task/a", cursor=4))
    async with Subscription(stub, "task/a") as subscription:
        assert await subscription.cursors(1) == [5]
    async with Subscription(stub, "task/b", after_cursor=2) as subscription:
        assert await subscription.cursors(2) == [3, 4]


async def test_a_heartbeat_after_the_backlog_names_the_last_stored_cursor(stub: Stub) -> None:
    await publish(stub, ["task/a"])
    await publish(stub, ["task/b"])
    async with Subscription(stub, "task/a", after_cursor=1, heartbeat_seconds=1) as subscription:
        assert (await subscription.next(timeout=3)).heartbeat.last_cursor == 1


async def test_two_notifiers_publishing_at_once_deliver_every_event_in_order(
    start: StartNotifier,
) -> None:
    notifiers = [await start() for _ in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        stubs = []
        for notifier in notifiers:
            channel = await stack.enter_async_context(open_channel(notifier.address, tls=None))
            stubs.append(notify_service_pb2_grpc.NotifyServiceStub(channel))
        streams = [
            await stack.enter_async_context(Subscription(s, "task/a", heartbeat_seconds=1))
            for s in stubs
        ]
        await asyncio.gather(*(s.next() for s in streams))  # all open

        async def publish_many(publisher: Stub, subscriber: str) -> list[int]:
            return [(await publish(publisher, ["task/a", subscriber]))[0].cursor for _ in range(15)]

        # The third notifier only reads: it learns of both publishers' events by polling.
        first, second = await asyncio.gather(
            publish_many(stubs[0], "task/b"), publish_many(stubs[1], "task/c")
        )
        assert sorted(first + second) == list(range(1, 31))
        for stream in streams:
            assert await stream.cursors(30) == list(range(1, 31))
        async with Subscription(stubs[2], "task/a") as replay:
            assert await replay.cursors(30) == list(range(1, 31))


async def test_a_restarted_notifier_replays_the_stored_events_and_goes_on(
    start: StartNotifier,
) -> None:
    notifier = await start()
    async with open_channel(notifier.address, tls=None) as channel:
        stub = notify_service_pb2_grpc.NotifyServiceStub(channel)
        for subscribers in (["task/a"], ["task/b"], ["task/a", "task/b"]):
            await publish(stub, subscribers)
        await stub.AckEvents(notify_service_pb2.AckEventsRequest(subscriber="task/b", cursor=2))
    await notifier.stop()

    restarted = await start()
    async with open_channel(restarted.address, tls=None) as channel:
        stub = notify_service_pb2_grpc.NotifyServiceStub(channel)
        async with (
            Subscription(stub, "task/a", heartbeat_seconds=1) as first,
            Subscription(stub, "task/b", heartbeat_seconds=1) as second,
        ):
            assert await first.cursors(2) == [1, 3]
            assert await second.cursors(1) == [3]
            began = time.monotonic()
            await publish(stub, ["task/b", "task/a"])
            assert (await first.cursors(1), await second.cursors(1)) == ([4], [4])
            assert time.monotonic() - began < 1


async def test_an_event_too_large_to_store_is_refused(stub: Stub) -> None:
    task_ids = ["t" * 1024] * (4 * 1024 + 1)
    event = event_pb2.Event(type=START_JOB, job_id="j", task_ids=task_ids)
    request = notify_service_pb2.PublishEventRequest(subscribers=["task/a"], event=event)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.PublishEvent(request, timeout=5)
    assert request_error(raised.value) == (INVALID, "EVENT_INVALID", ["event"])
