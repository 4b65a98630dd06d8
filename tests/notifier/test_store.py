"""EventStore on a real database: one document per publish, numbered in commit order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from flame.notifier.app import open_database
from flame.notifier.store import (
    MAX_SUBSCRIBERS_PER_DOCUMENT,
    CursorBeyondLast,
    EventDraft,
    EventStore,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Document = dict[str, Any]
DRAFT = EventDraft("TYPE_START_JOB", "job-1", ("t1", "t2"))


@pytest.fixture
async def store(database: AsyncDatabase[Document]) -> EventStore:
    store = EventStore(database)
    await store.prepare()
    return store


async def test_a_publish_to_1000_subscribers_is_one_document(
    store: EventStore, database: AsyncDatabase[Document]
) -> None:
    subscribers = [f"task/{index:040x}" for index in range(1000)]
    [publication] = await store.publish(subscribers, DRAFT)
    [document] = await database["published"].find().to_list()
    assert document["seq"] == publication.seq == 1
    assert document["pending_subscribers"] == subscribers
    assert (document["type"], document["job_id"], document["task_ids"]) == (
        "TYPE_START_JOB",
        "job-1",
        ["t1", "t2"],
    )
    [event] = await store.events_after(subscribers[500], 0, limit=10)
    assert (event.subscriber, event.cursor, event.task_ids) == (subscribers[500], 1, ("t1", "t2"))


async def test_pending_publications_are_found_before_and_after_they_are_indexed(
    store: EventStore, database: AsyncDatabase[Document]
) -> None:
    for subscribers in (["task/a"], ["task/b"], ["task/a", "task/b"]):
        await store.publish(subscribers, DRAFT)
    await store.index_pending()
    await store.publish(["task/a"], DRAFT)  # pending: 4, indexed: 1 to 3
    published = database["published"]
    assert [d["seq"] for d in await published.find({"pending": True}).to_list()] == [4]
    indexed = await published.find({"subscribers": "task/b"}).to_list()
    assert [(d["seq"], "pending_subscribers" in d) for d in indexed] == [(2, False), (3, False)]
    for phase in ("some pending", "all indexed"):
        assert [e.cursor for e in await store.events_after("task/a", 0, limit=10)] == [1, 3, 4]
        assert [e.cursor for e in await store.events_after("task/a", 1, limit=2)] == [3, 4]
        assert (await store.last_cursor("task/a"), await store.last_cursor("task/b")) == (4, 3)
        await store.ack("task/a", 4)
        with pytest.raises(CursorBeyondLast):
            await store.ack("task/b", 4)
        assert [p.subscribers for p in await store.publications_after(2, limit=10)] == [
            ("task/a", "task/b"),
            ("task/a",),
        ], phase
        assert await store.index_pending() == (1 if phase == "some pending" else 0)


async def test_a_replay_while_publications_are_indexed_misses_none(store: EventStore) -> None:
    for _ in range(30):
        await store.publish(["task/a"], DRAFT)
    indexing = asyncio.create_task(store.index_pending())
    replays = []
    while not indexing.done():
        replays.append([e.cursor for e in await store.events_after("task/a", 0, limit=100)])
    await indexing
    assert len(replays) > 1  # the replays ran while documents were moved
    assert all(replay == list(range(1, 31)) for replay in replays)


async def test_a_publish_beyond_the_document_limit_is_split_with_consecutive_seqs(
    store: EventStore, database: AsyncDatabase[Document]
) -> None:
    subscribers = [f"task/t{index}" for index in range(MAX_SUBSCRIBERS_PER_DOCUMENT + 1)]
    await store.publish(["task/before"], DRAFT)
    publications = await store.publish(subscribers, DRAFT)
    assert [(p.seq, len(p.subscribers)) for p in publications] == [
        (2, MAX_SUBSCRIBERS_PER_DOCUMENT),
        (3, 1),
    ]
    assert await database["published"].count_documents({}) == 3
    assert [e.cursor for e in await store.events_after(subscribers[-1], 0, limit=10)] == [3]
    assert [e.cursor for e in await store.events_after(subscribers[0], 0, limit=10)] == [2]


async def test_cursors_of_a_subscriber_skip_the_publishes_to_others(store: EventStore) -> None:
    for subscribers in (["task/a"], ["task/b"], ["task/a", "task/b"], ["task/b"], ["task/a"]):
        await store.publish(subscribers, DRAFT)
    assert [e.cursor for e in await store.events_after("task/a", 0, limit=10)] == [1, 3, 5]
    assert [e.cursor for e in await store.events_after("task/a", 1, limit=10)] == [3, 5]
    assert [e.cursor for e in await store.events_after("task/b", 0, limit=2)] == [2, 3]
    assert (await store.last_cursor("task/a"), await store.last_cursor("task/c")) == (5, 0)
    assert await store.last_seq() == 5


async def test_concurrent_publishers_never_show_a_seq_before_the_one_below(
    mongo_uri: str, database_name: str, store: EventStore
) -> None:
    """Two processes publish at once while a third reads what is visible: each read
    continues the previous one exactly, so none can see N + 1 and discover N later."""
    clients_and_stores = []
    for _ in range(2):
        client, db = await open_database(mongo_uri, database_name)
        clients_and_stores.append((client, EventStore(db)))
    done = asyncio.Event()
    seen: list[int] = []

    async def publish_many(publisher: EventStore, name: str) -> list[int]:
        seqs = []
        for _ in range(25):
            [publication] = await publisher.publish([name], DRAFT)
            seqs.append(publication.seq)
        return seqs

    async def observe() -> None:
        while not done.is_set() or len(seen) < 50:
            seen.extend(p.seq for p in await store.publications_after(len(seen), limit=100))

    try:
        observer = asyncio.create_task(observe())
        first, second = await asyncio.gather(
            *(publish_many(s, f"task/p{i}") for i, (_, s) in enumerate(clients_and_stores))
        )
        done.set()
        await observer
    finally:
        for client, _ in clients_and_stores:
            await client.close()
    assert seen == list(range(1, 51))
    assert sorted(first + second) == seen
    assert first == sorted(first) and second == sorted(second)
