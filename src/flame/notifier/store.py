"""The notifier's durable state in MongoDB, with no gRPC in sight.

Collections:

* `published`: one document per publication, `{seq, subscribers, type, job_id,
  task_ids, publish_time}`, whatever the number of subscribers. `seq` numbers
  the publications of all notifiers on the database, and is the cursor of the
  event for each of its subscribers: strictly increasing per subscriber, not
  consecutive. Indexes: unique `seq` (what the notifiers poll), multikey
  `(subscribers, seq)` (a subscriber's replay), `(pending, seq)`, TTL on `publish_time`.
* `counters`: `{_id: "publications", seq}`, the last `seq` allocated.
* `subscriptions`: `{subscriber, acked_cursor, last_seen}`, unique on `subscriber`.

A publication is stored pending: its subscribers in `pending_subscribers`, out of
the multikey index, and `pending: true`. Those 1,000 index entries were most of a
publish on SecantusDB (20 of 24 ms): `index_pending` later moves the subscribers to
`subscribers`, one document at a time (an atomic `$rename`), once publishes pause
and the fan-out is done. Until then the few pending publications are found through
the `(pending, seq)` index and filtered, so every query by subscriber reads both
kinds: the pending ones first, so that one indexed in between is found by the second.

`seq` is a field of its own rather than `_id` because SecantusDB answers a range
on `_id` with a collection scan (60 ms at 5,000 documents against 1.3 ms through
a secondary index).

A publish runs in one transaction: it takes `seq` from the counter and inserts
the publication. Concurrent publishes conflict on the counter, so a later one
retries after the earlier one has committed: `seq` follows commit order, and has
no holes, since a number is taken if and only if its publication is stored. A
reader that has seen `seq` N therefore never sees N - 1 appear later, and can
resume from "everything after N" safely, whichever notifier published what.
Publishes are serialized; the notifier's publishers (the controller) publish a
few events a second at most, and a publish writes two documents (4 ms for 1,000
subscribers on SecantusDB).

Size: a publication holds at most `MAX_SUBSCRIBERS_PER_DOCUMENT` subscribers
(names of at most 71 characters: about 0.8 MB) and an event of at most
`MAX_EVENT_BYTES`, far below MongoDB's 16 MiB per document. A publish to more
subscribers is stored as several publications with consecutive `seq`s, in the
same transaction; each subscriber is in exactly one of them.

Retention: a publication is deleted `RETENTION_SECONDS` (7 days) after it was
published, acknowledged or not, by the TTL index. Deleting it once all its
subscribers have acknowledged it would mean reading up to 10,000 acknowledgements
per publication; a week bounds the storage as well and outlasts any task. A
subscriber offline for longer loses the events it did not acknowledge in time;
an acknowledgement is refused (`CursorBeyondLast`) once no event of its
subscriber at or above its cursor is left.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pymongo
from bson.codec_options import CodecOptions
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

__all__ = [
    "MAX_EVENT_BYTES",
    "MAX_SUBSCRIBERS_PER_DOCUMENT",
    "RETENTION_SECONDS",
    "CursorBeyondLast",
    "EventDraft",
    "EventStore",
    "Publication",
    "StoredEvent",
]

Document = dict[str, Any]

# Bounds one publication document to about 0.8 MB of subscriber names.
MAX_SUBSCRIBERS_PER_DOCUMENT = 10_000
# The largest event (job id and task ids) a publication stores; the servicer refuses larger.
MAX_EVENT_BYTES = 4 * 1024 * 1024
RETENTION_SECONDS = 7 * 24 * 3600

# SecantusDB evaluates `$in` in quadratic time: reading 1000 documents takes 600 ms in
# one query and 70 ms in chunks of 50. MongoDB needs no chunks but minds them little.
_IN_CHUNK = 50
# A publish, retries on conflict included, ends within this many seconds.
_PUBLISH_TIMEOUT = 10.0
# The counter the per-subscriber layout numbered its publications with: carrying on
# from it keeps every new cursor above any cursor that layout handed out.
_PUBLICATIONS = "publications"
# Concurrent upserts of one subscription that open_subscription tries before giving up.
_UPSERT_ATTEMPTS = 3
# Where a publication's subscribers are: indexed, or pending until `index_pending`.
_INDEXED = "subscribers"
_PENDING = "pending_subscribers"
# A replay needs every field but the subscriber list, which may weigh 0.8 MB.
_EVENT_FIELDS = {"seq": 1, "type": 1, "job_id": 1, "task_ids": 1, "publish_time": 1}


@dataclass(frozen=True)
class EventDraft:
    """What a publisher says about an event; the store adds subscribers, cursor and time.

    `type` is the event type's name (e.g. `TYPE_START_JOB`), stored as such so the
    documents stay readable and independent of enum numbering.
    """

    type: str
    job_id: str
    task_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoredEvent:
    """One event as one subscriber receives it."""

    subscriber: str
    cursor: int
    type: str
    job_id: str
    task_ids: tuple[str, ...]
    publish_time: datetime


@dataclass(frozen=True)
class Publication:
    """One stored publication: an event, its number and the subscribers it is for."""

    seq: int
    subscribers: tuple[str, ...]
    draft: EventDraft
    publish_time: datetime

    def event_for(self, subscriber: str) -> StoredEvent:
        """The event as `subscriber` receives it: its cursor is the publication's `seq`."""
        draft = self.draft
        return StoredEvent(
            subscriber, self.seq, draft.type, draft.job_id, draft.task_ids, self.publish_time
        )

    def events(self) -> list[StoredEvent]:
        """The event for each subscriber, in the publication's order."""
        return [self.event_for(subscriber) for subscriber in self.subscribers]


class CursorBeyondLast(Exception):
    """An acknowledgement names a cursor above the subscriber's last stored event."""

    def __init__(self, subscriber: str, cursor: int, last_cursor: int) -> None:
        super().__init__(f"{subscriber} has no event {cursor}; the last is {last_cursor}")
        self.subscriber = subscriber
        self.cursor = cursor
        self.last_cursor = last_cursor


class EventStore:
    """Stores publications, numbers them and records acknowledgements."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        """Use `db`; call `prepare` once before anything else."""
        tz_aware: CodecOptions[Document] = CodecOptions(tz_aware=True)
        self._db = db
        self._published = db.get_collection("published", codec_options=tz_aware)
        self._counters = db.get_collection("counters")
        self._subscriptions = db.get_collection("subscriptions", codec_options=tz_aware)

    async def prepare(self) -> None:
        """Create the indexes (idempotent)."""
        await self._published.create_index("seq", unique=True)
        await self._published.create_index([(_INDEXED, ASCENDING), ("seq", ASCENDING)])
        await self._published.create_index([("pending", ASCENDING), ("seq", ASCENDING)])
        await self._published.create_index("publish_time", expireAfterSeconds=RETENTION_SECONDS)
        await self._subscriptions.create_index("subscriber", unique=True)

    async def publish(self, subscribers: Sequence[str], draft: EventDraft) -> list[Publication]:
        """Store `draft` for `subscribers` (distinct, at least one) and return the
        publications, one per `MAX_SUBSCRIBERS_PER_DOCUMENT` subscribers.

        Either every subscriber gets the event or none does.
        """
        published = _now()
        groups = [tuple(group) for group in _chunks(subscribers, MAX_SUBSCRIBERS_PER_DOCUMENT)]

        async def store(session: AsyncClientSession) -> list[Publication]:
            last = await self._allocate(session, len(groups))
            first = last - len(groups) + 1
            publications = [
                Publication(first + index, group, draft, published)
                for index, group in enumerate(groups)
            ]
            documents = [_to_document(publication) for publication in publications]
            await self._published.insert_many(documents, session=session)
            return publications

        with pymongo.timeout(_PUBLISH_TIMEOUT):
            async with self._db.client.start_session() as session:
                return await session.with_transaction(store)

    async def _allocate(self, session: AsyncClientSession, count: int) -> int:
        # First in the transaction: a concurrent publish conflicts here, before any work.
        counter = await self._counters.find_one_and_update(
            {"_id": _PUBLICATIONS},
            {"$inc": {"seq": count}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        assert counter is not None, "an upsert returning the document after finds one"
        return int(counter["seq"])

    async def last_seq(self) -> int:
        """The `seq` of the last publication, 0 before the first."""
        # The counter, not the publications: SecantusDB scans a descending index whole.
        counter = await self._counters.find_one({"_id": _PUBLICATIONS})
        return 0 if counter is None else int(counter["seq"])

    async def publications_after(self, seq: int, limit: int) -> list[Publication]:
        """At most `limit` publications numbered above `seq`, in order."""
        found = self._published.find({"seq": {"$gt": seq}}).sort("seq", ASCENDING).limit(limit)
        return [_from_document(document) async for document in found]

    async def events_after(self, subscriber: str, cursor: int, limit: int) -> list[StoredEvent]:
        """At most `limit` events of `subscriber` with a cursor above `cursor`, in cursor order."""
        after = {"seq": {"$gt": cursor}}
        # Pending ones first: one indexed between the two reads is found by the second.
        found = await self._pending_for(subscriber, after, _EVENT_FIELDS)
        indexed = self._published.find({_INDEXED: subscriber, **after}, _EVENT_FIELDS)
        found += await indexed.sort("seq", ASCENDING).limit(limit).to_list()
        publications = {int(document["seq"]): _from_document(document) for document in found}
        return [publications[seq].event_for(subscriber) for seq in sorted(publications)[:limit]]

    async def last_cursor(self, subscriber: str) -> int:
        """The cursor of the last stored event of `subscriber`, 0 if there is none."""
        pending = await self._pending_for(subscriber, {}, {"seq": 1})
        indexed = await self._published.find_one(
            {_INDEXED: subscriber}, {"seq": 1}, sort=[("seq", DESCENDING)]
        )
        return max(int(document["seq"]) for document in [*pending, indexed or {"seq": 0}])

    async def _has_event_from(self, subscriber: str, cursor: int) -> bool:
        from_cursor = {"seq": {"$gte": cursor}}
        if await self._pending_for(subscriber, from_cursor, {"seq": 1}):
            return True
        found = await self._published.find_one({_INDEXED: subscriber, **from_cursor}, {"seq": 1})
        return found is not None

    async def _pending_for(
        self, subscriber: str, condition: Document, fields: Document
    ) -> list[Document]:
        """`fields` of the pending publications for `subscriber` that meet `condition`.

        Membership is tested here, on the one matching name the database projects:
        SecantusDB answers a condition on an array with a collection scan, not with
        the `(pending, seq)` index. Few publications are pending at a time.
        """
        projection = {**fields, _PENDING: {"$elemMatch": {"$eq": subscriber}}}
        pending = self._published.find({"pending": True, **condition}, projection)
        return [
            document async for document in pending.sort("seq", ASCENDING) if document.get(_PENDING)
        ]

    async def index_pending(self) -> int:
        """Index the subscribers of the pending publications; return how many there were."""
        pending = self._published.find({"pending": True}, {"seq": 1}).sort("seq", ASCENDING)
        seqs = [int(document["seq"]) async for document in pending]
        for seq in seqs:
            # Filtered on `pending`: another notifier may have indexed it meanwhile.
            await self._published.update_one(
                {"seq": seq, "pending": True},
                {"$rename": {_PENDING: _INDEXED}, "$unset": {"pending": ""}},
            )
        return len(seqs)

    async def open_subscription(self, subscriber: str) -> int:
        """Record that `subscriber` is connected now and return its acknowledged cursor."""
        # SecantusDB answers an upsert that lost the race with a concurrent one (two
        # streams of a subscriber opening at once) with no document, instead of the
        # one the other inserted: asking again finds that one.
        for _ in range(_UPSERT_ATTEMPTS):
            subscription = await self._subscriptions.find_one_and_update(
                {"subscriber": subscriber},
                {"$set": {"last_seen": _now()}, "$setOnInsert": {"acked_cursor": 0}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
            if subscription is not None:
                return int(subscription["acked_cursor"])
        raise RuntimeError(f"the subscription of {subscriber} was neither found nor inserted")

    async def ack(self, subscriber: str, cursor: int) -> None:
        """Raise the acknowledged cursor of `subscriber` to `cursor` (never lower it).

        Raises:
            CursorBeyondLast: `subscriber` has no stored event at or above `cursor`.
        """
        # Rather than `last_cursor`, which SecantusDB answers by reading every event
        # of the subscriber: this reads only those from `cursor` on, usually one.
        if not await self._has_event_from(subscriber, cursor):
            raise CursorBeyondLast(subscriber, cursor, await self.last_cursor(subscriber))
        await self._subscriptions.update_one(
            {"subscriber": subscriber},
            {"$max": {"acked_cursor": cursor}, "$set": {"last_seen": _now()}},
            upsert=True,
        )

    async def touch(self, subscribers: Sequence[str]) -> None:
        """Record that `subscribers` are connected now."""
        now = _now()
        for chunk in _chunks(subscribers, _IN_CHUNK):
            await self._subscriptions.update_many(
                {"subscriber": {"$in": chunk}}, {"$set": {"last_seen": now}}
            )


def _now() -> datetime:
    # BSON dates keep milliseconds: truncate so what publish returns equals what is read back.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _to_document(publication: Publication) -> Document:
    return {
        "seq": publication.seq,
        "pending": True,
        _PENDING: list(publication.subscribers),
        "type": publication.draft.type,
        "job_id": publication.draft.job_id,
        "task_ids": list(publication.draft.task_ids),
        "publish_time": publication.publish_time,
    }


def _from_document(document: Document) -> Publication:
    """The publication in `document`; without its subscribers if they were not read."""
    return Publication(
        seq=int(document["seq"]),
        subscribers=tuple(document.get(_INDEXED) or document.get(_PENDING, ())),
        draft=EventDraft(document["type"], document["job_id"], tuple(document["task_ids"])),
        publish_time=document["publish_time"],
    )
