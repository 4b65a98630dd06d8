"""The task's log: a local file, shipped to AppendTaskLogs as it grows.

The file is the buffer. The shipper remembers how far the apiserver has
acknowledged and sends what lies beyond, so a long outage costs disk, not
memory, and never slows the role code down; nothing is lost while the file
exists. A call that breaks is sent again from the last acknowledged byte: a
batch whose acknowledgement was lost arrives twice, none goes missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc

from flame.notifier.client import backoff_delay

__all__ = ["LogShipper", "TaskLog"]

_log = logging.getLogger(__name__)

Send = Callable[[Sequence[bytes]], Awaitable[None]]


class TaskLog:
    """An append-only local log file that knows its size."""

    def __init__(self, path: Path) -> None:
        """Create (or truncate) the log at `path`, readable by its owner only."""
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW
        self._file = os.fdopen(os.open(path, flags, 0o600), "ab")
        self.size = 0

    def append(self, data: bytes) -> None:
        """Append `data`; readers of the file see it at once."""
        self._file.write(data)
        self._file.flush()
        self.size += len(data)

    def read(self, offset: int, limit: int) -> bytes:
        """Up to `limit` bytes from `offset`."""
        with self.path.open("rb") as source:
            source.seek(offset)
            return source.read(limit)

    def tail(self, limit: int) -> str:
        """The last `limit` bytes, as text (a character cut in half becomes U+FFFD)."""
        start = max(0, self.size - limit)
        return self.read(start, limit).decode("utf-8", errors="replace")

    def close(self) -> None:
        """Close the file; it stays on disk."""
        self._file.close()


class LogShipper:
    """Ships a TaskLog to AppendTaskLogs: every `interval`, or once `batch_bytes` wait."""

    def __init__(
        self,
        log: TaskLog,
        send: Send,
        *,
        interval: float = 0.5,
        batch_bytes: int = 64 * 1024,
        call_bytes: int = 1024 * 1024,
    ) -> None:
        """Ship `log` with `send`, which appends its chunks in one call.

        Args:
            log: The log to ship.
            send: Appends chunks of at most `batch_bytes` each in one call.
            interval: Seconds between shipments of a log that grows slowly.
            batch_bytes: Unsent bytes that trigger a shipment at once; also the
                size of one message.
            call_bytes: Most bytes sent in one call.
        """
        self._log = log
        self._send = send
        self._interval = interval
        self._batch_bytes = batch_bytes
        self._call_bytes = call_bytes
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.shipped = 0

    def start(self) -> None:
        """Start shipping in the background."""
        self._task = asyncio.create_task(self._run())

    def notify(self) -> None:
        """Tell the shipper the log grew; it ships at once past `batch_bytes` unsent."""
        if self._log.size - self.shipped >= self._batch_bytes:
            self._wake.set()

    async def close(self, timeout: float) -> bool:
        """Ship what is left, within `timeout` seconds; return whether all of it went."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._task, timeout)
        unsent = self._log.size - self.shipped
        if unsent:
            _log.warning("task log not fully shipped", extra={"unsent_bytes": unsent})
        return unsent == 0

    async def _run(self) -> None:
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            closing = self._closing
            try:
                await self._ship_pending()
            except grpc.aio.AioRpcError as error:
                _log.warning("shipping the task log failed", extra={"code": error.code().name})
                await asyncio.sleep(backoff_delay(failures))
                failures += 1
                continue
            failures = 0
            if closing:
                return

    async def _ship_pending(self) -> None:
        while self.shipped < self._log.size:
            data = self._log.read(self.shipped, self._call_bytes)
            step = self._batch_bytes
            await self._send([data[i : i + step] for i in range(0, len(data), step)])
            self.shipped += len(data)
