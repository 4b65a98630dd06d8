"""How the bridge reaches its broker, and the limits of its transfers."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = ["DEFAULT_MQTT_PORT", "BrokerSettings", "MqttProtocol", "TransferLimits"]

DEFAULT_MQTT_PORT = 1883
_MIB = 1024 * 1024


class MqttProtocol(enum.Enum):
    """The MQTT protocol version spoken to the broker."""

    V5 = "5"
    # amqtt, the embedded broker, speaks 3.1.1 only and refuses v5 clients.
    V311 = "3.1.1"


@dataclass(frozen=True)
class BrokerSettings:
    """An MQTT broker and how to authenticate to it.

    Per-job credentials: the broker knows one user per job, whose name is the job id
    and whose password is issued for that job (a mosquitto `password_file` entry),
    and confines it to the job's topics with the ACL `pattern readwrite flame/%u/#`.
    A task of one job then cannot read or write another job's channels even on a
    shared broker. Without a username the bridge connects anonymously.

    Attributes:
        host: Broker host name or address.
        port: Broker port.
        username: MQTT username; the job id with per-job credentials.
        password: MQTT password.
        tls_ca_file: CA bundle to verify the broker with; TLS is used when set.
        protocol: MQTT v5 (mosquitto) or v3.1.1 (amqtt).
        keepalive: Seconds between pings; the broker declares the bridge dead, and
            publishes its last will, after 1.5 times this without traffic.

    Example:
        settings = BrokerSettings.for_job(job_id, password).at("mq.example.org:1883")
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_MQTT_PORT
    username: str | None = None
    password: str | None = None
    tls_ca_file: Path | None = None
    protocol: MqttProtocol = MqttProtocol.V5
    keepalive: int = 30

    @classmethod
    def for_job(cls, job_id: str, password: str) -> BrokerSettings:
        """Default settings with the per-job credentials of `job_id`."""
        return cls(username=job_id, password=password)

    def at(self, address: str) -> BrokerSettings:
        """The same settings for the broker at `address` (`host` or `host:port`).

        Raises:
            ValueError: The port is not a number.
        """
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
        return replace(self, host=host or self.host, port=int(port) if port else self.port)


@dataclass(frozen=True)
class TransferLimits:
    """Sizes and timings of transfers between bridges.

    Attributes:
        chunk_bytes: Size of a chunk on the wire.
        window_chunks: Chunks of one transfer sent and not yet acknowledged.
        ack_every: A receiver acknowledges after this many chunks (and at the end).
        stall_seconds: A transfer with no acknowledgement for this long resends from
            the last acknowledged chunk.
        max_corrupt: Times a message may arrive corrupt before the sender gives up.
        leave_grace_seconds: How long transfers to and from an end that left wait
            for it to come back (a dropped connection) before they are dropped.
        progress_timeout_seconds: A transfer nothing acknowledged for this long is
            dropped.
        max_message_bytes: The largest message sent or received.
        outbox_bytes: Bytes of messages taken for delivery and not yet delivered;
            SendMessage stops reading while more are pending (one message always fits).
        publish_window_bytes: Bytes a transport may have handed to the network and
            not yet seen acknowledged by the broker, across all its transfers.
        completed_ids: Message ids remembered per sender to ignore duplicates.
        connect_timeout: Seconds to wait for the first connection to the broker.
        leave_timeout: Seconds LeaveChannel waits for pending messages to be sent
            when the caller set no deadline.
        receive_chunk_bytes: Size of the chunks of a ReceiveMessage stream.
        shared_files: Offer the role code to hand large messages over as files on
            the host's memory-backed file system instead of chunk streams.
    """

    chunk_bytes: int = _MIB
    window_chunks: int = 16
    ack_every: int = 4
    stall_seconds: float = 5.0
    max_corrupt: int = 3
    leave_grace_seconds: float = 60.0
    progress_timeout_seconds: float = 300.0
    max_message_bytes: int = 1024 * _MIB
    outbox_bytes: int = 512 * _MIB
    publish_window_bytes: int = 24 * _MIB
    completed_ids: int = 1024
    connect_timeout: float = 15.0
    leave_timeout: float = 30.0
    receive_chunk_bytes: int = _MIB
    shared_files: bool = True
