"""Prompt wake-ups between the worker processes of one notifier.

Workers serve one port and share one database. The worker that stores a
publication tells its siblings its `seq` in a Unix datagram, so that they poll
the database at once instead of at their next poll interval. Wake-ups are a
shortcut only: one lost (a sibling starting, restarting or with a full socket
buffer) delays delivery until that sibling's next periodic poll, never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from pathlib import Path

__all__ = ["Siblings", "wake_path"]

# A wake-up is one `seq` in ASCII: far below this.
_DATAGRAM_BYTES = 64


def wake_path(folder: Path, index: int) -> Path:
    """The socket on which worker `index` receives wake-ups."""
    return folder / f"worker-{index}.sock"


class Siblings:
    """Worker `index` of `count`: receives wake-ups in `folder` and sends them to the others."""

    def __init__(self, folder: Path, index: int, count: int) -> None:
        self._own = wake_path(folder, index)
        self._others = [wake_path(folder, other) for other in range(count) if other != index]
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)
        # A worker restarted in the same folder finds its predecessor's socket file.
        self._own.unlink(missing_ok=True)
        self._socket.bind(str(self._own))

    def listen(self, on_wake: Callable[[int], None]) -> None:
        """Call `on_wake(seq)` for each wake-up received, from the running event loop."""
        asyncio.get_running_loop().add_reader(self._socket.fileno(), self._receive, on_wake)

    def tell(self, seq: int) -> None:
        """Tell every sibling that publications up to `seq` are stored; never blocks."""
        message = str(seq).encode()
        for path in self._others:
            # A sibling not bound yet, gone, or not keeping up polls on its own anyway.
            with contextlib.suppress(OSError):
                self._socket.sendto(message, str(path))

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        with contextlib.suppress(RuntimeError):  # no running loop: nothing was listening
            asyncio.get_running_loop().remove_reader(self._socket.fileno())
        self._socket.close()
        self._own.unlink(missing_ok=True)

    def _receive(self, on_wake: Callable[[int], None]) -> None:
        # Drain everything queued: one poll answers them all, so only the highest counts.
        highest = 0
        while True:
            try:
                message = self._socket.recv(_DATAGRAM_BYTES)
            except BlockingIOError:
                break
            with contextlib.suppress(ValueError):
                highest = max(highest, int(message))
        if highest:
            on_wake(highest)
