"""Delivery of stored events to the open streams of this process.

The hub applies every publication of the database to its open streams, in `seq`
order and once each: it pushes the event into the inbox of each open stream of
each of the publication's subscribers, so that streams deliver without reading
the database. `frontier` is the `seq` up to which it has applied them all.

* A publish through this hub is applied as soon as it is stored, when its `seq`
  follows the frontier. Otherwise another notifier published in between: the hub
  holds it and polls at once for what it missed.
* A poller reads the publications after the frontier every `poll_seconds` (one
  small indexed query, whatever the number of streams) and applies them. The
  store's `seq`s have no holes and become visible in order, so the poller never
  steps over a publication that appears later.
* Worker processes of one notifier wake each other: the hub tells `on_stored`
  the `seq` of each own publication as soon as it is stored, and `wake(seq)`
  makes it poll at once when `seq` is beyond its frontier.

Publications are stored pending (see `store`): the hub indexes their subscribers
once its publishes have paused for `index_after_seconds`, out of their fan-outs,
and every `_INDEX_MAX_DELAY` whatever other notifiers left pending.

A stream reads the database only when it opens, and when it lost track: its
inbox overflowed because it did not keep up. It then reads its events after its
position, page by page; once a page is not full it has every event stored up to
that read, and every later one is pushed to its inbox (see `_Inbox.catch_up`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass

from pymongo.errors import PyMongoError

from flame.notifier.store import EventDraft, EventStore, Publication, StoredEvent

__all__ = ["EventHub", "Heartbeat"]

_log = logging.getLogger(__name__)

# Events or publications read from the database per query; a full page means more may follow.
_READ_LIMIT = 100
# Pushed events an inbox keeps for a stream that does not keep up; once over, the
# stream reads from the database until it has caught up.
_MAX_PENDING = 1000
# Own publications held while the poller fetches the ones before them. Beyond
# this the poller delivers the rest too, only later.
_MAX_HELD = 1000
# Pending publications are indexed at least this often, publishes paused or not.
_INDEX_MAX_DELAY = 30.0


@dataclass(frozen=True)
class Heartbeat:
    """Sent on an idle stream: the last cursor stored for its subscriber."""

    last_cursor: int


class _Inbox:
    """One open stream's position and the events pushed to it."""

    def __init__(self, subscriber: str, position: int) -> None:
        self.subscriber = subscriber
        # The last cursor the stream has delivered.
        self.position = position
        # The last cursor stored for the subscriber, once known.
        self.last_cursor: int | None = None
        self.pending: list[StoredEvent] = []
        # Whether `pending` holds every event after `position`: not until the
        # stream has read its backlog, nor after an overflow.
        self.in_sync = False
        self.woken = asyncio.Event()
        self.woken.set()
        # Set with `woken` when the stream has been idle for a heartbeat interval.
        self.heartbeat_due = False
        # The loop time the stream last delivered something.
        self.active_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def start_heartbeats(self, seconds: float) -> None:
        """Ask for a heartbeat each time the stream has been idle for `seconds`.

        One timer per interval, rather than a timeout on each wait for events: that
        cost 6 of 8 µs per stream woken in a fan-out to 1,000.
        """
        loop = asyncio.get_running_loop()
        self.active_at = loop.time()

        def check() -> None:
            idle_since = loop.time() - self.active_at
            if idle_since >= seconds:
                self.heartbeat_due = True
                self.woken.set()
                idle_since = 0.0
            self._timer = loop.call_later(seconds - idle_since, check)

        self._timer = loop.call_later(seconds, check)

    def stop_heartbeats(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def offer(self, event: StoredEvent) -> None:
        self.last_cursor = max(self.last_cursor or 0, event.cursor)
        if len(self.pending) < _MAX_PENDING:
            self.pending.append(event)
        else:
            self.in_sync = False
        self.woken.set()

    def take(self) -> list[StoredEvent]:
        """The pushed events after `position`, in cursor order (the hub's order)."""
        taken, self.pending = self.pending, []
        return [event for event in taken if event.cursor > self.position]

    async def catch_up(self, store: EventStore) -> list[StoredEvent]:
        """Read the next page of events after `position` from the database."""
        # Dropped before the read: each of them is stored, so this read or a later
        # one returns it. Whatever is pushed from here on stays, duplicates of the
        # read included (`take` skips them), so nothing stored after the read is lost,
        # unless the inbox overflows meanwhile: `offer` then clears `in_sync` again.
        self.pending.clear()
        self.in_sync = True
        events = await store.events_after(self.subscriber, self.position, _READ_LIMIT)
        if len(events) == _READ_LIMIT:
            self.in_sync = False
        if not self.in_sync:
            self.woken.set()
        if events:
            self.last_cursor = max(self.last_cursor or 0, events[-1].cursor)
        return events


class EventHub:
    """Publishes events and feeds the open streams of this process with them."""

    def __init__(
        self,
        store: EventStore,
        *,
        poll_seconds: float = 0.2,
        liveness_seconds: float = 10.0,
        index_after_seconds: float = 1.0,
        on_stored: Callable[[int], None] | None = None,
    ) -> None:
        """Read from `store`; poll it every `poll_seconds` for publications made elsewhere,
        record the subscribers with open streams as seen every `liveness_seconds`, index
        pending publications once no publish came for `index_after_seconds`, and call
        `on_stored(seq)` once the publications up to `seq` of a publish are stored."""
        self._store = store
        self._on_stored = on_stored
        self._poll_seconds = poll_seconds
        self._liveness_seconds = liveness_seconds
        self._index_after_seconds = index_after_seconds
        # When this hub last published, while some of its publications are pending.
        self._last_publish: float | None = None
        self._inboxes: dict[str, set[_Inbox]] = {}
        # None until `start`: nothing is applied before the hub knows where it starts.
        self._frontier: int | None = None
        self._held: dict[int, Publication] = {}
        self._poll_now = asyncio.Event()
        self._closing = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start applying publications; call from the event loop that serves the streams."""
        self._frontier = await self._store.last_seq()
        self._tasks = [
            asyncio.create_task(self._poll_forever()),
            asyncio.create_task(self._touch_forever()),
            asyncio.create_task(self._index_forever()),
        ]

    async def close(self) -> None:
        """End every stream now and stop polling; streams opened later end at once.

        Lets a database query in flight end (within the client's timeout) rather than
        cancel it: a task cancelled inside a query (pymongo 4.20.1) was seen to hang
        for good, and `close` with it.
        """
        self._closing.set()
        self._poll_now.set()
        for inboxes in self._inboxes.values():
            for inbox in inboxes:
                inbox.woken.set()
        await asyncio.gather(*self._tasks)

    async def publish(self, subscribers: Sequence[str], draft: EventDraft) -> list[StoredEvent]:
        """Store `draft` for each of `subscribers`, then hand the events to their streams."""
        publications = await self._store.publish(subscribers, draft)
        self._last_publish = asyncio.get_running_loop().time()
        if self._on_stored is not None:
            # First: the other processes then read it while this one feeds its streams.
            self._on_stored(publications[-1].seq)
        for publication in publications:
            self._receive(publication)
        return [event for publication in publications for event in publication.events()]

    def wake(self, seq: int) -> None:
        """Poll at once if publication `seq`, stored elsewhere, is not applied yet."""
        if self._frontier is not None and seq > self._frontier:
            self._poll_now.set()

    async def follow(
        self, subscriber: str, after_cursor: int, heartbeat_seconds: float
    ) -> AsyncGenerator[StoredEvent | Heartbeat, None]:
        """Yield the events of `subscriber` after `after_cursor` in cursor order, then new
        ones as they are published, and a heartbeat after each `heartbeat_seconds` idle.

        Ends when the hub closes; the caller ends it earlier by closing the iterator.
        """
        inbox = _Inbox(subscriber, after_cursor)
        self._inboxes.setdefault(subscriber, set()).add(inbox)
        inbox.start_heartbeats(heartbeat_seconds)
        try:
            while not self._closing.is_set():
                for item in await self._next_items(inbox):
                    yield item
        finally:
            inbox.stop_heartbeats()
            self._forget(inbox)

    async def _next_items(self, inbox: _Inbox) -> Sequence[StoredEvent | Heartbeat]:
        """Wait for the next events of `inbox`, or its heartbeat; none once the hub closes."""
        await inbox.woken.wait()
        if self._closing.is_set():
            return ()
        inbox.woken.clear()
        events = inbox.take() if inbox.in_sync else await inbox.catch_up(self._store)
        if events:
            inbox.position = events[-1].cursor
            inbox.active_at = asyncio.get_running_loop().time()
            inbox.heartbeat_due = False
            return events
        if inbox.heartbeat_due:
            inbox.heartbeat_due = False
            return (await self._heartbeat(inbox),)
        return ()

    async def _heartbeat(self, inbox: _Inbox) -> Heartbeat:
        # Read once per stream at most: from then on every event of the subscriber
        # passes through the inbox.
        if inbox.last_cursor is None:
            stored = await self._store.last_cursor(inbox.subscriber)
            # An event pushed during the read may be newer than what it saw.
            inbox.last_cursor = max(stored, inbox.last_cursor or 0)
        return Heartbeat(inbox.last_cursor)

    def _forget(self, inbox: _Inbox) -> None:
        inboxes = self._inboxes[inbox.subscriber]
        inboxes.discard(inbox)
        if not inboxes:
            del self._inboxes[inbox.subscriber]

    def _receive(self, publication: Publication) -> None:
        """Apply an own publication now if it follows the frontier, else once the
        poller has applied those before it."""
        if self._frontier is None or publication.seq <= self._frontier:
            return
        if len(self._held) < _MAX_HELD:
            self._held[publication.seq] = publication
        self._apply_held()
        if self._held:
            self._poll_now.set()

    def _apply_held(self) -> None:
        assert self._frontier is not None, "publications are held only once started"
        self._held = {seq: p for seq, p in self._held.items() if seq > self._frontier}
        while (publication := self._held.pop(self._frontier + 1, None)) is not None:
            self._apply(publication)

    def _apply(self, publication: Publication) -> None:
        self._frontier = publication.seq
        for subscriber in publication.subscribers:
            for inbox in self._inboxes.get(subscriber, ()):
                inbox.offer(publication.event_for(subscriber))

    async def _poll_forever(self) -> None:
        while True:
            await _wait_for(self._poll_now, self._poll_seconds)
            self._poll_now.clear()
            if self._closing.is_set():
                return
            try:
                await self._poll()
            except PyMongoError as error:
                # The streams go on with what this process publishes; the next round retries.
                _log.warning("polling for events failed", extra={"error": str(error)})

    async def _poll(self) -> None:
        """Apply the publications after the frontier, page by page."""
        while True:
            # The counter first, one small document: the publications after the frontier
            # are often own ones, applied while the read was on its way, and decoding
            # their thousands of subscribers would be wasted.
            last = await self._store.last_seq()
            assert self._frontier is not None, "the poller runs once started"
            if last <= self._frontier:
                return
            found = await self._store.publications_after(self._frontier, _READ_LIMIT)
            for publication in found:
                # An own publish may have moved the frontier while the query ran.
                if publication.seq > self._frontier:
                    self._apply(publication)
            self._apply_held()
            if len(found) < _READ_LIMIT:
                return

    async def _touch_forever(self) -> None:
        # A task of its own: touching thousands of subscribers takes many queries,
        # which must not delay the poller.
        while True:
            await _wait_for(self._closing, self._liveness_seconds)
            if self._closing.is_set():
                return
            try:
                await self._store.touch(list(self._inboxes))
            except PyMongoError as error:
                _log.warning("recording liveness failed", extra={"error": str(error)})

    async def _index_forever(self) -> None:
        # Indexing costs the database about what a publish did before publications were
        # stored pending (20 ms for 1,000 subscribers): done in a pause, it delays
        # neither the publishes nor their fan-outs.
        loop = asyncio.get_running_loop()
        last_run = loop.time()
        while True:
            await _wait_for(self._closing, min(self._index_after_seconds, _INDEX_MAX_DELAY))
            if self._closing.is_set():
                return
            now = loop.time()
            paused = self._last_publish is not None and (
                now - self._last_publish >= self._index_after_seconds
            )
            if not paused and now - last_run < _INDEX_MAX_DELAY:
                continue
            self._last_publish, last_run = None, now
            try:
                await self._store.index_pending()
            except PyMongoError as error:
                # Pending publications are found all the same; the next round retries.
                _log.warning("indexing publications failed", extra={"error": str(error)})


async def _wait_for(event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set, at most `seconds`; False on timeout."""
    try:
        async with asyncio.timeout(max(seconds, 0)):
            await event.wait()
    except TimeoutError:
        return False
    return True
