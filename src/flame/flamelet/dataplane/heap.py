"""How a bridge process uses glibc's allocator for the chunks it moves.

A bridge allocates and frees a few MiB-sized buffers per chunk (the frame laid out,
gRPC's copies). By default glibc serves each from a fresh mmap: every page of every
chunk is faulted in and zeroed by the kernel, which cost a bridge a third of its CPU.
`keep_chunks_on_heap` serves them from the heap instead, where freed buffers are
reused hot; `trim_heap` gives the freed pieces of a large message back afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
from collections.abc import Callable
from typing import Final

__all__ = ["keep_chunks_on_heap", "trim_heap"]

_log = logging.getLogger(__name__)

# mallopt(3) parameters.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
# Allocations below this come from the heap: above any chunk and its frame.
_MMAP_THRESHOLD_BYTES: Final = 32 * 1024 * 1024
# The free top of the heap that glibc keeps instead of returning it at each free.
_TRIM_THRESHOLD_BYTES: Final = 8 * 1024 * 1024
_TRIM_AGAIN_SECONDS: Final = (0.02, 0.2)

try:
    _libc = ctypes.CDLL("libc.so.6")
    _mallopt: Callable[[int, int], int] | None = _libc.mallopt
    _malloc_trim: Callable[[int], int] | None = _libc.malloc_trim
except (OSError, AttributeError):  # Not glibc.
    _mallopt = _malloc_trim = None


def keep_chunks_on_heap() -> None:
    """Serve this process's chunk-sized allocations from the heap (a bridge's own
    process only: the setting holds for everything the process allocates)."""
    if _mallopt is None:
        return
    if not (
        _mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        and _mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
    ):
        _log.warning("glibc refused the allocator settings for chunks")


def trim_heap() -> None:
    """Give the freed pieces of a large message back to the system, now and once
    what still held them (the lane, the transport's unacknowledged frames) let go.

    Freed, they would stay in the process, and the next message's peak would come on
    top of them.
    """
    if _malloc_trim is None:
        return
    _malloc_trim(0)
    with contextlib.suppress(RuntimeError):
        loop = asyncio.get_running_loop()
        for delay in _TRIM_AGAIN_SECONDS:
            loop.call_later(delay, _malloc_trim, 0)
