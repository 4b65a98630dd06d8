"""ChannelService over the bridge: parse requests, call the channels, stream bytes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from flame.dataplane.v1 import channel_pb2, channel_service_pb2, channel_service_pb2_grpc
from flame.flamelet.dataplane import errors
from flame.flamelet.dataplane.bridge import Bridge
from flame.flamelet.dataplane.channel import Channel
from flame.flamelet.dataplane.ends import EndInfo
from flame.flamelet.dataplane.heap import trim_heap
from flame.flamelet.dataplane.inbox import Delivered
from flame.flamelet.dataplane.outbox import Outgoing, Transfer
from flame.flamelet.dataplane.transport import Bytes
from flame.wire.chunks import new_digest
from flame.wire.shared import SharedFileError, map_file, shared_file_fits, write_file

__all__ = ["ChannelServicer"]

pb = channel_service_pb2
# A message this large leaves a heap worth trimming once freed.
_TRIM_BYTES = 16 * 1024 * 1024
# Deadlines this far away are no deadline at all.
_NO_DEADLINE_SECONDS = 1e8


class ChannelServicer(channel_service_pb2_grpc.ChannelServiceServicer):
    """Serves ChannelService to the role code from a bridge's channels."""

    def __init__(self, bridge: Bridge) -> None:
        """Serve the channels of `bridge`; messages may also pass as files of its
        shared folder (see `flame.wire.shared`)."""
        self._bridge = bridge
        self._shared_folder = bridge.shared_folder

    async def JoinChannel(
        self, request: pb.JoinChannelRequest, context: Any
    ) -> pb.JoinChannelResponse:
        """Join the channel (once) and describe this task's end on it."""
        channel = await self._bridge.join(request.channel)
        return pb.JoinChannelResponse(
            end_id=channel.endpoint.end_id,
            other_role=channel.endpoint.other_role,
            group=channel.endpoint.group,
            backend=channel.spec.backend,
            shared_folder=str(self._shared_folder or ""),
        )

    async def LeaveChannel(
        self, request: pb.LeaveChannelRequest, context: Any
    ) -> pb.LeaveChannelResponse:
        """Deliver what is pending (within the deadline), then leave."""
        deadline = _deadline(context)
        # Keep a tenth of the caller's time to announce the leave and answer.
        await self._bridge.leave(
            request.channel, timeout=None if deadline is None else deadline * 0.9
        )
        return pb.LeaveChannelResponse()

    async def ListEnds(self, request: pb.ListEndsRequest, context: Any) -> pb.ListEndsResponse:
        """The current ends of a joined channel."""
        channel = self._bridge.joined(request.channel)
        return pb.ListEndsResponse(ends=[_end(end) for end in channel.ends()])

    async def WatchEnds(
        self, request: pb.WatchEndsRequest, context: Any
    ) -> AsyncIterator[pb.WatchEndsResponse]:
        """The current ends, then every change, until the channel is left."""
        channel = self._bridge.joined(request.channel)
        with channel.membership.watch() as changes:
            while (change := await changes.get()) is not None:
                yield pb.WatchEndsResponse(end=_end(change.end), joined=change.joined)

    async def SendMessage(
        self, request_iterator: AsyncIterator[pb.SendMessageRequest], context: Any
    ) -> pb.SendMessageResponse:
        """Take one message (header, then chunks) for delivery."""
        requests = aiter(request_iterator)
        header = await _header(requests)
        channel = self._bridge.joined(header.channel)
        receivers = channel.receivers(header.end_ids, header.broadcast)
        size = self._checked_size(header.total_size)
        message_id = header.message_id or uuid.uuid4().hex
        channel.check_message_id(message_id)
        budget = self._bridge.budget
        # Wait for room before reading any byte: the client's stream then backs up.
        await budget.acquire(size)
        try:
            # The transfers start at once and send each chunk as soon as it is in;
            # the last one waits for every byte and the digest (see `Outgoing`).
            message = Outgoing.streaming(
                message_id, size, header.broadcast, self._bridge.limits.chunk_bytes
            )
            transfers = channel.send(message, receivers)
        except BaseException:
            budget.release(size)
            raise
        try:
            pieces = (
                self._shared_pieces(header, requests) if header.shared_file else _chunks(requests)
            )
            await _body(pieces, message, header.digest)
        finally:
            _release_when_settled(transfers, lambda: _released(budget.release, size))
        return pb.SendMessageResponse(message_id=message_id, end_ids=receivers)

    async def ReceiveMessage(
        self, request: pb.ReceiveMessageRequest, context: Any
    ) -> AsyncIterator[pb.ReceiveMessageResponse]:
        """The next complete message: its header, then its bytes in chunks."""
        channel = self._bridge.joined(request.channel)
        senders = list(dict.fromkeys(request.end_ids)) or None
        try:
            message = await channel.receive(
                senders, no_wait=request.no_wait, peek=request.peek, timeout=_deadline(context)
            )
        except TimeoutError:
            raise errors.DeadlineExceeded(
                "DEADLINE_EXCEEDED", "no message arrived before the deadline"
            ) from None
        if message is None:
            return
        folder = self._shared_folder if request.accept_shared_file else None
        responses = (
            _hand_over(channel, message, request.peek, folder)
            if folder is not None and shared_file_fits(folder, len(message.data))
            else _stream(channel, message, request.peek, self._bridge.limits.receive_chunk_bytes)
        )
        async for response in responses:
            yield response
        if not request.peek and len(message.data) >= _TRIM_BYTES:
            del message
            trim_heap()

    async def _shared_pieces(
        self, header: channel_pb2.MessageHeader, requests: AsyncIterator[pb.SendMessageRequest]
    ) -> AsyncIterator[memoryview]:
        """The bytes of the file a SendMessage header names, in chunk-sized pieces."""
        if self._shared_folder is None:
            raise errors.message_invalid("this data plane takes no shared files")
        try:
            data = map_file(
                header.shared_file, header.total_size, folder=self._shared_folder, writable=False
            )
        except SharedFileError as exc:
            raise errors.message_invalid(str(exc)) from None
        piece_bytes = self._bridge.limits.chunk_bytes
        taken = 0
        async for written in _written(requests, len(data)):
            # Whole pieces only while the caller writes: the chunks stay views.
            ready = written if written == len(data) else written - written % piece_bytes
            async for piece in _pieces(data[taken:ready], piece_bytes):
                yield piece
            taken = ready
        async for piece in _pieces(data[taken:], piece_bytes):
            yield piece

    def _checked_size(self, size: int) -> int:
        limit = self._bridge.limits.max_message_bytes
        if size < 0:
            raise errors.message_invalid(f"total_size {size} is negative")
        if size > limit:
            raise errors.message_too_large(size, limit)
        return size


async def _header(requests: AsyncIterator[pb.SendMessageRequest]) -> channel_pb2.MessageHeader:
    first = await anext(requests, None)
    if first is None or not first.HasField("header"):
        raise errors.message_invalid("the stream must open with a header")
    return first.header


async def _chunks(requests: AsyncIterator[pb.SendMessageRequest]) -> AsyncIterator[bytes]:
    """The chunks that follow the header of a SendMessage stream."""
    async for request in requests:
        if not request.HasField("chunk"):
            raise errors.message_invalid("only the first message of the stream is a header")
        yield request.chunk


async def _written(requests: AsyncIterator[pb.SendMessageRequest], size: int) -> AsyncIterator[int]:
    """How far the caller has written its shared file, as it says so."""
    written = 0
    async for request in requests:
        if request.WhichOneof("content") != "shared_file_written":
            raise errors.message_invalid(
                "only shared_file_written follows a header naming a shared file"
            )
        if not written <= request.shared_file_written <= size:
            raise errors.message_invalid(
                f"shared_file_written {request.shared_file_written} goes back or past {size} bytes"
            )
        written = request.shared_file_written
        yield written


async def _pieces(data: memoryview, piece_bytes: int) -> AsyncIterator[memoryview]:
    """`data` in pieces of `piece_bytes`, letting the transfers run between them."""
    for offset in range(0, len(data), piece_bytes):
        yield data[offset : offset + piece_bytes]
        # Sends the chunks already whole while the next piece is hashed.
        await asyncio.sleep(0)


async def _body(pieces: AsyncIterator[Bytes], message: Outgoing, announced: str) -> None:
    """Write the pieces into `message` as they come, hashing them; complete it at the
    end, or abandon it (its transfers then give up) when the stream is invalid or
    breaks."""
    hasher = new_digest()
    size = message.size
    try:
        async for chunk in pieces:
            if message.filled + len(chunk) > size:
                raise errors.message_invalid(f"more bytes than the total_size {size}")
            message.write(chunk)
            hasher.update(chunk)
        if message.filled != size:
            raise errors.message_invalid(f"{message.filled} bytes streamed, total_size says {size}")
        digest = hasher.hexdigest()
        if announced and announced.lower() != digest:
            raise errors.message_invalid("the bytes do not match the header's digest")
    except BaseException:
        message.abandon()
        raise
    message.finish(digest)


async def _stream(
    channel: Channel, message: Delivered, peek: bool, chunk_bytes: int
) -> AsyncIterator[pb.ReceiveMessageResponse]:
    # The message leaves the queue before it is streamed (unless peeked), so that
    # two receivers never get the same message; it goes back if the stream breaks.
    sent = False
    try:
        yield pb.ReceiveMessageResponse(header=_message_header(channel.name, message))
        view = memoryview(message.data)
        for offset in range(0, len(view), chunk_bytes):
            yield pb.ReceiveMessageResponse(chunk=bytes(view[offset : offset + chunk_bytes]))
        sent = True
    finally:
        if not sent and not peek:
            channel.put_back(message)


async def _hand_over(
    channel: Channel, message: Delivered, peek: bool, folder: Path
) -> AsyncIterator[pb.ReceiveMessageResponse]:
    """`_stream`, the bytes in a file of `folder` that the caller takes: the file they
    were reassembled into, newly named, or else a copy."""
    if message.shared is not None:
        path = message.shared.name()
    else:
        path = await asyncio.to_thread(write_file, folder, [message.data])
    header = _message_header(channel.name, message)
    header.shared_file = str(path)
    sent = False
    try:
        yield pb.ReceiveMessageResponse(header=header)
        sent = True
    finally:
        if not sent:
            path.unlink(missing_ok=True)
            if not peek:
                channel.put_back(message)


def _released(release: Callable[[int], None], size: int) -> None:
    release(size)
    if size >= _TRIM_BYTES:
        trim_heap()


def _release_when_settled(transfers: Sequence[Transfer], release: Callable[[], None]) -> None:
    if not transfers:
        release()
        return
    remaining = len(transfers)

    def settled(_: asyncio.Future[bool]) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            release()

    for transfer in transfers:
        transfer.delivered.add_done_callback(settled)


def _deadline(context: Any) -> float | None:
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_SECONDS:
        return None
    return float(remaining)


def _end(end: EndInfo) -> channel_pb2.End:
    return channel_pb2.End(end_id=end.end_id, role=end.role, join_time=_timestamp(end.join_time))


def _message_header(channel: str, message: Delivered) -> channel_pb2.MessageHeader:
    return channel_pb2.MessageHeader(
        channel=channel,
        message_id=message.message_id,
        end_ids=[message.sender_id],
        broadcast=message.broadcast,
        total_size=len(message.data),
        digest=message.digest,
        receive_time=_timestamp(message.receive_time),
    )


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp
