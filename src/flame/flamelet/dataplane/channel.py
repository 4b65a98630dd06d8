"""One joined channel: its transport, its ends, and the messages both ways."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from flame.flamelet.dataplane import errors
from flame.flamelet.dataplane.config import ChannelSpec
from flame.flamelet.dataplane.ends import EndInfo, Membership
from flame.flamelet.dataplane.inbox import Delivered, Inbox, RecentIds
from flame.flamelet.dataplane.outbox import Outbox, Outgoing, Transfer
from flame.flamelet.dataplane.settings import TransferLimits
from flame.flamelet.dataplane.transport import Bytes, Endpoint, NotConnected, TransportFactory
from flame.transport.v1 import frame_pb2

__all__ = ["Channel"]

_log = logging.getLogger(__name__)

Presence = frame_pb2.Presence
# How long queued acks may take to leave when the channel closes, in seconds.
_ACK_FLUSH_SECONDS = 1.0


class _Signal:
    """Wakes every waiter at once; take `waiter()` BEFORE checking the state."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def waiter(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()


class Channel:
    """One channel this task joined.

    Args:
        spec: The channel as the task configuration describes it.
        endpoint: This task's end on the channel.
        transports: Builds the transport for the channel's backend.
        limits: Transfer sizes and timings.
    """

    def __init__(
        self,
        spec: ChannelSpec,
        endpoint: Endpoint,
        transports: TransportFactory,
        limits: TransferLimits,
        shared_folder: Path | None = None,
    ) -> None:
        self.spec = spec
        self.endpoint = endpoint
        self.membership = Membership()
        self._limits = limits
        self._changed = _Signal()
        self._closed = False
        self._acks: asyncio.Queue[tuple[str, frame_pb2.Ack]] = asyncio.Queue()
        self._ack_task: asyncio.Task[None] | None = None
        self._sent_ids = RecentIds(limits.completed_ids)
        self._inbox = Inbox(
            endpoint.end_id, limits, self._queue_ack, self._changed.notify, shared_folder
        )
        self._transport = transports(endpoint, self)
        self._outbox = Outbox(endpoint, self._transport.publish, limits)

    @property
    def name(self) -> str:
        """Channel name."""
        return self.spec.name

    async def open(self) -> None:
        """Connect and announce this end.

        Raises:
            ConnectionError: The transport could not connect.
            TimeoutError: It did not connect in time.
        """
        await self._transport.connect()
        self._ack_task = asyncio.create_task(self._send_acks())
        await self._transport.announce(Presence.TYPE_JOIN)

    async def leave(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for pending messages to be delivered, then
        announce the leave and disconnect."""
        pending = [t.delivered for t in self._outbox.pending()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            if late:
                _log.warning(
                    "left with undelivered messages",
                    extra={"channel": self.name, "undelivered": len(late)},
                )
        await self._shut(graceful=True)

    async def abort(self) -> None:
        """Drop everything and the connection, as if the process died."""
        await self._shut(graceful=False)

    # --- the role code's side -----------------------------------------------

    def ends(self) -> list[EndInfo]:
        """The current ends."""
        return self.membership.current()

    def receivers(self, end_ids: Sequence[str], broadcast: bool) -> list[str]:
        """The ends a message goes to: `end_ids`, or every current end for a broadcast.

        Raises:
            FlameError: END_NOT_FOUND or END_LEFT for an end that is not current,
                MESSAGE_INVALID when no end is named and it is no broadcast.
        """
        if not end_ids:
            if not broadcast:
                raise errors.message_invalid("name the receiving ends, or broadcast")
            return [end.end_id for end in self.membership.current()]
        for end_id in end_ids:
            self._check_current(end_id)
        return list(dict.fromkeys(end_ids))

    def check_message_id(self, message_id: str) -> None:
        """Check that a message id is fresh.

        Raises:
            FlameError: MESSAGE_INVALID when the id was used recently: the receivers
                would drop the message as a duplicate.
        """
        if message_id in self._sent_ids:
            raise errors.message_invalid(f"message id {message_id!r} was already used")

    def send(self, message: Outgoing, receivers: Sequence[str]) -> list[Transfer]:
        """Start delivering `message` to `receivers`.

        Raises:
            FlameError: MESSAGE_INVALID when its id was used recently,
                CHANNEL_NOT_JOINED when the channel was left meanwhile.
        """
        if self._closed:
            raise errors.channel_not_joined(self.name)
        self.check_message_id(message.message_id)
        self._sent_ids.add(message.message_id)
        return self._outbox.send(message, receivers)

    async def receive(
        self,
        senders: Sequence[str] | None,
        *,
        no_wait: bool = False,
        peek: bool = False,
        timeout: float | None = None,
    ) -> Delivered | None:
        """The next complete message from one of `senders` (any end when None).

        Args:
            senders: The ends to receive from.
            no_wait: Return None at once when no message is complete.
            peek: Leave the message queued.
            timeout: Seconds to wait; None waits until cancelled.

        Raises:
            FlameError: END_NOT_FOUND for an end that never was one, END_LEFT when a
                named end is gone and sent nothing more, CHANNEL_NOT_JOINED when the
                channel is left meanwhile.
            TimeoutError: `timeout` passed.
        """
        for sender in senders or ():
            if not self.membership.is_known(sender):
                raise errors.end_not_found(self.name, sender)
        async with asyncio.timeout(timeout):
            while True:
                changed = self._changed.waiter()
                message = self._inbox.take(senders, peek=peek)
                if message is not None:
                    return message
                self._check_still_waitable(senders)
                if no_wait:
                    return None
                await changed.wait()

    def pending_transfers(self) -> list[Transfer]:
        """The outgoing transfers not settled yet, current ones first per receiver."""
        return self._outbox.pending()

    def put_back(self, message: Delivered) -> None:
        """Queue a received message again: handing it to the role code failed."""
        self._inbox.put_back(message)

    # --- the transport's side (FrameSink) -----------------------------------

    def frame_received(self, frame: frame_pb2.Frame, data: Bytes = b"") -> None:
        """Dispatch a frame from the transport (a chunk's bytes in `data`); a frame that
        cannot be handled is logged and dropped, it never stops the channel."""
        try:
            self._dispatch(frame, data)
        except Exception:
            _log.exception(
                "dropped a frame that could not be handled", extra={"channel": self.name}
            )

    def connection_restored(self) -> None:
        """Resume transfers after the transport reconnected."""
        self._outbox.connection_restored()

    def _dispatch(self, frame: frame_pb2.Frame, data: Bytes) -> None:
        kind = frame.WhichOneof("kind")
        if kind == "presence":
            self._presence(frame.presence)
        elif kind == "chunk":
            # Only ends are heard. An end's JOIN precedes its chunks on the wire, and
            # a chunk dropped here is sent again after its sender's stall timeout.
            if self.membership.is_known(frame.chunk.sender_id):
                self._inbox.chunk_received(frame.chunk, data)
        elif kind == "ack":
            self._outbox.ack_received(frame.ack)

    def _presence(self, presence: Presence) -> None:
        end_id = presence.end_id
        if presence.type == Presence.TYPE_LEAVE:
            if self.membership.leave(end_id):
                self._outbox.end_left(end_id)
                asyncio.get_running_loop().call_later(
                    self._limits.leave_grace_seconds, self._forget_if_gone, end_id
                )
        elif presence.type in (Presence.TYPE_JOIN, Presence.TYPE_ALIVE):
            self.membership.join(end_id, presence.role)
            self._outbox.end_joined(end_id)
        self._changed.notify()

    def _forget_if_gone(self, end_id: str) -> None:
        if not self.membership.is_current(end_id):
            self._inbox.forget(end_id)

    # --- internals ------------------------------------------------------------

    def _check_current(self, end_id: str) -> None:
        if self.membership.is_current(end_id):
            return
        if self.membership.is_known(end_id):
            raise errors.end_left(self.name, end_id)
        raise errors.end_not_found(self.name, end_id)

    def _check_still_waitable(self, senders: Sequence[str] | None) -> None:
        if self._closed:
            raise errors.channel_not_joined(self.name)
        for sender in senders or ():
            if not self.membership.is_current(sender) and not self._inbox.has_from(sender):
                raise errors.end_left(self.name, sender)

    def _queue_ack(self, sender_id: str, ack: frame_pb2.Ack) -> None:
        self._acks.put_nowait((sender_id, ack))

    async def _send_acks(self) -> None:
        while True:
            sender_id, ack = await self._acks.get()
            try:
                await self._transport.publish(sender_id, frame_pb2.Frame(ack=ack))
            except NotConnected:
                pass  # The sender resumes after a reconnection and is acknowledged again.
            finally:
                self._acks.task_done()

    async def _shut(self, *, graceful: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._changed.notify()
        self.membership.close()
        if graceful:
            try:
                async with asyncio.timeout(_ACK_FLUSH_SECONDS):
                    await self._acks.join()
            except TimeoutError:
                pass
        if self._ack_task is not None:
            self._ack_task.cancel()
        await self._outbox.close()
        await self._disconnect(graceful)

    async def _disconnect(self, graceful: bool) -> None:
        if not graceful:
            await self._transport.abort()
            return
        try:
            await self._transport.announce(Presence.TYPE_LEAVE)
        except NotConnected:
            _log.warning("left without announcing it", extra={"channel": self.name})
        await self._transport.close()
