"""The subscriber's side of NotifyService: follow one subscriber's events for good.

The flamelet (`task/<id>`) and the deployer (`compute/<id>`) call `follow_events`
and hand it what to do with each event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from flame.notify.v1 import event_pb2, notify_service_pb2, notify_service_pb2_grpc

__all__ = ["backoff_delay", "follow_events"]

_log = logging.getLogger(__name__)

_BACKOFF_BASE_SECONDS = 0.2
_BACKOFF_CAP_SECONDS = 10.0
# A stream silent for this many heartbeat intervals is taken for dead: the
# connection can be gone without either side being told.
_SILENT_HEARTBEATS = 3


async def follow_events(
    stub: notify_service_pb2_grpc.NotifyServiceAsyncStub,
    subscriber: str,
    *,
    handle: Callable[[event_pb2.Event], Awaitable[None]],
    stop: asyncio.Event,
    heartbeat_seconds: int = 10,
    call_timeout: float = 10.0,
) -> None:
    """Handle every event of `subscriber`, in cursor order, until `stop` is set.

    Subscribes from the last acknowledged cursor, awaits `handle` for each event,
    then acknowledges it. Whenever the stream breaks (an RPC error, the server
    ending it, no message for three heartbeat intervals, `handle` raising, an
    acknowledgement failing) it subscribes again after a backoff with full jitter
    (`backoff_delay`), for as long as it takes; a stream that delivered anything
    resets the backoff.

    Delivery is at least once, made exactly once by cursors where possible: within
    this call an event that `handle` completed is never handed to it again, since
    it resubscribes after the last cursor handled even when that acknowledgement
    was lost. An event whose `handle` raised or was cancelled by `stop` is not
    acknowledged and comes again. A handled event is acknowledged even when `stop`
    is set meanwhile; only one whose acknowledgement failed comes again to the
    next call.

    The channel's own reconnect backoff applies too (gRPC's grows to 120 s): give
    the channel `grpc.max_reconnect_backoff_ms` of about 10000 to come back as
    soon after a long outage.

    Args:
        stub: A NotifyService stub on an aio channel.
        subscriber: `task/<id>` or `compute/<id>`.
        handle: What to do with one event.
        stop: Set it to return; an event being handled is abandoned.
        heartbeat_seconds: Heartbeat interval asked of the server (1 to 60).
        call_timeout: Deadline of each acknowledgement, in seconds.
    """
    follower = _Follower(stub, subscriber, handle, heartbeat_seconds, call_timeout)
    failures = 0
    while not stop.is_set():
        follower.delivered = False
        try:
            await _until_stopped(follower.follow_once(), stop)
        except Exception as error:
            _log.warning(
                "event stream broke", extra={"subscriber": subscriber, "error": repr(error)}
            )
        if follower.delivered:
            failures = 0
        await _sleep_until_stopped(backoff_delay(failures), stop)
        failures += 1


def backoff_delay(failures: int) -> float:
    """Seconds to wait before reconnecting after `failures` failed attempts in a row.

    Full jitter: uniformly random below min(10 s, 0.2 s * 2**failures), so that
    many subscribers cut off together do not come back together.
    """
    ceiling = min(_BACKOFF_CAP_SECONDS, _BACKOFF_BASE_SECONDS * 2 ** min(failures, 32))
    return random.uniform(0, ceiling)


class _Follower:
    """One subscriber's stream, and the last cursor handled across its reconnects."""

    def __init__(
        self,
        stub: notify_service_pb2_grpc.NotifyServiceAsyncStub,
        subscriber: str,
        handle: Callable[[event_pb2.Event], Awaitable[None]],
        heartbeat_seconds: int,
        call_timeout: float,
    ) -> None:
        self._stub = stub
        self._subscriber = subscriber
        self._handle = handle
        self._heartbeat_seconds = heartbeat_seconds
        self._call_timeout = call_timeout
        # 0 until an event is handled: the server then starts after the acknowledged cursor.
        self.position = 0
        self.delivered = False

    async def follow_once(self) -> None:
        """Subscribe and handle events until the stream ends or fails."""
        request = notify_service_pb2.SubscribeEventsRequest(
            subscriber=self._subscriber,
            after_cursor=self.position,
            heartbeat_seconds=self._heartbeat_seconds,
        )
        call = self._stub.SubscribeEvents(request)
        responses = aiter(call)
        try:
            while True:
                async with asyncio.timeout(self._heartbeat_seconds * _SILENT_HEARTBEATS):
                    response = await anext(responses, None)
                if response is None:
                    return
                self.delivered = True
                if response.HasField("event"):
                    await self._take(response.event)
        finally:
            call.cancel()

    async def _take(self, event: event_pb2.Event) -> None:
        if event.cursor <= self.position:
            return
        await self._handle(event)
        self.position = event.cursor
        request = notify_service_pb2.AckEventsRequest(
            subscriber=self._subscriber, cursor=event.cursor
        )
        ack = asyncio.ensure_future(self._stub.AckEvents(request, timeout=self._call_timeout))
        try:
            await asyncio.shield(ack)
        except asyncio.CancelledError:
            # Stopping: the event is handled, so let its acknowledgement finish (within
            # its deadline) rather than have the event delivered again next time.
            await asyncio.wait([ack])
            raise


async def _until_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Run `work` until it ends or `stop` is set, whichever comes first."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _sleep_until_stopped(seconds: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
