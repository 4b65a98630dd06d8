"""The MQTT transport: one paho client per end and channel.

Each joined channel gets its own connection because MQTT gives a connection exactly
one last will, and the will is what tells the other ends that this end died: it
empties this end's retained presence, which removes the retained JOIN for newcomers
and reaches every current subscriber as an empty presence, read as a LEAVE. A
graceful leave publishes a LEAVE frame on the `leave/` topic and empties the
retained presence too.

paho's own network thread does the socket I/O and reconnects with backoff; every
callback is handed to the event loop, which alone holds the transport's state. All
frames travel at QoS 1 with a clean session: the transfers above resume what a
dropped connection lost, so the broker keeps no state for a bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

import paho.mqtt.client as mqtt
from google.protobuf.message import DecodeError
from paho.mqtt.enums import CallbackAPIVersion

from flame.flamelet.dataplane.settings import BrokerSettings, MqttProtocol, TransferLimits
from flame.flamelet.dataplane.topics import ChannelTopics, TopicKind
from flame.flamelet.dataplane.transport import Bytes, Endpoint, FrameSink, NotConnected, Transport
from flame.transport.v1 import frame_pb2
from flame.wire.chunkframes import encode_chunk, field_number, read_chunk_frame

__all__ = ["MqttTransport", "mqtt_transports"]

_log = logging.getLogger(__name__)

Presence = frame_pb2.Presence
_QOS = 1
_FRAME_CHUNK_FIELD = field_number(frame_pb2.Frame, "chunk")
# paho doubles its reconnect delay from the first to the second value, in seconds.
_RECONNECT_DELAYS = (1, 8)
_STOP_SECONDS = 5.0


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # Acks and presences are small: Nagle's algorithm would hold each for a
    # delayed ACK of the broker, about 40 ms.
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def mqtt_transports(
    settings: Callable[[Endpoint], BrokerSettings], limits: TransferLimits
) -> Callable[[Endpoint, FrameSink], MqttTransport]:
    """A transport factory: each end gets a client for the broker `settings` names."""

    def make(endpoint: Endpoint, sink: FrameSink) -> MqttTransport:
        return MqttTransport(endpoint, sink, settings(endpoint), limits=limits)

    return make


class MqttTransport(Transport):
    """Carries the frames of one end of one channel through an MQTT broker.

    Args:
        endpoint: The end this transport speaks for.
        sink: Receives frames and reconnection notices, on the event loop.
        settings: The broker.
        limits: Connect timeout and publish window.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        sink: FrameSink,
        settings: BrokerSettings,
        *,
        limits: TransferLimits,
    ) -> None:
        self._endpoint = endpoint
        self._sink = sink
        self._settings = settings
        self._limits = limits
        self._topics = ChannelTopics(endpoint)
        self._loop = asyncio.get_running_loop()
        self._first_connection: asyncio.Future[None] = self._loop.create_future()
        self._connected = False
        self._joined = False
        # Bytes handed to paho per message id until the broker acknowledges them.
        self._unacked: dict[int, int] = {}
        self._unacked_bytes = 0
        self._window_moved = asyncio.Event()
        self._client = self._make_client()

    async def connect(self) -> None:
        s = self._settings
        clean_start: Any = (
            True if s.protocol is MqttProtocol.V5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY
        )
        self._client.connect_async(s.host, s.port, s.keepalive, clean_start=clean_start)
        self._client.loop_start()
        try:
            async with asyncio.timeout(self._limits.connect_timeout):
                await self._first_connection
        except BaseException:
            await self._stop_thread()
            raise

    async def announce(self, kind: Presence.Type.ValueType) -> None:
        if kind == Presence.TYPE_LEAVE:
            self._joined = False
            leave = frame_pb2.Frame(presence=self._endpoint.presence(Presence.TYPE_LEAVE))
            await self._publish(self._topics.own_leave, leave.SerializeToString())
            await self._publish(self._topics.own_presence, b"", retain=True)
            return
        self._joined = True
        await self._publish(self._topics.own_presence, self._join_payload(), retain=True)

    async def publish(self, end_id: str, frame: frame_pb2.Frame, data: Bytes = b"") -> None:
        if frame.HasField("chunk"):
            topic = self._topics.data(end_id)
            payload = encode_chunk(frame.chunk, data, _FRAME_CHUNK_FIELD)
        elif frame.HasField("ack"):
            topic, payload = self._topics.ack(end_id), frame.SerializeToString()
        else:
            raise ValueError("only chunk and ack frames are addressed to an end")
        await self._publish(topic, payload)

    async def close(self) -> None:
        # DISCONNECT follows whatever is queued, so a LEAVE announced just before
        # reaches the broker first; and no will is published.
        self._client.disconnect()
        await self._stop_thread()

    async def abort(self) -> None:
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                # Closes the TCP stream at once, before paho could say goodbye.
                sock.shutdown(socket.SHUT_RDWR)
        # Stops paho from reconnecting; its DISCONNECT can no longer be sent.
        self._client.disconnect()
        await self._stop_thread()

    # --- sending ------------------------------------------------------------

    async def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        await self._wait_for_window(len(payload))
        info = self._client.publish(topic, payload, qos=_QOS, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            # paho keeps a QoS 1 message and sends it after reconnecting; the
            # transfers resend anyway, so it is only a duplicate the receiver drops.
            raise NotConnected(f"cannot publish to {topic}: {mqtt.error_string(info.rc)}")
        self._unacked[info.mid] = len(payload)
        self._unacked_bytes += len(payload)

    async def _wait_for_window(self, size: int) -> None:
        # One frame always fits, so a frame larger than the window still goes.
        limit = self._limits.publish_window_bytes
        try:
            async with asyncio.timeout(2 * self._settings.keepalive):
                while (
                    self._connected and self._unacked_bytes and self._unacked_bytes + size > limit
                ):
                    self._window_moved.clear()
                    await self._window_moved.wait()
        except TimeoutError:
            raise NotConnected("the broker stopped acknowledging") from None
        if not self._connected:
            raise NotConnected("not connected to the broker")

    def _join_payload(self) -> bytes:
        return frame_pb2.Frame(
            presence=self._endpoint.presence(Presence.TYPE_JOIN)
        ).SerializeToString()

    # --- paho callbacks: on paho's thread, handed to the loop ---------------

    def _make_client(self) -> mqtt.Client:
        s, e = self._settings, self._endpoint
        v5 = s.protocol is MqttProtocol.V5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"flame-{e.job_id}-{e.channel}-{e.end_id}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
        )
        if s.username:
            client.username_pw_set(s.username, s.password)
        if s.tls_ca_file is not None:
            client.tls_set(ca_certs=str(s.tls_ca_file))
        client.will_set(self._topics.own_presence, b"", qos=_QOS, retain=True)
        client.reconnect_delay_set(*_RECONNECT_DELAYS)
        # The publish window, not paho's message count, bounds what is in flight.
        client.max_inflight_messages_set(0)
        client.on_socket_open = _no_delay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self._post(self._refused, str(reason))
        else:
            self._post(self._connection_up)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._post(self._connection_down, str(reason))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        self._post(self._acknowledged, mid)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        decoded = self._decode(message.topic, message.payload)
        if decoded is not None:
            self._post(self._sink.frame_received, *decoded)

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        # A closed loop means the bridge is gone: nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    # --- on the loop ---------------------------------------------------------

    def _connection_up(self) -> None:
        self._connected = True
        # Subscribe, then announce: the broker handles both in order, so an end that
        # sees the JOIN and sends at once finds the subscription in place.
        self._client.subscribe([(f, _QOS) for f in self._topics.subscriptions()])
        if self._joined:
            self._client.publish(self._topics.own_presence, self._join_payload(), _QOS, retain=True)
        if self._first_connection.done():
            _log.info("reconnected to the broker", extra=self._log_extra())
            self._sink.connection_restored()
        else:
            self._first_connection.set_result(None)

    def _connection_down(self, reason: str) -> None:
        if self._connected:
            _log.warning(
                "lost the broker connection", extra={**self._log_extra(), "reason": reason}
            )
        self._connected = False
        # paho resends what was unacknowledged by itself; that is not ours to count.
        self._unacked.clear()
        self._unacked_bytes = 0
        self._window_moved.set()

    def _refused(self, reason: str) -> None:
        if not self._first_connection.done():
            self._first_connection.set_exception(
                ConnectionRefusedError(f"the broker refused the connection: {reason}")
            )
        else:
            _log.warning(
                "the broker refused a reconnection", extra={**self._log_extra(), "reason": reason}
            )

    def _acknowledged(self, mid: int) -> None:
        self._unacked_bytes -= self._unacked.pop(mid, 0)
        self._window_moved.set()

    async def _stop_thread(self) -> None:
        self._connected = False
        self._window_moved.set()
        try:
            async with asyncio.timeout(_STOP_SECONDS):
                await asyncio.to_thread(self._client.loop_stop)
        except TimeoutError:
            _log.warning("paho's network thread did not stop", extra=self._log_extra())

    def _decode(
        self, topic: str, payload: bytes | bytearray
    ) -> tuple[frame_pb2.Frame, memoryview] | None:
        """The frame on `topic`, and a chunk's bytes as a view of `payload`."""
        parsed = self._topics.parse(topic)
        if parsed is None:
            # A broker may misroute: amqtt 0.12 sends a new client the retained
            # messages of other clients' subscriptions.
            _log.warning(
                "dropped a message on an unexpected topic",
                extra={**self._log_extra(), "topic": topic},
            )
            return None
        kind, role, end_id = parsed
        if kind == "presence" and end_id == self._endpoint.end_id:
            return None  # Our own presence, seen on a self-loop channel.
        if kind == "presence" and not payload:
            return frame_pb2.Frame(presence=self._gone(role, end_id)), memoryview(b"")
        try:
            # upb parses any buffer; the stub only names bytes.
            frame, data = read_chunk_frame(cast(bytes, payload), frame_pb2.Frame, "chunk")
        except DecodeError:
            frame = None
        if frame is None or not self._matches(frame, kind, role, end_id):
            _log.warning("dropped a malformed frame", extra={"topic": topic, "size": len(payload)})
            return None
        return frame, data

    def _gone(self, role: str, end_id: str) -> Presence:
        e = self._endpoint
        return Presence(
            type=Presence.TYPE_LEAVE, end_id=end_id, role=role, channel=e.channel, group=e.group
        )

    def _matches(self, frame: frame_pb2.Frame, kind: TopicKind, role: str, end_id: str) -> bool:
        e = self._endpoint
        if kind in ("presence", "leave"):
            p = frame.presence
            expected = (
                {Presence.TYPE_LEAVE}
                if kind == "leave"
                else {Presence.TYPE_JOIN, Presence.TYPE_ALIVE}
            )
            return (
                frame.HasField("presence")
                and p.type in expected
                and (p.end_id, p.role, p.channel, p.group) == (end_id, role, e.channel, e.group)
                and end_id != e.end_id
            )
        if kind == "data":
            return frame.HasField("chunk") and frame.chunk.channel == e.channel
        return frame.HasField("ack") and frame.ack.sender_id == e.end_id

    def _log_extra(self) -> dict[str, str]:
        e = self._endpoint
        return {
            "job": e.job_id,
            "channel": e.channel,
            "end": e.end_id,
            "broker": self._settings.host,
        }
