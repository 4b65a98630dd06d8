"""The sending half of a channel: windowed, acknowledged, resumable transfers.

A message taken for delivery is held once (`Outgoing`) and sent to each of its
receivers by a `Transfer`. Transfers to one receiver run one after the other, in the
order they were taken, so a receiver completes its messages in FIFO order.

A transfer keeps at most `window_chunks` chunks sent beyond the receiver's last
acknowledgement. It goes back to the last acknowledged chunk (and the receiver
ignores the replays) whenever something may have been lost:

* this end's connection came back (`connection_restored`);
* the receiver announced itself again (`end_joined`: its connection came back);
* the receiver repeated its last acknowledgement (it saw a gap);
* nothing was acknowledged for `stall_seconds`.

A receiver that reports the message corrupt gets it again from the start, up to
`max_corrupt` times. A receiver that left gets `leave_grace_seconds` to come back
before its transfers are dropped, and a transfer that nothing acknowledged for
`progress_timeout_seconds` (a receiver that hangs, a broker gone for long) is
dropped too: every transfer ends.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from flame.flamelet.dataplane.settings import TransferLimits
from flame.flamelet.dataplane.transport import Bytes, Endpoint, NotConnected
from flame.transport.v1 import frame_pb2

__all__ = ["Outbox", "Outgoing", "Transfer"]

_log = logging.getLogger(__name__)

Publish = Callable[[str, frame_pb2.Frame, Bytes], Awaitable[None]]


@dataclass(eq=False)
class Outgoing:
    """One message taken for delivery, shared by its transfers.

    A message may be taken while its bytes still stream in from the role code
    (`streaming`): its transfers send each chunk as soon as it is whole, and the last
    chunk only once every byte is in and the digest is known (`finish`), so a
    receiver can never complete a message whose upload failed (`abandon`).

    Attributes:
        message_id: Sender-unique id.
        data: The message bytes, never modified; empty for a streaming message,
            which keeps its pieces as they came instead.
        digest: Their digest (`flame.wire.message_digest`); empty until `complete`.
        broadcast: Whether the message goes to every end.
        chunk_bytes: Size of its chunks.
        filled: How many bytes are in.
        complete: Every byte is in and `digest` is known.
        abandoned: The upload failed: the message must not be delivered.
    """

    message_id: str
    data: bytearray
    digest: str
    broadcast: bool
    chunk_bytes: int
    complete: bool = True
    size: int = -1
    filled: int = field(init=False)
    abandoned: bool = field(init=False, default=False)
    _transfers: list[Transfer] = field(init=False, default_factory=list)
    _ready: int = field(init=False)

    # A streaming message keeps the pieces as they came, not copied into `data`.
    _segments: list[Bytes] = field(init=False, default_factory=list)
    _offsets: list[int] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.data)
        self.filled = self.size if self.complete else 0
        self._ready = self.ready_frames()

    @classmethod
    def streaming(cls, message_id: str, size: int, broadcast: bool, chunk_bytes: int) -> Outgoing:
        """A message of `size` bytes still to be written in order (`write`)."""
        return cls(message_id, bytearray(), "", broadcast, chunk_bytes, complete=False, size=size)

    @property
    def total_chunks(self) -> int:
        """Number of chunks; none for an empty message."""
        return -(-self.size // self.chunk_bytes)

    def ready_frames(self) -> int:
        """How many frames can be sent now: the whole chunks in, but never the last
        one (which carries the digest) before the message is complete."""
        if self.complete:
            return max(self.total_chunks, 1)
        return max(min(self.filled // self.chunk_bytes, self.total_chunks - 1), 0)

    def write(self, chunk: Bytes) -> None:
        """Append the next bytes of a streaming message; kept, not copied.

        Raises:
            ValueError: They do not fit the announced size.
        """
        end = self.filled + len(chunk)
        if end > self.size:
            raise ValueError(f"more bytes than the size {self.size}")
        if chunk:
            self._segments.append(chunk)
            self._offsets.append(self.filled)
        self.filled = end
        if (ready := self.ready_frames()) != self._ready:
            self._ready = ready
            self._wake()

    def finish(self, digest: str) -> None:
        """Every byte is in: `digest` is their digest; the last chunk may go."""
        self.digest = digest
        self.complete = True
        self._ready = self.ready_frames()
        now = asyncio.get_running_loop().time()
        for transfer in self._transfers:
            # Waiting for the role code's bytes was no lack of progress.
            transfer.progressed_at = now
        self._wake()

    def abandon(self) -> None:
        """The upload failed: give up every transfer of the message."""
        self.abandoned = True
        self._wake()

    def piece(self, sequence: int) -> Bytes:
        """The bytes of chunk `sequence`: a piece as it came when it is one, no copy."""
        start = sequence * self.chunk_bytes
        end = min(start + self.chunk_bytes, self.size)
        if not self._segments:
            return bytes(memoryview(self.data)[start:end])
        index = bisect.bisect_right(self._offsets, start) - 1
        segment, offset = self._segments[index], self._offsets[index]
        if offset == start and len(segment) == end - start:
            return segment
        parts = []
        while start < end:
            segment, offset = self._segments[index], self._offsets[index]
            stop = min(end, offset + len(segment))
            parts.append(memoryview(segment)[start - offset : stop - offset])
            start, index = stop, index + 1
        return b"".join(parts)

    def attach(self, transfer: Transfer) -> None:
        """Wake `transfer` whenever more of the message can be sent."""
        if not self.complete and not self.abandoned:
            self._transfers.append(transfer)

    def _wake(self) -> None:
        for transfer in self._transfers:
            transfer.progress.set()
        if self.complete or self.abandoned:
            # Nothing more to wake them for; and no reference cycle keeps the bytes.
            self._transfers.clear()


class Transfer:
    """The delivery of one message to one receiver."""

    def __init__(self, message: Outgoing, receiver_id: str) -> None:
        self.message = message
        self.receiver_id = receiver_id
        self.acked = 0
        self.next = 0
        self.corrupt = 0
        self.progress = asyncio.Event()
        loop = asyncio.get_running_loop()
        self.delivered: asyncio.Future[bool] = loop.create_future()
        # When the receiver last acknowledged anything new (loop time).
        self.progressed_at = loop.time()
        message.attach(self)

    @property
    def frames(self) -> int:
        """Frames to send: an empty message still takes one, to announce it."""
        return max(self.message.total_chunks, 1)

    def rewind(self) -> None:
        """Resend from the last acknowledged chunk."""
        self.next = self.acked
        self.progress.set()

    def acknowledged(self, ack: frame_pb2.Ack) -> None:
        """Apply the receiver's acknowledgement."""
        if ack.complete:
            self.finish(True)
        elif ack.corrupt:
            self.corrupt += 1
            self.acked = 0
            self.progressed_at = asyncio.get_running_loop().time()
            self.rewind()
        elif ack.next_sequence > self.acked:
            self.acked = min(ack.next_sequence, self.frames)
            self.next = max(self.next, self.acked)
            self.progressed_at = asyncio.get_running_loop().time()
            self.progress.set()
        else:
            # The receiver repeats itself: it missed the chunk after this one.
            self.rewind()

    def finish(self, delivered: bool) -> None:
        """Settle the transfer: delivered, or given up."""
        if not self.delivered.done():
            self.delivered.set_result(delivered)
        self.progress.set()

    def frame(self, sender_id: str, channel: str, sequence: int) -> frame_pb2.Frame:
        """The chunk frame `sequence` of the message, without its bytes (`piece`)."""
        m = self.message
        frame = frame_pb2.Frame()
        chunk = frame.chunk
        chunk.sender_id = sender_id
        chunk.channel = channel
        chunk.message_id = m.message_id
        chunk.sequence = sequence
        chunk.total_chunks = m.total_chunks
        chunk.total_size = m.size
        chunk.digest = m.digest
        chunk.broadcast = m.broadcast
        return frame


class _Lane:
    """The transfers to one receiver, in order."""

    def __init__(self) -> None:
        self.queue: deque[Transfer] = deque()
        self.task: asyncio.Task[None] | None = None


class Outbox:
    """Transfers of one end's messages on one channel.

    Args:
        endpoint: The sending end.
        publish: Sends a frame to an end; raises `NotConnected` when it cannot.
        limits: Window, timings and retries.
    """

    def __init__(self, endpoint: Endpoint, publish: Publish, limits: TransferLimits) -> None:
        self._endpoint = endpoint
        self._publish = publish
        self._limits = limits
        self._lanes: dict[str, _Lane] = {}
        # Receivers that left, and when (loop time).
        self._away: dict[str, float] = {}

    def send(self, message: Outgoing, receivers: Iterable[str]) -> list[Transfer]:
        """Queue `message` for each receiver; returns the transfers, already running."""
        transfers = []
        for receiver in receivers:
            lane = self._lanes.setdefault(receiver, _Lane())
            transfer = Transfer(message, receiver)
            lane.queue.append(transfer)
            transfers.append(transfer)
            if lane.task is None:
                lane.task = asyncio.create_task(self._run(receiver, lane))
        return transfers

    def ack_received(self, ack: frame_pb2.Ack) -> None:
        """Apply an acknowledgement to the transfer it is about, if still current."""
        lane = self._lanes.get(ack.receiver_id)
        if lane and lane.queue and lane.queue[0].message.message_id == ack.message_id:
            lane.queue[0].acknowledged(ack)

    def connection_restored(self) -> None:
        """This end reconnected: what was in flight may be lost."""
        for lane in self._lanes.values():
            if lane.queue:
                lane.queue[0].rewind()

    def end_joined(self, end_id: str) -> None:
        """`end_id` announced itself: it is back, or reconnected and lost chunks."""
        self._away.pop(end_id, None)
        lane = self._lanes.get(end_id)
        if lane is not None and lane.queue:
            lane.queue[0].rewind()

    def end_left(self, end_id: str) -> None:
        """`end_id` left: stop sending, and wait a while for it to come back."""
        self._away[end_id] = asyncio.get_running_loop().time()
        lane = self._lanes.get(end_id)
        if lane is not None and lane.queue:
            lane.queue[0].progress.set()

    def pending(self) -> list[Transfer]:
        """The transfers not settled yet."""
        return [t for lane in self._lanes.values() for t in lane.queue]

    async def close(self) -> None:
        """Give up every transfer and stop."""
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for transfer in self.pending():
            transfer.finish(False)
        self._lanes.clear()

    async def _run(self, receiver: str, lane: _Lane) -> None:
        try:
            while lane.queue:
                transfer = lane.queue[0]
                transfer.finish(await self._deliver(transfer))
                lane.queue.popleft()
        finally:
            lane.task = None
            if not lane.queue and self._lanes.get(receiver) is lane:
                del self._lanes[receiver]

    async def _deliver(self, transfer: Transfer) -> bool:
        transfer.progressed_at = asyncio.get_running_loop().time()
        while not transfer.delivered.done():
            if transfer.message.abandoned:
                return False
            if reason := self._give_up(transfer):
                _log.warning("gave up a transfer: %s", reason, extra=self._where(transfer))
                return False
            transfer.progress.clear()
            if transfer.receiver_id not in self._away:
                await self._send_window(transfer)
            try:
                async with asyncio.timeout(self._limits.stall_seconds):
                    await transfer.progress.wait()
            except TimeoutError:
                if transfer.acked < transfer.message.ready_frames():
                    transfer.rewind()
                # Else every frame that can go was acknowledged: it waits for bytes.
        return transfer.delivered.result()

    def _give_up(self, transfer: Transfer) -> str:
        limits, now = self._limits, asyncio.get_running_loop().time()
        if transfer.corrupt > limits.max_corrupt:
            return f"the receiver found it corrupt {transfer.corrupt} times"
        away = self._away.get(transfer.receiver_id)
        if away is not None and now - away > limits.leave_grace_seconds:
            return "the receiver left and did not come back"
        if (
            transfer.message.complete
            and now - transfer.progressed_at > limits.progress_timeout_seconds
        ):
            return f"nothing was acknowledged for {limits.progress_timeout_seconds} s"
        return ""

    async def _send_window(self, transfer: Transfer) -> None:
        e = self._endpoint
        message = transfer.message
        while (
            transfer.next < message.ready_frames()
            and not message.abandoned
            and transfer.next - transfer.acked < self._limits.window_chunks
            and not transfer.delivered.done()
        ):
            sequence = transfer.next
            # Moved before the await: a rewind meanwhile must not be undone.
            transfer.next += 1
            try:
                await self._publish(
                    transfer.receiver_id,
                    transfer.frame(e.end_id, e.channel, sequence),
                    message.piece(sequence),
                )
            except NotConnected:
                # Not sent; connection_restored() rewinds and wakes the transfer.
                transfer.next = min(transfer.next, sequence)
                return

    def _where(self, transfer: Transfer) -> dict[str, str]:
        return {
            "channel": self._endpoint.channel,
            "receiver": transfer.receiver_id,
            "message_id": transfer.message.message_id,
        }
