"""An in-process Transport with faults on demand, for the transfer logic's tests.

Frames go through the event loop (never synchronously), a chunk's bytes inside its
frame (the hook sees whole frames), presence behaves like the
MQTT scheme (a JOIN is retained for later joiners; a dropped connection reads as a
LEAVE), and a `fault` hook sees every chunk and ack on its way and decides what
arrives: nothing, the frame, a changed frame, or several copies.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from flame.flamelet.dataplane.channel import Channel
from flame.flamelet.dataplane.config import ChannelSpec
from flame.flamelet.dataplane.settings import TransferLimits
from flame.flamelet.dataplane.transport import (
    Bytes,
    Endpoint,
    FrameSink,
    NotConnected,
    Transport,
)
from flame.transport.v1 import frame_pb2

Presence = frame_pb2.Presence
Fault = Callable[[frame_pb2.Frame], list[frame_pb2.Frame]]


def no_fault(frame: frame_pb2.Frame) -> list[frame_pb2.Frame]:
    return [frame]


def hand_over(sink: FrameSink, frame: frame_pb2.Frame) -> None:
    """Give `sink` a whole frame as transports do: a chunk's bytes apart."""
    data = b""
    if frame.HasField("chunk"):
        part = frame_pb2.Frame()
        part.CopyFrom(frame)
        data, frame = part.chunk.data, part
        part.chunk.ClearField("data")
    sink.frame_received(frame, data)


class LoopbackNetwork:
    """Connects loopback transports of one job, channel and group."""

    def __init__(self) -> None:
        self.transports: list[LoopbackTransport] = []
        self.fault: Fault = no_fault
        self.chunks_sent: Counter[int] = Counter()

    def transport(self, endpoint: Endpoint, sink: FrameSink) -> LoopbackTransport:
        return LoopbackTransport(self, endpoint, sink)

    def route(self, sender: LoopbackTransport, end_id: str, frame: frame_pb2.Frame) -> None:
        if frame.HasField("chunk"):
            self.chunks_sent[frame.chunk.sequence] += 1
        for target in self.transports:
            if target.connected and target.endpoint.end_id == end_id:
                for delivered in self.fault(frame):
                    target.deliver(delivered)

    def presence(self, sender: LoopbackTransport, presence: Presence) -> None:
        for target in self.transports:
            if target is not sender and target.connected and target.hears(sender.endpoint):
                target.deliver(frame_pb2.Frame(presence=presence))


class LoopbackTransport(Transport):
    def __init__(self, network: LoopbackNetwork, endpoint: Endpoint, sink: FrameSink) -> None:
        self.network = network
        self.endpoint = endpoint
        self.sink = sink
        self.connected = False
        self.joined = False

    def hears(self, other: Endpoint) -> bool:
        return other.role == self.endpoint.other_role and other.end_id != self.endpoint.end_id

    def deliver(self, frame: frame_pb2.Frame) -> None:
        copy = frame_pb2.Frame()
        copy.CopyFrom(frame)
        asyncio.get_running_loop().call_soon(self._arrive, copy)

    def _arrive(self, frame: frame_pb2.Frame) -> None:
        if self.connected:
            hand_over(self.sink, frame)

    async def connect(self) -> None:
        self.connected = True
        self.network.transports.append(self)
        self._hear_retained()

    async def announce(self, kind: Presence.Type.ValueType) -> None:
        self._check()
        self.joined = kind == Presence.TYPE_JOIN
        self.network.presence(self, self.endpoint.presence(kind))

    async def publish(self, end_id: str, frame: frame_pb2.Frame, data: Bytes = b"") -> None:
        self._check()
        await asyncio.sleep(0)  # A publish yields, as a real one may.
        whole = frame_pb2.Frame()
        whole.CopyFrom(frame)
        if whole.HasField("chunk"):
            whole.chunk.data = bytes(data)
        self.network.route(self, end_id, whole)

    async def close(self) -> None:
        self.connected = False
        self.network.transports.remove(self)

    async def abort(self) -> None:
        self.drop()
        self.network.transports.remove(self)

    def drop(self) -> None:
        """The connection breaks: peers see this end leave (its last will)."""
        self.connected = False
        if self.joined:
            self.network.presence(self, self.endpoint.presence(Presence.TYPE_LEAVE))

    def restore(self) -> None:
        """The connection is back: announce again, hear the others, resume."""
        self.connected = True
        self._hear_retained()
        if self.joined:
            self.network.presence(self, self.endpoint.presence(Presence.TYPE_JOIN))
        self.sink.connection_restored()

    def _hear_retained(self) -> None:
        for other in self.network.transports:
            if other.connected and other.joined and self.hears(other.endpoint):
                self.deliver(frame_pb2.Frame(presence=other.endpoint.presence(Presence.TYPE_JOIN)))

    def _check(self) -> None:
        if not self.connected:
            raise NotConnected("loopback connection dropped")


def endpoint(end_id: str, role: str, other_role: str) -> Endpoint:
    return Endpoint("job", "param-channel", "default", role, other_role, end_id)


async def open_channel(
    network: LoopbackNetwork, end_id: str, role: str, limits: TransferLimits
) -> tuple[Channel, LoopbackTransport]:
    other = "aggregator" if role == "trainer" else "trainer"
    spec = ChannelSpec("param-channel", role, other, "default", "mqtt", "")
    transports: list[LoopbackTransport] = []

    def make(e: Endpoint, sink: FrameSink) -> Transport:
        transports.append(network.transport(e, sink))
        return transports[-1]

    channel = Channel(spec, endpoint(end_id, role, other), make, limits)
    await channel.open()
    return channel, transports[0]
