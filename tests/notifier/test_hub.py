"""EventHub on a real database: streams that fall behind, publishes interleaved across hubs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from flame.notifier import hub as hub_module
from flame.notifier.hub import EventHub, Heartbeat
from flame.notifier.store import EventDraft, EventStore, StoredEvent

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

Document = dict[str, Any]
DRAFT = EventDraft("TYPE_START_JOB", "job-1")


@pytest.fixture
async def hubs(database: AsyncDatabase[Document]) -> AsyncIterator[list[EventHub]]:
    """Two started hubs on one database, polling only when told to (every 30 s)."""
    store = EventStore(database)
    await store.prepare()
    started = [EventHub(store, poll_seconds=30) for _ in range(2)]
    for hub in started:
        await hub.start()
    yield started
    for hub in started:
        await hub.close()


async def next_event(stream: AsyncIterator[StoredEvent | Heartbeat]) -> StoredEvent:
    async with asyncio.timeout(2):
        while True:
            item = await anext(stream)
            if isinstance(item, StoredEvent):
                return item


async def test_a_stream_that_fell_behind_reads_the_rest_in_order(
    hubs: list[EventHub], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "_MAX_PENDING", 3)
    hub = hubs[0]
    async with contextlib.aclosing(hub.follow("task/a", 0, heartbeat_seconds=60)) as stream:
        first = asyncio.ensure_future(next_event(stream))
        await hub.publish(["task/a"], DRAFT)
        assert (await first).cursor == 1
        # Not read meanwhile: three are pushed, the others dropped from the inbox.
        for subscribers in (["task/a"], ["task/b"]) * 5:
            await hub.publish(subscribers, DRAFT)
        assert [(await next_event(stream)).cursor for _ in range(5)] == [2, 4, 6, 8, 10]
        await hub.publish(["task/a"], DRAFT)
        assert (await next_event(stream)).cursor == 12


async def test_a_publish_after_another_hubs_is_delivered_without_waiting_for_the_poll(
    hubs: list[EventHub],
) -> None:
    mine, other = hubs
    async with contextlib.aclosing(mine.follow("task/a", 0, heartbeat_seconds=60)) as stream:
        waiting = asyncio.ensure_future(next_event(stream))
        await asyncio.sleep(0.1)  # the stream has read its (empty) backlog
        began = time.monotonic()
        await other.publish(["task/a"], DRAFT)
        await mine.publish(["task/a"], DRAFT)
        # Seq 2 does not follow this hub's frontier (0): it fetches seq 1 at once.
        assert (await waiting).cursor == 1
        assert (await next_event(stream)).cursor == 2
        assert time.monotonic() - began < 1


async def test_a_hub_indexes_its_publications_once_its_publishes_pause(
    database: AsyncDatabase[Document],
) -> None:
    store = EventStore(database)
    await store.prepare()
    hub = EventHub(store, poll_seconds=30, index_after_seconds=1.0)
    await hub.start()
    try:
        await hub.publish(["task/a"], DRAFT)
        await hub.publish(["task/a", "task/b"], DRAFT)
        pending = database["published"].count_documents
        assert await pending({"pending": True}) == 2
        async with asyncio.timeout(5):
            while await pending({"pending": True}):
                await asyncio.sleep(0.1)
        assert await pending({"subscribers": "task/a"}) == 2
    finally:
        await hub.close()


async def test_heartbeats_come_only_after_a_whole_idle_interval(hubs: list[EventHub]) -> None:
    hub = hubs[0]
    async with contextlib.aclosing(hub.follow("task/a", 0, heartbeat_seconds=0.5)) as stream:
        received: list[tuple[str, float]] = []

        async def read() -> None:
            async for item in stream:
                received.append((type(item).__name__, time.monotonic()))

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.05)
        began = time.monotonic()
        for _ in range(6):  # busy for 1.2 s: never idle for 0.5 s
            await hub.publish(["task/a"], DRAFT)
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.6)  # then idle
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    kinds = [kind for kind, _ in received]
    assert kinds == ["StoredEvent"] * 6 + ["Heartbeat"], kinds
    last_event, heartbeat = received[-2][1], received[-1][1]
    assert 0.45 <= heartbeat - last_event < 1.0  # at the interval, give or take a busy loop
    assert heartbeat - began > 1.2
