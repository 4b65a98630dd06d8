"""A fake ChannelService with simulated peer ends, for testing the SDK's channels.

`FakeChannelService` is the servicer: it keeps, per channel, the ends there and the
messages each end "sent" (delivered by the test), and records what the SDK sends.
`FakeDataPlane` serves it on a Unix socket from a thread with its own event loop, so
that the SDK's blocking calls can run in the test's thread; its methods are the test's
controls and are safe to call from that thread.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from flame.dataplane.v1 import channel_pb2, channel_service_pb2, channel_service_pb2_grpc
from flame.flamelet.servers import channel_services
from flame.rpc.errors import FailedPrecondition, NotFound
from flame.rpc.server import RunningServer, ServerOptions, start_server
from flame.wire import encode_bytes

_T = TypeVar("_T")
Context = grpc.aio.ServicerContext[Any, Any]
# Small, so that every test message spans several chunks.
CHUNK_BYTES = 64 * 1024


@dataclass
class Sent:
    """A message the SDK sent, as the fake received it."""

    header: channel_pb2.MessageHeader
    data: bytes
    chunk_sizes: list[int]


@dataclass
class _Queued:
    sequence: int
    data: bytes


@dataclass
class _Channel:
    ends: dict[str, str] = field(default_factory=dict)  # end id -> role
    inbox: dict[str, deque[_Queued]] = field(default_factory=dict)


class FakeChannelService(channel_service_pb2_grpc.ChannelServiceServicer):
    """ChannelService of one task whose peers the test simulates."""

    def __init__(self, channels: Iterable[str], *, other_role: str = "aggregator") -> None:
        self.channels = {name: _Channel() for name in channels}
        self.other_role = other_role
        self.joined: list[str] = []
        self.left: list[str] = []
        self.sent: list[Sent] = []
        self._sequence = 0
        self._changed: asyncio.Condition | None = None
        self._watchers: list[asyncio.Queue[channel_service_pb2.WatchEndsResponse]] = []

    # Controls, run on the serving loop.

    async def add_end(self, channel: str, end_id: str) -> None:
        state = self.channels[channel]
        state.ends[end_id] = self.other_role
        state.inbox.setdefault(end_id, deque())
        await self._notify(channel, end_id, joined=True)

    async def remove_end(self, channel: str, end_id: str) -> None:
        del self.channels[channel].ends[end_id]
        await self._notify(channel, end_id, joined=False)

    async def deliver(self, channel: str, end_id: str, data: bytes) -> None:
        self._sequence += 1
        inbox = self.channels[channel].inbox.setdefault(end_id, deque())
        inbox.append(_Queued(self._sequence, data))
        await self._notify(channel, end_id, joined=None)

    def queued(self, channel: str) -> dict[str, int]:
        return {end: len(box) for end, box in self.channels[channel].inbox.items() if box}

    # ChannelService.

    async def JoinChannel(
        self, request: channel_service_pb2.JoinChannelRequest, context: Context
    ) -> channel_service_pb2.JoinChannelResponse:
        self._channel(request.channel)
        self.joined.append(request.channel)
        return channel_service_pb2.JoinChannelResponse(
            end_id="me", other_role=self.other_role, group="default", backend="mqtt"
        )

    async def LeaveChannel(
        self, request: channel_service_pb2.LeaveChannelRequest, context: Context
    ) -> channel_service_pb2.LeaveChannelResponse:
        self._joined(request.channel)
        self.joined.remove(request.channel)
        self.left.append(request.channel)
        return channel_service_pb2.LeaveChannelResponse()

    async def ListEnds(
        self, request: channel_service_pb2.ListEndsRequest, context: Context
    ) -> channel_service_pb2.ListEndsResponse:
        state = self._joined(request.channel)
        return channel_service_pb2.ListEndsResponse(
            ends=[_end(end_id, role) for end_id, role in state.ends.items()]
        )

    async def WatchEnds(
        self, request: channel_service_pb2.WatchEndsRequest, context: Context
    ) -> AsyncIterator[channel_service_pb2.WatchEndsResponse]:
        state = self._joined(request.channel)
        queue: asyncio.Queue[channel_service_pb2.WatchEndsResponse] = asyncio.Queue()
        self._watchers.append(queue)
        try:
            for end_id, role in state.ends.items():
                yield channel_service_pb2.WatchEndsResponse(end=_end(end_id, role), joined=True)
            while True:
                yield await queue.get()
        finally:
            self._watchers.remove(queue)

    async def SendMessage(
        self,
        request_iterator: AsyncIterator[channel_service_pb2.SendMessageRequest],
        context: Context,
    ) -> channel_service_pb2.SendMessageResponse:
        header: channel_pb2.MessageHeader | None = None
        chunks: list[bytes] = []
        async for request in request_iterator:
            if header is None:
                header = request.header
                self._check_targets(header)
            else:
                chunks.append(request.chunk)
        assert header is not None
        self.sent.append(Sent(header, b"".join(chunks), [len(chunk) for chunk in chunks]))
        targets = header.end_ids or list(self.channels[header.channel].ends)
        return channel_service_pb2.SendMessageResponse(message_id="m1", end_ids=targets)

    async def ReceiveMessage(
        self, request: channel_service_pb2.ReceiveMessageRequest, context: Context
    ) -> AsyncIterator[channel_service_pb2.ReceiveMessageResponse]:
        state = self._joined(request.channel)
        wanted = list(request.end_ids) or list(state.ends)
        for end_id in wanted:
            if end_id not in state.ends and not state.inbox.get(end_id):
                raise NotFound("END_NOT_FOUND", f"no end {end_id}", metadata={"end_id": end_id})
        found = await self._next_message(request, state, wanted)
        if found is None:
            return
        end_id, data = found
        header = channel_pb2.MessageHeader(
            channel=request.channel, end_ids=[end_id], total_size=len(data)
        )
        header.receive_time.GetCurrentTime()
        yield channel_service_pb2.ReceiveMessageResponse(header=header)
        for start in range(0, len(data), CHUNK_BYTES):
            yield channel_service_pb2.ReceiveMessageResponse(
                chunk=data[start : start + CHUNK_BYTES]
            )

    # Internals.

    async def _next_message(
        self,
        request: channel_service_pb2.ReceiveMessageRequest,
        state: _Channel,
        wanted: list[str],
    ) -> tuple[str, bytes] | None:
        async with self._condition():
            while True:
                heads = [(box[0].sequence, end) for end in wanted if (box := state.inbox.get(end))]
                if heads:
                    _, end_id = min(heads)
                    box = state.inbox[end_id]
                    return end_id, (box[0] if request.peek else box.popleft()).data
                if request.no_wait:
                    return None
                for end_id in wanted:
                    if end_id not in state.ends:
                        raise FailedPrecondition(
                            "END_LEFT", f"{end_id} left", metadata={"end_id": end_id}
                        )
                await self._condition().wait()

    def _condition(self) -> asyncio.Condition:
        # Made on first use, inside the serving loop.
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self, channel: str, end_id: str, *, joined: bool | None) -> None:
        if joined is not None:
            event = channel_service_pb2.WatchEndsResponse(
                end=_end(end_id, self.other_role), joined=joined
            )
            for queue in self._watchers:
                queue.put_nowait(event)
        async with self._condition():
            self._condition().notify_all()

    def _channel(self, name: str) -> _Channel:
        if name not in self.channels:
            raise NotFound("CHANNEL_NOT_FOUND", f"no channel {name}")
        return self.channels[name]

    def _joined(self, name: str) -> _Channel:
        state = self._channel(name)
        if name not in self.joined:
            raise FailedPrecondition("CHANNEL_NOT_JOINED", f"{name} is not joined")
        return state

    def _check_targets(self, header: channel_pb2.MessageHeader) -> None:
        state = self._joined(header.channel)
        for end_id in header.end_ids:
            if end_id not in state.ends:
                raise NotFound("END_NOT_FOUND", f"no end {end_id}", metadata={"end_id": end_id})


def _end(end_id: str, role: str) -> channel_pb2.End:
    return channel_pb2.End(end_id=end_id, role=role, join_time=timestamp_pb2.Timestamp(seconds=1))


async def serve(servicer: FakeChannelService, socket_path: Path) -> RunningServer:
    """Serve `servicer` on `socket_path` from the running loop."""
    options = ServerOptions(host=f"unix:{socket_path}", port=0, tls=None, grace_seconds=0.5)
    return await start_server(channel_services(servicer), options)


class FakeDataPlane:
    """A `FakeChannelService` served from its own thread, controlled from the test's."""

    def __init__(
        self,
        channels: Iterable[str],
        *,
        other_role: str = "aggregator",
        service: FakeChannelService | None = None,
    ) -> None:
        self.service = service or FakeChannelService(channels, other_role=other_role)
        self._folder = tempfile.TemporaryDirectory(prefix="flame-sdk-")
        self.socket_path = Path(self._folder.name) / "channel.sock"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = self._run(serve(self.service, self.socket_path))

    def add_end(self, channel: str, end_id: str) -> None:
        self._run(self.service.add_end(channel, end_id))

    def remove_end(self, channel: str, end_id: str) -> None:
        self._run(self.service.remove_end(channel, end_id))

    def deliver(self, channel: str, end_id: str, message: Mapping[Any, Any] | bytes) -> None:
        """Queue a message from `end_id`, as if it had arrived from that peer."""
        data = message if isinstance(message, bytes) else encode_bytes(message)
        self._run(self.service.deliver(channel, end_id, data))

    def later(self, seconds: float, control: Coroutine[Any, Any, None]) -> None:
        """Run a control coroutine of `service` after `seconds`, without waiting."""

        async def delayed() -> None:
            await asyncio.sleep(seconds)
            await control

        asyncio.run_coroutine_threadsafe(delayed(), self._loop)

    def stop(self) -> None:
        self._run(self._server.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._folder.cleanup()

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)
