"""The ends of one channel: who is there now, who left, and who watches."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["EndChange", "EndInfo", "Membership"]


@dataclass(frozen=True)
class EndInfo:
    """A peer task on a channel.

    Attributes:
        end_id: The peer's task id.
        role: The peer's role.
        join_time: When this bridge first saw it (again, after it left).
    """

    end_id: str
    role: str
    join_time: datetime


@dataclass(frozen=True)
class EndChange:
    """An end that joined (`joined`) or left."""

    end: EndInfo
    joined: bool


class Membership:
    """The current ends of a channel and the ends that left it."""

    def __init__(self) -> None:
        self._ends: dict[str, EndInfo] = {}
        self._left: dict[str, EndInfo] = {}
        # A watcher's queue ends with None when the channel closes.
        self._watchers: set[asyncio.Queue[EndChange | None]] = set()

    def join(self, end_id: str, role: str) -> bool:
        """Record that `end_id` is present; True when it was not already."""
        if end_id in self._ends:
            return False
        self._left.pop(end_id, None)
        end = EndInfo(end_id, role, datetime.now(UTC))
        self._ends[end_id] = end
        self._tell(EndChange(end, joined=True))
        return True

    def leave(self, end_id: str) -> bool:
        """Record that `end_id` left; True when it was present."""
        end = self._ends.pop(end_id, None)
        if end is None:
            return False
        self._left[end_id] = end
        self._tell(EndChange(end, joined=False))
        return True

    def current(self) -> list[EndInfo]:
        """The current ends, in the order they joined."""
        return list(self._ends.values())

    def is_current(self, end_id: str) -> bool:
        """Whether `end_id` is an end now."""
        return end_id in self._ends

    def is_known(self, end_id: str) -> bool:
        """Whether `end_id` is an end now or was one."""
        return end_id in self._ends or end_id in self._left

    @contextmanager
    def watch(self) -> Iterator[asyncio.Queue[EndChange | None]]:
        """A queue of the current ends (as joins), then of every change, then None
        once the channel closes."""
        queue: asyncio.Queue[EndChange | None] = asyncio.Queue()
        for end in self._ends.values():
            queue.put_nowait(EndChange(end, joined=True))
        self._watchers.add(queue)
        try:
            yield queue
        finally:
            self._watchers.discard(queue)

    def close(self) -> None:
        """End every watch."""
        self._tell(None)

    def _tell(self, change: EndChange | None) -> None:
        for queue in self._watchers:
            queue.put_nowait(change)
