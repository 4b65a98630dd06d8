"""The p2p transport: bridges send each other frames directly over gRPC.

For weights too large for a broker. Each bridge serves PeerService on a TCP port (a
`PeerHub`, shared by the bridge's p2p channels) and, per channel, registers its
address with a `Discovery` and lists the other role's ends. Every call carries the
caller's job, channel, group and end id as metadata (`x-flame-job-id`,
`x-flame-channel`, `x-flame-group`, `x-flame-end-id`); a call for another job,
channel or group, or from an end this one does not know, fails with
FAILED_PRECONDITION / PEER_UNKNOWN, and a frame that contradicts its call with
INVALID_ARGUMENT / FRAME_INVALID.

Presence: an end announces JOIN to every end the discovery lists, and ALIVE to its
ends every `alive_seconds`. It accepts an announcing end only if the discovery lists
it at the address it announced (listing again when it does not know it yet). An end
neither heard from nor answering for `dead_after_seconds` is gone: the sink sees it
LEAVE, as it would see a last will on MQTT. A LEAVE announcement removes it at once.

Data: chunks for one receiver travel on one TransferChunks stream, opened by the
sender; the receiver answers its acks on the same stream. Everything else (windows,
acknowledgements, FIFO order, duplicate suppression, corrupt messages) is the shared
outbox and inbox logic. When a stream drops with a message in flight, the sender asks
the receiver with GetTransferState how far it got and hands the answer to the
outbox twice: the first copy moves the acknowledged position, the second, a
duplicate acknowledgement, makes it resend from there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from flame.flamelet.dataplane.discovery import (
    Addresses,
    Discovery,
    DiscoveryRefused,
    DiscoveryUnavailable,
)
from flame.flamelet.dataplane.settings import TransferLimits
from flame.flamelet.dataplane.transport import Bytes, Endpoint, FrameSink, NotConnected, Transport
from flame.flamelet.servers import TRANSFER_CHUNKS_METHOD, peer_services
from flame.peer.v1 import peer_service_pb2 as pb
from flame.peer.v1 import peer_service_pb2_grpc
from flame.rpc.errors import FailedPrecondition, InvalidArgument
from flame.rpc.server import RunningServer, ServerOptions, start_server
from flame.rpc.tls import ClientTls, ServerTls
from flame.transport.v1 import frame_pb2
from flame.wire.chunkframes import encode_chunk, field_number, read_chunk_frame

__all__ = [
    "CHANNEL_KEY",
    "END_ID_KEY",
    "GROUP_KEY",
    "JOB_ID_KEY",
    "P2pTransport",
    "PeerHub",
    "PeerSettings",
    "p2p_transports",
]

_log = logging.getLogger(__name__)

Presence = frame_pb2.Presence
Context = Any
_Call = grpc.aio.StreamStreamCall[bytes, pb.TransferChunksResponse]

JOB_ID_KEY = "x-flame-job-id"
CHANNEL_KEY = "x-flame-channel"
GROUP_KEY = "x-flame-group"
END_ID_KEY = "x-flame-end-id"

_REQUEST_CHUNK_FIELD = field_number(pb.TransferChunksRequest, "chunk")
_WILDCARDS = frozenset({"0.0.0.0", "::", "[::]"})
# Room for a chunk's fields around its data.
_FRAME_OVERHEAD = 64 * 1024
# Seconds a stopping server lets calls finish; a leaving end's peers need none.
_GRACE_SECONDS = 0.5
# A sender asks how far a receiver got for this long after a stream dropped; the
# outbox's stall timeout takes over afterwards.
_RESUME_SECONDS = 60.0
# First and longest pause between attempts of a call that must succeed, in seconds.
_RETRY_DELAYS = (0.1, 2.0)
# Peers are dialled again quickly after they restart, not after gRPC's default
# backoff of up to two minutes.
_RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


@dataclass(frozen=True)
class PeerSettings:
    """Where a bridge serves PeerService, and the timings of p2p presence.

    Attributes:
        host: Interface to listen on.
        port: Port to listen on; 0 picks a free one.
        advertise: The address peers dial, `host` or `host:port`; by default
            `host` and the bound port. Required when `host` is a wildcard.
        tls: The server's certificate; peers are dialled with TLS when set.
        ca_file: The CA that signed the peers' certificates; `start_dataplane`
            defaults it to the control plane's.
        alive_seconds: Period of the ALIVE announcements to each end.
        dead_after_seconds: An end neither heard from nor answering for this long
            is gone.
        discover_seconds: Period of the discovery listings while no end is known.
        rediscover_seconds: Period of the listings once an end is known.
        call_timeout: Seconds an announcement, a state query or a chunk write may take.
    """

    host: str = "127.0.0.1"
    port: int = 0
    advertise: str = ""
    tls: ServerTls | None = None
    ca_file: Path | None = None
    alive_seconds: float = 2.0
    dead_after_seconds: float = 6.0
    discover_seconds: float = 1.0
    rediscover_seconds: float = 5.0
    call_timeout: float = 5.0

    def address(self, port: int) -> str:
        """The address peers dial, once the server is bound to `port`."""
        if _has_port(self.advertise):
            return self.advertise
        host = self.advertise or self.host
        return f"[{host}]:{port}" if ":" in host and host[0] != "[" else f"{host}:{port}"


def _has_port(address: str) -> bool:
    host, colon, port = address.rpartition(":")
    # A bare IPv6 address has colons too: its port follows the closing bracket.
    return bool(colon) and port.isdigit() and (":" not in host or host.endswith("]"))


def p2p_transports(hub: PeerHub) -> Callable[[Endpoint, FrameSink], P2pTransport]:
    """A transport factory: each end gets a transport served by `hub`."""

    def make(endpoint: Endpoint, sink: FrameSink) -> P2pTransport:
        return P2pTransport(endpoint, sink, hub)

    return make


class PeerHub:
    """One bridge's PeerService server, shared by its p2p channels.

    The server starts when the first channel connects and stops when the last one
    leaves; calls are routed to the channel's transport by their metadata.

    Args:
        discovery: How the bridge's ends register and find each other.
        settings: Address, TLS and timings.
        limits: The chunk size bounds the gRPC message size.

    Raises:
        ValueError: `settings` has TLS and no CA to verify the peers with, or
            listens on every interface and advertises no address.
    """

    def __init__(
        self, discovery: Discovery, settings: PeerSettings, limits: TransferLimits
    ) -> None:
        if settings.tls is not None and settings.ca_file is None:
            raise ValueError("p2p TLS needs the CA of the peers' certificates (ca_file)")
        if settings.host in _WILDCARDS and not settings.advertise:
            raise ValueError(f"peers cannot dial {settings.host}: set the advertised address")
        self.discovery = discovery
        self.settings = settings
        self.limits = limits
        self._max_message_bytes = limits.chunk_bytes + _FRAME_OVERHEAD
        self._server: RunningServer | None = None
        self._routes: dict[tuple[str, str], P2pTransport] = {}
        self._lock = asyncio.Lock()

    async def attach(self, transport: P2pTransport) -> str:
        """Route the calls of `transport`'s channel to it; the address peers dial.

        Raises:
            OSError: The server cannot be bound.
        """
        async with self._lock:
            if self._server is None:
                self._server = await start_server(
                    peer_services(PeerServicer(self)),
                    ServerOptions(
                        host=self.settings.host,
                        port=self.settings.port,
                        tls=self.settings.tls,
                        max_message_bytes=self._max_message_bytes,
                        grace_seconds=_GRACE_SECONDS,
                    ),
                )
                _log.info("p2p server listening", extra={"port": self._server.port})
            e = transport.endpoint
            self._routes[(e.job_id, e.channel)] = transport
            return self.settings.address(self._server.port)

    async def detach(self, transport: P2pTransport, *, graceful: bool) -> None:
        """Stop routing to `transport`; stop the server after the last one."""
        async with self._lock:
            e = transport.endpoint
            if self._routes.get((e.job_id, e.channel)) is transport:
                del self._routes[(e.job_id, e.channel)]
            if self._routes or self._server is None:
                return
            server, self._server = self._server, None
            if graceful:
                await server.stop()
            else:
                await server.server.stop(None)
            await self.discovery.close()

    def route(self, context: Context) -> tuple[P2pTransport, str]:
        """The transport a call is for, and the calling end's id.

        Raises:
            FailedPrecondition: PEER_UNKNOWN: no end of the call's job, channel and
                group is here, or the call names no end.
        """
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        job, channel = metadata.get(JOB_ID_KEY, ""), metadata.get(CHANNEL_KEY, "")
        caller = metadata.get(END_ID_KEY, "")
        transport = self._routes.get((job, channel))
        if (
            transport is None
            or transport.endpoint.group != metadata.get(GROUP_KEY)
            or not caller
            or caller == transport.endpoint.end_id
        ):
            raise peer_unknown("no end of this job, channel and group is here")
        return transport, caller

    def dial(self, address: str) -> grpc.aio.Channel:
        """A channel to the PeerService at `address`."""
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", self._max_message_bytes),
            ("grpc.max_send_message_length", self._max_message_bytes),
            *_RECONNECT_OPTIONS,
        ]
        if self.settings.tls is None:
            return grpc.aio.insecure_channel(address, options=options)
        credentials = ClientTls(ca_file=self.settings.ca_file).credentials()
        return grpc.aio.secure_channel(address, credentials, options=options)


class PeerServicer(peer_service_pb2_grpc.PeerServiceServicer):
    """PeerService for the channels of one bridge."""

    def __init__(self, hub: PeerHub) -> None:
        """Serve the transports attached to `hub`."""
        self._hub = hub

    async def AnnouncePresence(
        self, request: pb.AnnouncePresenceRequest, context: Context
    ) -> pb.AnnouncePresenceResponse:
        """Take a peer's presence; answer this end's."""
        transport, caller = self._hub.route(context)
        presence = await transport.presence_announced(caller, request)
        return pb.AnnouncePresenceResponse(presence=presence)

    async def TransferChunks(  # type: ignore[override]  # serialized requests, see above
        self, request_iterator: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[pb.TransferChunksResponse]:
        """Take a peer's chunks, as serialized requests (see `peer_method_handlers`);
        answer the acks of its messages."""
        transport, caller = self._hub.route(context)
        async for ack in transport.chunks_arriving(caller, request_iterator):
            yield pb.TransferChunksResponse(ack=ack)

    async def GetTransferState(
        self, request: pb.GetTransferStateRequest, context: Context
    ) -> pb.GetTransferStateResponse:
        """How much of a peer's message arrived."""
        transport, caller = self._hub.route(context)
        return pb.GetTransferStateResponse(ack=transport.transfer_state(caller, request))


def peer_unknown(why: str) -> FailedPrecondition:
    """A call from, or about, an end that is not known here."""
    return FailedPrecondition("PEER_UNKNOWN", why)


def frame_invalid(why: str) -> InvalidArgument:
    """A frame that contradicts the call it came on."""
    return InvalidArgument("FRAME_INVALID", why)


class P2pTransport(Transport):
    """Carries the frames of one end of one channel to its peers directly.

    Args:
        endpoint: The end this transport speaks for.
        sink: Receives frames, on the event loop.
        hub: The bridge's PeerService server and discovery.
    """

    def __init__(self, endpoint: Endpoint, sink: FrameSink, hub: PeerHub) -> None:
        self.endpoint = endpoint
        self.sink = sink
        self.hub = hub
        self.settings = hub.settings
        self.metadata = (
            (JOB_ID_KEY, endpoint.job_id),
            (CHANNEL_KEY, endpoint.channel),
            (GROUP_KEY, endpoint.group),
            (END_ID_KEY, endpoint.end_id),
        )
        self.address = ""
        self._peers: dict[str, _Peer] = {}
        self._dialling: set[str] = set()
        self._inbound: dict[str, _Inbound] = {}
        # The last ack sent to each sender: what GetTransferState answers.
        self._acks: dict[str, frame_pb2.Ack] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._listing: asyncio.Task[Addresses | None] | None = None
        self._listing_failed = False
        self._attached = False

    # --- Transport ---------------------------------------------------------------

    async def connect(self) -> None:
        self.address = await self.hub.attach(self)
        self._attached = True
        try:
            async with asyncio.timeout(self.hub.limits.connect_timeout):
                await self._register()
        except BaseException:
            await self._shut(graceful=False)
            raise

    async def announce(self, kind: Presence.Type.ValueType) -> None:
        if not self._attached:
            raise NotConnected("the channel is closed")
        if kind != Presence.TYPE_LEAVE:
            if not self._loops:
                self._loops = [
                    asyncio.create_task(self._discover_loop()),
                    asyncio.create_task(self._alive_loop()),
                ]
            return
        await self._stop_loops()
        peers = list(self._peers.values())
        timeout = min(self.settings.call_timeout, 2.0)
        await asyncio.gather(*(peer.announce(Presence.TYPE_LEAVE, timeout) for peer in peers))

    async def publish(self, end_id: str, frame: frame_pb2.Frame, data: Bytes = b"") -> None:
        if frame.HasField("chunk"):
            peer = self._peers.get(end_id)
            if peer is None:
                raise NotConnected(f"{end_id} is not a current end")
            await peer.link.send(frame.chunk, data)
        elif frame.HasField("ack"):
            ack = frame_pb2.Ack()
            ack.CopyFrom(frame.ack)
            self._acks[end_id] = ack
            inbound = self._inbound.get(end_id)
            if inbound is None:
                raise NotConnected(f"no stream from {end_id} is open")
            inbound.put(ack)
        else:
            raise ValueError("only chunk and ack frames are addressed to an end")

    async def close(self) -> None:
        if self._attached:
            await self.hub.discovery.unregister(self.endpoint)
        await self._shut(graceful=True)

    async def abort(self) -> None:
        await self._shut(graceful=False)

    # --- calls from peers (PeerServicer) ------------------------------------------

    async def presence_announced(
        self, caller: str, request: pb.AnnouncePresenceRequest
    ) -> Presence:
        """Apply a peer's announcement; this end's presence.

        Raises:
            FlameError: FRAME_INVALID for a presence that is not the caller's on
                this channel; PEER_UNKNOWN for an end the discovery does not list
                at the address it announced.
        """
        if not self._attached:
            raise peer_unknown("this end left")
        presence = request.presence
        self._check_presence(caller, presence)
        if presence.type == Presence.TYPE_LEAVE:
            await self._remove(caller, "it left")
            return self.endpoint.presence(Presence.TYPE_JOIN)
        peer = self._peers.get(caller)
        if peer is None or peer.address != request.address:
            peer = await self._accept(caller, presence.role, request.address)
        elif presence.type == Presence.TYPE_JOIN:
            # It announces itself again: it may have lost what was in flight.
            self.sink.frame_received(frame_pb2.Frame(presence=presence))
        peer.heard()
        return self.endpoint.presence(Presence.TYPE_JOIN)

    async def chunks_arriving(
        self, caller: str, requests: AsyncIterator[bytes]
    ) -> AsyncIterator[frame_pb2.Ack]:
        """Hand a peer's chunks to the sink; yield the acks for that peer.

        Raises:
            FlameError: PEER_UNKNOWN for an end that is not current, FRAME_INVALID
                for a chunk that is not the caller's on this channel.
        """
        peer = self._peers.get(caller)
        if peer is None:
            raise peer_unknown("announce this end first")
        replaced = self._inbound.get(caller)
        if replaced is not None:
            replaced.close()
        inbound = self._inbound[caller] = _Inbound()
        reader = asyncio.create_task(self._take_chunks(peer, requests, inbound))
        try:
            while (ack := await inbound.next_ack()) is not None:
                yield ack
            if inbound.error is not None:
                raise inbound.error
        finally:
            reader.cancel()
            if self._inbound.get(caller) is inbound:
                del self._inbound[caller]

    def transfer_state(self, caller: str, request: pb.GetTransferStateRequest) -> frame_pb2.Ack:
        """The last ack sent for `request`'s message, or one at 0 when there is none.

        Raises:
            FlameError: PEER_UNKNOWN when the caller asks for another sender or is
                not current.
        """
        if request.sender_id != caller or caller not in self._peers:
            raise peer_unknown("announce this end first")
        ack = self._acks.get(caller)
        if ack is not None and ack.message_id == request.message_id:
            return ack
        return frame_pb2.Ack(
            receiver_id=self.endpoint.end_id, sender_id=caller, message_id=request.message_id
        )

    # --- presence ------------------------------------------------------------------

    async def _register(self) -> None:
        delay = _RETRY_DELAYS[0]
        while True:
            try:
                await self.hub.discovery.register(self.endpoint, self.address)
                return
            except DiscoveryUnavailable as error:
                _log.info("p2p discovery unavailable: %s", error, extra=self._log_extra())
            await asyncio.sleep(delay)
            delay = min(2 * delay, _RETRY_DELAYS[1])

    async def _discover_loop(self) -> None:
        while True:
            listed = await self._list()
            if listed:
                await self._join(listed)
            s = self.settings
            await asyncio.sleep(s.rediscover_seconds if self._peers else s.discover_seconds)

    async def _join(self, listed: Addresses) -> None:
        new = {
            end_id: address
            for end_id, address in listed.items()
            if end_id != self.endpoint.end_id
            and end_id not in self._peers
            and end_id not in self._dialling
        }
        await asyncio.gather(*(self._dial(end_id, address) for end_id, address in new.items()))

    async def _dial(self, end_id: str, address: str) -> None:
        """Announce JOIN to a listed end; it becomes an end when it answers."""
        self._dialling.add(end_id)
        peer = _Peer(self, end_id, self.endpoint.other_role, address)
        try:
            answered = await peer.announce(Presence.TYPE_JOIN, self.settings.call_timeout)
        finally:
            self._dialling.discard(end_id)
        if answered and end_id not in self._peers and self._attached:
            self._peers[end_id] = peer
            self.sink.frame_received(frame_pb2.Frame(presence=answered))
        else:
            await peer.close()

    async def _accept(self, end_id: str, role: str, address: str) -> _Peer:
        """Make an announcing end current if the discovery lists it at `address`."""
        listed = await self._list()
        if listed is None or listed.get(end_id) != address:
            raise peer_unknown("the discovery does not list this end at this address")
        peer = self._peers.get(end_id)
        if peer is not None and peer.address != address:
            await self._remove(end_id, "it came back at another address")
        # Another call may have added it meanwhile.
        return self._peers.get(end_id) or self._add(end_id, role, address)

    def _add(self, end_id: str, role: str, address: str) -> _Peer:
        peer = self._peers[end_id] = _Peer(self, end_id, role, address)
        presence = Presence(
            type=Presence.TYPE_JOIN,
            end_id=end_id,
            role=role,
            channel=self.endpoint.channel,
            group=self.endpoint.group,
        )
        self.sink.frame_received(frame_pb2.Frame(presence=presence))
        return peer

    async def _remove(self, end_id: str, why: str) -> None:
        peer = self._peers.pop(end_id, None)
        if peer is None:
            return
        _log.info("p2p end gone: %s", why, extra={**self._log_extra(), "peer": end_id})
        inbound = self._inbound.pop(end_id, None)
        if inbound is not None:
            inbound.close()
        self._acks.pop(end_id, None)
        gone = Presence(
            type=Presence.TYPE_LEAVE,
            end_id=end_id,
            role=peer.role,
            channel=self.endpoint.channel,
            group=self.endpoint.group,
        )
        self.sink.frame_received(frame_pb2.Frame(presence=gone))
        await peer.close()

    async def _alive_loop(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.alive_seconds)
            # An ALIVE answered later than the next one is due is as good as lost.
            peers = list(self._peers.values())
            await asyncio.gather(
                *(peer.announce(Presence.TYPE_ALIVE, s.alive_seconds) for peer in peers)
            )
            now = asyncio.get_running_loop().time()
            for peer in list(self._peers.values()):
                if now - peer.heard_at > s.dead_after_seconds:
                    await self._remove(peer.end_id, f"silent for {s.dead_after_seconds} s")

    async def _list(self) -> Addresses | None:
        """The discovery's listing, or None when it failed; concurrent calls share one."""
        if self._listing is None or self._listing.done():
            self._listing = asyncio.create_task(self._fetch_listing())
        return await asyncio.shield(self._listing)

    async def _fetch_listing(self) -> Addresses | None:
        try:
            async with asyncio.timeout(self.settings.call_timeout):
                listed = await self.hub.discovery.peers(self.endpoint)
        except (DiscoveryUnavailable, DiscoveryRefused, TimeoutError) as error:
            if not self._listing_failed:
                _log.warning("p2p discovery failed: %s", error, extra=self._log_extra())
            self._listing_failed = True
            return None
        self._listing_failed = False
        return listed

    def _check_presence(self, caller: str, presence: Presence) -> None:
        e = self.endpoint
        if (presence.end_id, presence.channel, presence.group) != (caller, e.channel, e.group):
            raise frame_invalid("the presence is not the caller's on this channel and group")
        if presence.role != e.other_role:
            raise frame_invalid(f"ends of role {presence.role!r} are not heard here")
        if presence.type not in (Presence.TYPE_JOIN, Presence.TYPE_ALIVE, Presence.TYPE_LEAVE):
            raise frame_invalid("the presence has no type")

    # --- data ------------------------------------------------------------------------

    async def _take_chunks(
        self,
        peer: _Peer,
        requests: AsyncIterator[bytes],
        inbound: _Inbound,
    ) -> None:
        try:
            async for serialized in requests:
                try:
                    request, data = read_chunk_frame(serialized, pb.TransferChunksRequest, "chunk")
                except DecodeError:
                    inbound.error = frame_invalid("a request is no TransferChunksRequest")
                    break
                chunk = request.chunk
                if (chunk.sender_id, chunk.channel) != (peer.end_id, self.endpoint.channel):
                    inbound.error = frame_invalid("the chunk is not the caller's on this channel")
                    break
                peer.heard()
                self.sink.frame_received(frame_pb2.Frame(chunk=chunk), data)
        except grpc.RpcError as error:
            _log.debug("a chunk stream broke: %s", error, extra=self._log_extra())
        finally:
            inbound.close()

    # --- shutting down -------------------------------------------------------------

    async def _stop_loops(self) -> None:
        loops, self._loops = self._loops, []
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

    async def _shut(self, *, graceful: bool) -> None:
        if not self._attached:
            return
        self._attached = False
        await self._stop_loops()
        for inbound in self._inbound.values():
            inbound.close()
        peers, self._peers = list(self._peers.values()), {}
        await asyncio.gather(*(peer.close() for peer in peers))
        await self.hub.detach(self, graceful=graceful)

    def _log_extra(self) -> dict[str, str]:
        e = self.endpoint
        return {"job": e.job_id, "channel": e.channel, "end": e.end_id}


class _Inbound:
    """The acks owed on one peer's TransferChunks stream; None ends the stream."""

    def __init__(self) -> None:
        self._acks: asyncio.Queue[frame_pb2.Ack | None] = asyncio.Queue()
        self.error: InvalidArgument | None = None

    def put(self, ack: frame_pb2.Ack) -> None:
        self._acks.put_nowait(ack)

    def close(self) -> None:
        self._acks.put_nowait(None)

    async def next_ack(self) -> frame_pb2.Ack | None:
        return await self._acks.get()


class _Peer:
    """Another end of the channel: its address, channel, liveness and chunk stream."""

    def __init__(self, transport: P2pTransport, end_id: str, role: str, address: str) -> None:
        self.transport = transport
        self.end_id = end_id
        self.role = role
        self.address = address
        self.channel = transport.hub.dial(address)
        self.stub: peer_service_pb2_grpc.PeerServiceAsyncStub = (
            peer_service_pb2_grpc.PeerServiceStub(self.channel)
        )
        # TransferChunks requests go serialized by `encode_chunk`, not by protobuf.
        self.transfer_chunks = self.channel.stream_stream(
            TRANSFER_CHUNKS_METHOD,
            request_serializer=None,
            response_deserializer=pb.TransferChunksResponse.FromString,
        )
        self.heard_at = asyncio.get_running_loop().time()
        self.link = _Link(self)

    def heard(self) -> None:
        """The peer showed it is alive."""
        self.heard_at = asyncio.get_running_loop().time()

    async def announce(self, kind: Presence.Type.ValueType, timeout: float) -> Presence | None:
        """Announce `kind` to the peer; its presence, or None when it did not answer
        as the expected end."""
        t = self.transport
        request = pb.AnnouncePresenceRequest(presence=t.endpoint.presence(kind), address=t.address)
        try:
            response = await self.stub.AnnouncePresence(
                request, metadata=t.metadata, timeout=timeout
            )
        except grpc.RpcError as error:
            _log.debug("an announcement failed: %s", error, extra={"peer": self.end_id})
            return None
        answer, e = response.presence, t.endpoint
        if (answer.end_id, answer.role, answer.channel, answer.group) != (
            self.end_id,
            e.other_role,
            e.channel,
            e.group,
        ) or answer.type not in (Presence.TYPE_JOIN, Presence.TYPE_ALIVE):
            _log.warning("a peer answered as another end", extra={"address": self.address})
            return None
        self.heard()
        return answer

    async def close(self) -> None:
        """Stop the chunk stream and close the channel."""
        await self.link.close()
        await self.channel.close(None)


class _Link:
    """The TransferChunks stream to one peer, opened on the first chunk, and its
    resumption after it drops."""

    def __init__(self, peer: _Peer) -> None:
        self._peer = peer
        self._transport = peer.transport
        self._call: _Call | None = None
        self._reader: asyncio.Task[None] | None = None
        self._resuming: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # The message whose chunks were sent and whose completion was not seen.
        self._in_flight = ""

    async def send(self, chunk: frame_pb2.Chunk, data: Bytes) -> None:
        """Write one chunk, its bytes `data`, on the stream, opening it if needed.

        Raises:
            NotConnected: The stream dropped, or is being resumed.
        """
        if self._resuming is not None:
            raise NotConnected(f"resuming the stream to {self._peer.end_id}")
        async with self._lock:
            call = self._call or self._open()
            self._in_flight = chunk.message_id
            try:
                async with asyncio.timeout(self._transport.settings.call_timeout):
                    await call.write(encode_chunk(chunk, data, _REQUEST_CHUNK_FIELD))
            except (grpc.RpcError, asyncio.InvalidStateError, TimeoutError) as error:
                self._dropped(call)
                raise NotConnected(f"the stream to {self._peer.end_id} dropped") from error

    async def close(self) -> None:
        """Stop the stream and any resumption."""
        tasks = [task for task in (self._reader, self._resuming) if task is not None]
        self._resuming = None
        if self._call is not None:
            self._call.cancel()
            self._call = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _open(self) -> _Call:
        call: _Call = self._peer.transfer_chunks(None, metadata=self._transport.metadata)
        self._call = call
        self._reader = asyncio.create_task(self._read(call))
        return call

    async def _read(self, call: _Call) -> None:
        try:
            # Anything but a response is the end of the stream.
            while isinstance(response := await call.read(), pb.TransferChunksResponse):
                self._acked(response.ack)
        except grpc.RpcError as error:
            _log.info(
                "the chunk stream to a peer dropped: %s",
                error.code(),
                extra={"peer": self._peer.end_id},
            )
        self._dropped(call)

    def _acked(self, ack: frame_pb2.Ack) -> None:
        t = self._transport
        if (ack.receiver_id, ack.sender_id) != (self._peer.end_id, t.endpoint.end_id):
            _log.warning("dropped an ack about another transfer", extra={"peer": ack.receiver_id})
            return
        self._peer.heard()
        if ack.complete and ack.message_id == self._in_flight:
            self._in_flight = ""
        t.sink.frame_received(frame_pb2.Frame(ack=ack))

    def _dropped(self, call: _Call) -> None:
        if self._call is not call:
            return  # An older stream, already replaced.
        self._call = None
        call.cancel()
        if self._in_flight and self._resuming is None:
            self._resuming = asyncio.create_task(self._resume(self._in_flight))

    async def _resume(self, message_id: str) -> None:
        """Ask the receiver how far `message_id` got, then let the outbox go on."""
        t = self._transport
        request = pb.GetTransferStateRequest(sender_id=t.endpoint.end_id, message_id=message_id)
        try:
            async with asyncio.timeout(_RESUME_SECONDS):
                ack = await _retrying(
                    lambda: self._peer.stub.GetTransferState(
                        request, metadata=t.metadata, timeout=t.settings.call_timeout
                    )
                )
        except TimeoutError:
            _log.warning("could not resume a transfer", extra={"peer": self._peer.end_id})
            return
        finally:
            self._resuming = None
        _log.info(
            "resuming a transfer",
            extra={"peer": self._peer.end_id, "message_id": message_id, "at": ack.next_sequence},
        )
        self._acked(ack)
        if not ack.complete:
            # A repeated acknowledgement: resend from it, what was in flight is lost.
            self._acked(ack)


async def _retrying(
    call: Callable[[], Awaitable[pb.GetTransferStateResponse]],
) -> frame_pb2.Ack:
    delay = _RETRY_DELAYS[0]
    while True:
        try:
            return (await call()).ack
        except grpc.RpcError as error:
            _log.debug("GetTransferState failed: %s", error)
        await asyncio.sleep(delay)
        delay = min(2 * delay, _RETRY_DELAYS[1])
