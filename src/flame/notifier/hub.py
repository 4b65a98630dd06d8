"""Delivery of stored events to the open streams of this process.

Every open stream has an inbox. A publish through this hub pushes the events it
has just stored into the inboxes of their subscribers, so the streams deliver
them without reading the database. Publishes by other notifier processes on the
same database are found by a poller: every `poll_seconds` it reads the
publications numbered after the last one it saw (one small indexed query,
whatever the number of streams) and wakes the streams of the subscribers that
others published to; those read what they miss from the database.

A stream delivers pushed events only when they continue its cursor run exactly;
anything else (a gap, a wake-up by the poller, the backlog when it opens) is read
from the database, which holds no holes and shows cursors in order (see `store`).
Each heartbeat also checks the stream against the database, so that even a
missed wake-up delays an event by one heartbeat interval at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from pymongo.errors import PyMongoError

from flame.notifier.store import EventDraft, EventStore, StoredEvent

__all__ = ["EventHub", "Heartbeat"]

_log = logging.getLogger(__name__)

# Events read from the database per query; a full page means more may follow.
_READ_LIMIT = 100
# Pushed events an inbox keeps for a stream that does not keep up; later ones are
# read from the database once it has caught up.
_MAX_PENDING = 1000


@dataclass(frozen=True)
class Heartbeat:
    """Sent on an idle stream: the last cursor published to its subscriber."""

    last_cursor: int


class _Inbox:
    """One open stream's position and the events pushed to it."""

    def __init__(self, subscriber: str, position: int) -> None:
        self.subscriber = subscriber
        # The last cursor the stream has delivered.
        self.position = position
        self.pending: list[StoredEvent] = []
        self.overflowed = False
        self.woken = asyncio.Event()
        # Woken from the start: the first round reads the backlog.
        self.woken.set()

    def offer(self, event: StoredEvent) -> None:
        if len(self.pending) < _MAX_PENDING:
            self.pending.append(event)
        else:
            self.overflowed = True
        self.woken.set()

    def take(self) -> list[StoredEvent]:
        taken, self.pending = self.pending, []
        # After an overflow stay woken, so the next round reads the dropped events.
        if not self.overflowed:
            self.woken.clear()
        self.overflowed = False
        return sorted(taken, key=lambda event: event.cursor)

    async def wait(self, timeout: float) -> bool:
        """Wait until woken, at most `timeout` seconds; False on timeout."""
        try:
            async with asyncio.timeout(max(timeout, 0)):
                await self.woken.wait()
        except TimeoutError:
            return False
        return True


class EventHub:
    """Publishes events and feeds the open streams of this process with them."""

    def __init__(
        self, store: EventStore, *, poll_seconds: float = 0.2, liveness_seconds: float = 10.0
    ) -> None:
        """Read from `store`; poll it every `poll_seconds` for events published elsewhere
        and record the subscribers with open streams as seen every `liveness_seconds`."""
        self._store = store
        self._poll_seconds = poll_seconds
        self._liveness_seconds = liveness_seconds
        # Names this process in the publication log, so its poller skips its own.
        self._origin = uuid.uuid4().hex
        self._inboxes: dict[str, set[_Inbox]] = {}
        self._closed = False
        self._poller: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling; call from the event loop that serves the streams."""
        self._poller = asyncio.create_task(self._poll_forever())

    async def close(self) -> None:
        """End every stream now and stop polling; streams opened later end at once."""
        self._closed = True
        for inboxes in self._inboxes.values():
            for inbox in inboxes:
                inbox.woken.set()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def publish(self, subscribers: Sequence[str], draft: EventDraft) -> list[StoredEvent]:
        """Store `draft` for each of `subscribers`, then hand the events to their streams."""
        events = await self._store.publish(subscribers, draft, origin=self._origin)
        for event in events:
            for inbox in self._inboxes.get(event.subscriber, ()):
                inbox.offer(event)
        return events

    async def follow(
        self, subscriber: str, after_cursor: int, heartbeat_seconds: float
    ) -> AsyncIterator[StoredEvent | Heartbeat]:
        """Yield the events of `subscriber` after `after_cursor` in cursor order, then new
        ones as they are published, and a heartbeat after each `heartbeat_seconds` idle.

        Ends when the hub closes; the caller ends it earlier by closing the iterator.
        """
        inbox = _Inbox(subscriber, after_cursor)
        self._inboxes.setdefault(subscriber, set()).add(inbox)
        try:
            async for item in self._deliver(inbox, heartbeat_seconds):
                yield item
        finally:
            self._forget(inbox)

    async def _deliver(
        self, inbox: _Inbox, heartbeat_seconds: float
    ) -> AsyncIterator[StoredEvent | Heartbeat]:
        loop = asyncio.get_running_loop()
        heartbeat_at = loop.time() + heartbeat_seconds
        while True:
            woken = await inbox.wait(heartbeat_at - loop.time())
            if self._closed:
                return
            if not woken:
                yield await self._heartbeat(inbox)
                heartbeat_at = loop.time() + heartbeat_seconds
                continue
            events = await self._next_events(inbox)
            for event in events:
                inbox.position = event.cursor
                yield event
            if events:
                heartbeat_at = loop.time() + heartbeat_seconds

    async def _heartbeat(self, inbox: _Inbox) -> Heartbeat:
        last = await self._store.last_cursor(inbox.subscriber)
        if last > inbox.position:
            inbox.woken.set()  # a wake-up went missing: read from the database next
        return Heartbeat(last)

    async def _next_events(self, inbox: _Inbox) -> list[StoredEvent]:
        pushed = [event for event in inbox.take() if event.cursor > inbox.position]
        if pushed and _continues(pushed, inbox.position):
            return pushed
        events = await self._store.events_after(inbox.subscriber, inbox.position, _READ_LIMIT)
        if len(events) == _READ_LIMIT:
            inbox.woken.set()
        return events

    def _forget(self, inbox: _Inbox) -> None:
        inboxes = self._inboxes[inbox.subscriber]
        inboxes.discard(inbox)
        if not inboxes:
            del self._inboxes[inbox.subscriber]

    async def _poll_forever(self) -> None:
        loop = asyncio.get_running_loop()
        touched_at = loop.time()
        seen: int | None = None
        while True:
            try:
                if seen is None:
                    seen = await self._store.last_publication()
                await asyncio.sleep(self._poll_seconds)
                seen = await self._poll(seen)
                if loop.time() - touched_at >= self._liveness_seconds:
                    touched_at = loop.time()
                    await self._store.touch(list(self._inboxes))
            except PyMongoError as error:
                # The streams go on with what this process publishes; the next round retries.
                _log.warning("polling for events failed", extra={"error": str(error)})
                await asyncio.sleep(self._poll_seconds)

    async def _poll(self, seen: int) -> int:
        """Wake the streams of subscribers that others published to after publication
        `seen`; return the last publication number read."""
        for publication in await self._store.publications_after(seen):
            seen = publication.number
            if publication.origin == self._origin:
                continue
            for subscriber in publication.subscribers:
                for inbox in self._inboxes.get(subscriber, ()):
                    inbox.woken.set()
        return seen


def _continues(events: list[StoredEvent], position: int) -> bool:
    """Whether `events` (sorted) are exactly the cursors following `position`."""
    return all(event.cursor == position + offset for offset, event in enumerate(events, 1))
