"""The receiving half of a channel: reassemble, verify, acknowledge, queue.

A sender transfers one message at a time to a given end, so the inbox holds at most
one message in reassembly per sender, written into one store allocated up front
(`flame.wire.Reassembler`). Acknowledgements tell the sender how far it got:

* every `ack_every` chunks, `Ack(next_sequence=n)`: chunks below n arrived;
* once the message is whole and matches its digest, `Ack(complete=True)`;
* when the digest does not match, `Ack(corrupt=True)`: the sender starts over;
* when a chunk arrives past a missing one, `Ack(next_sequence=n)` repeating the last
  acknowledged position: the sender resends from n (a duplicate acknowledgement, as
  in TCP);
* when a chunk arrives again (the sender went back after a timeout: an ack may be
  lost), `Ack(next_sequence=n)`: the sender skips what arrived.

Those two reports are limited to one per position and quarter of the sender's stall
timeout, so that a burst of out-of-order chunks costs one report, and a lost report
is repeated when the sender, stalled, sends again.

Replayed chunks are otherwise ignored, and so is every chunk of a message completed
recently (a bounded set of ids per sender), whose completion is simply acknowledged
again: nothing reaches the role code twice.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from flame.flamelet.dataplane.settings import TransferLimits
from flame.flamelet.dataplane.transport import Bytes
from flame.transport.v1 import frame_pb2
from flame.wire import ChunkError, MemoryStore, MessageStore, Reassembler
from flame.wire.shared import SharedBuffer, shared_file_fits

__all__ = ["Delivered", "Inbox", "RecentIds"]

_log = logging.getLogger(__name__)

AckSender = Callable[[str, frame_pb2.Ack], None]


@dataclass(eq=False)
class Delivered:
    """A complete, verified message waiting for the role code.

    Attributes:
        sender_id: The end that sent it.
        message_id: The sender's id for it.
        data: The message bytes.
        digest: Their digest (`flame.wire.message_digest`).
        broadcast: Whether the sender broadcast it.
        receive_time: When its last chunk arrived.
    """

    sender_id: str
    message_id: str
    data: memoryview
    digest: str
    broadcast: bool
    receive_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    # The nameless file `data` maps, when the message was reassembled into one.
    shared: SharedBuffer | None = None


@dataclass(eq=False)
class _Incoming:
    chunk: frame_pb2.Chunk  # The first chunk seen, without its data.
    reassembler: Reassembler
    shared: SharedBuffer | None
    acked: int = 0
    # The position last reported out of the normal rate, and when (monotonic).
    reported: tuple[int, float] = (-1, 0.0)

    def announces_the_same(self, chunk: frame_pb2.Chunk) -> bool:
        first = self.chunk
        return (first.total_size, first.total_chunks) == (
            chunk.total_size,
            chunk.total_chunks,
        ) and (not first.digest or not chunk.digest or first.digest == chunk.digest)

    def learn_digest(self, chunk: frame_pb2.Chunk) -> bool:
        """Take the digest from a chunk of a message announced without one (a sender
        that streams the message before it has all of it); False when invalid."""
        if not chunk.digest or self.chunk.digest:
            return True
        try:
            self.reassembler.announce_digest(chunk.digest)
        except ChunkError:
            return False
        self.chunk.digest = chunk.digest
        return True


class RecentIds:
    """The last `capacity` ids added, for membership tests."""

    def __init__(self, capacity: int) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def add(self, message_id: str) -> None:
        self._ids[message_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids


class Inbox:
    """Messages addressed to one end of one channel.

    Args:
        end_id: The receiving end.
        limits: Acknowledgement rate, message size limit, duplicate memory.
        send_ack: Sends an ack to a sender; must not block.
        delivered: Called after a message was queued.
    """

    def __init__(
        self,
        end_id: str,
        limits: TransferLimits,
        send_ack: AckSender,
        delivered: Callable[[], None],
        shared_folder: Path | None = None,
    ) -> None:
        self._end_id = end_id
        self._shared_folder = shared_folder
        self._limits = limits
        self._send_ack = send_ack
        self._delivered = delivered
        self._incoming: dict[str, _Incoming] = {}
        self._completed: dict[str, RecentIds] = {}
        self._queue: deque[Delivered] = deque()

    def chunk_received(self, chunk: frame_pb2.Chunk, data: Bytes) -> None:
        """Take one chunk addressed to this end, with its bytes `data`."""
        sender, message_id = chunk.sender_id, chunk.message_id
        if not sender or not message_id or sender == self._end_id:
            _log.warning("dropped a chunk without sender or message id")
            return
        if message_id in self._completed.get(sender, ()):
            self._ack(chunk, next_sequence=chunk.total_chunks, complete=True)
            return
        incoming = self._incoming.get(sender)
        if incoming is None or incoming.chunk.message_id != message_id:
            # A sender moves on only after the completion; an unfinished message
            # it replaced was abandoned.
            incoming = self._start(chunk)
        elif not incoming.announces_the_same(chunk) or not incoming.learn_digest(chunk):
            _log.warning("dropped a chunk contradicting its message", extra=_where(chunk))
            return
        if incoming is not None:
            self._add(incoming, chunk.sequence, data)

    def take(self, senders: Collection[str] | None, *, peek: bool = False) -> Delivered | None:
        """The oldest queued message from one of `senders` (any sender when None).

        Args:
            senders: The ends to take from.
            peek: Leave the message queued.
        """
        for index, message in enumerate(self._queue):
            if senders is None or message.sender_id in senders:
                if not peek:
                    del self._queue[index]
                return message
        return None

    def put_back(self, message: Delivered) -> None:
        """Queue a taken message again, first: its delivery to the role code failed."""
        self._queue.appendleft(message)
        self._delivered()

    def has_from(self, sender: str) -> bool:
        """Whether a message from `sender` is queued."""
        return any(message.sender_id == sender for message in self._queue)

    def forget(self, sender: str) -> None:
        """Drop the unfinished message of a sender that is gone for good."""
        self._incoming.pop(sender, None)

    def _start(self, chunk: frame_pb2.Chunk) -> _Incoming | None:
        self._incoming.pop(chunk.sender_id, None)
        shared: SharedBuffer | None = None

        def store(size: int) -> MessageStore:
            nonlocal shared
            shared = self._shared_buffer(size)
            return MemoryStore(size) if shared is None else shared

        try:
            reassembler = Reassembler(
                chunk.message_id,
                chunk.total_size,
                chunk.total_chunks,
                chunk.digest,
                max_message_bytes=self._limits.max_message_bytes,
                store=store,
            )
        except ChunkError as error:
            _log.warning("dropped a chunk of an invalid message: %s", error, extra=_where(chunk))
            return None
        # Keep the announcement, not the chunk's bytes, for as long as the transfer.
        announcement = frame_pb2.Chunk(
            sender_id=chunk.sender_id,
            channel=chunk.channel,
            message_id=chunk.message_id,
            total_chunks=chunk.total_chunks,
            total_size=chunk.total_size,
            digest=chunk.digest,
            broadcast=chunk.broadcast,
        )
        incoming = _Incoming(announcement, reassembler, shared)
        self._incoming[chunk.sender_id] = incoming
        return incoming

    def _shared_buffer(self, size: int) -> SharedBuffer | None:
        """A file of the shared folder for a message the role code will take as one."""
        folder = self._shared_folder
        if folder is None or not shared_file_fits(folder, size):
            return None
        try:
            return SharedBuffer(folder, size)
        except OSError as error:  # No room after all.
            _log.debug("reassembling in memory: %s", error)
            return None

    def _add(self, incoming: _Incoming, sequence: int, data: Bytes) -> None:
        reassembler = incoming.reassembler
        if not reassembler.complete:  # An empty message is complete from the start.
            try:
                added = reassembler.add(sequence, data)
            except ChunkError:
                self._report(incoming, gap=True)
                return
            if not added:
                self._report(incoming, gap=False)
                return
        if reassembler.complete:
            self._finish(incoming)
        elif reassembler.next_sequence - incoming.acked >= self._limits.ack_every:
            self._ack_progress(incoming)

    def _report(self, incoming: _Incoming, *, gap: bool) -> None:
        position, now = incoming.reassembler.next_sequence, time.monotonic()
        last_position, last_time = incoming.reported
        if last_position == position and now - last_time < self._limits.stall_seconds / 4:
            return
        incoming.reported = (position, now)
        if incoming.acked < position:
            self._ack_progress(incoming)
            if not gap:
                return
        # The position again: for the sender, a request to resend from it.
        self._ack(incoming.chunk, next_sequence=position)

    def _ack_progress(self, incoming: _Incoming) -> None:
        incoming.acked = incoming.reassembler.next_sequence
        self._ack(incoming.chunk, next_sequence=incoming.acked)

    def _finish(self, incoming: _Incoming) -> None:
        chunk = incoming.chunk
        del self._incoming[chunk.sender_id]
        try:
            data = incoming.reassembler.result()
        except ChunkError as error:
            _log.warning("a message arrived corrupt: %s", error, extra=_where(chunk))
            self._ack(chunk, corrupt=True)
            return
        recent = self._completed.setdefault(chunk.sender_id, RecentIds(self._limits.completed_ids))
        recent.add(chunk.message_id)
        self._queue.append(
            Delivered(
                chunk.sender_id,
                chunk.message_id,
                data,
                chunk.digest,
                chunk.broadcast,
                shared=incoming.shared,
            )
        )
        self._ack(chunk, next_sequence=chunk.total_chunks, complete=True)
        self._delivered()

    def _ack(
        self,
        chunk: frame_pb2.Chunk,
        *,
        next_sequence: int = 0,
        complete: bool = False,
        corrupt: bool = False,
    ) -> None:
        ack = frame_pb2.Ack(
            receiver_id=self._end_id,
            sender_id=chunk.sender_id,
            message_id=chunk.message_id,
            next_sequence=next_sequence,
            complete=complete,
            corrupt=corrupt,
        )
        self._send_ack(chunk.sender_id, ack)


def _where(chunk: frame_pb2.Chunk) -> dict[str, str]:
    return {"sender": chunk.sender_id, "message_id": chunk.message_id, "channel": chunk.channel}
