"""The seam between the channel logic and a wire: MQTT (`mqtt`) or p2p gRPC (`p2p`).

A `Transport` carries `flame.transport.v1.Frame`s for ONE end of ONE channel: it
announces the end's presence to the other ends of the same job, channel and group,
sends chunk and ack frames to one end, and hands every frame it receives to its
`FrameSink`. Everything above it (reassembly, acknowledgements, resume, the ends) is
shared by every transport, so a p2p transport only moves frames.

A transport reports an end that vanished (a last will, a dropped stream) as a
`Presence` frame of type LEAVE, so the sink sees one vocabulary whatever the wire.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from flame.transport.v1 import frame_pb2

__all__ = ["Bytes", "Endpoint", "FrameSink", "NotConnected", "Transport", "TransportFactory"]

# The bytes of a chunk, as they are at hand: never copied just to change their type.
Bytes = bytes | bytearray | memoryview


@dataclass(frozen=True)
class Endpoint:
    """Who a transport speaks for: one task on one channel.

    Attributes:
        job_id: The job; no frame ever crosses jobs.
        channel: Channel name.
        group: The task's group on the channel; no frame ever crosses groups.
        role: The task's role.
        other_role: The role of the task's ends (its own role on a self-loop).
        end_id: The task's id.
    """

    job_id: str
    channel: str
    group: str
    role: str
    other_role: str
    end_id: str

    def presence(self, kind: frame_pb2.Presence.Type.ValueType) -> frame_pb2.Presence:
        """This end's presence frame of type `kind`."""
        return frame_pb2.Presence(
            type=kind, end_id=self.end_id, role=self.role, channel=self.channel, group=self.group
        )


class FrameSink(Protocol):
    """Where a transport delivers what it receives; called on the event loop."""

    def frame_received(self, frame: frame_pb2.Frame, data: Bytes = b"") -> None:
        """A well-formed frame arrived for this end, or an end's presence changed.

        A chunk's bytes come as `data`, out of the frame (whose `chunk.data` is empty).
        """

    def connection_restored(self) -> None:
        """The transport (re)connected, re-subscribed and re-announced this end.

        Frames sent while it was down may be lost: unacknowledged transfers resume.
        """


class NotConnected(ConnectionError):
    """The transport cannot send now; it reconnects on its own and says so."""


class Transport(ABC):
    """Carries frames for one end of one channel."""

    @abstractmethod
    async def connect(self) -> None:
        """Connect, and start receiving the frames addressed to this end.

        Raises:
            ConnectionError: The first connection failed or was refused.
            TimeoutError: It did not succeed within the transport's timeout.
        """

    @abstractmethod
    async def announce(self, kind: frame_pb2.Presence.Type.ValueType) -> None:
        """Announce this end: JOIN (repeated after every reconnection) or LEAVE.

        Raises:
            NotConnected: The announcement cannot be sent now.
        """

    @abstractmethod
    async def publish(self, end_id: str, frame: frame_pb2.Frame, data: Bytes = b"") -> None:
        """Send a chunk or ack frame to `end_id`; a chunk's bytes are `data`, kept out
        of the frame so that they are copied once, into the frame on the wire.

        Waits while too many bytes are on their way (backpressure); returns once the
        frame is handed to the network, not once it arrived.

        Raises:
            NotConnected: The frame cannot be sent now; wait for `connection_restored`.
        """

    @abstractmethod
    async def close(self) -> None:
        """Disconnect gracefully; announce LEAVE first to be seen leaving."""

    @abstractmethod
    async def abort(self) -> None:
        """Drop the connection with no goodbye, as if the process died.

        The other ends learn it the way they learn of a crash (the MQTT last will).
        """


TransportFactory = Callable[[Endpoint, FrameSink], Transport]
