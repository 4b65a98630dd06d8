"""The flamelet's data-plane bridge.

The role code calls ChannelService on a Unix socket; the bridge carries its messages
to the bridges of the peer tasks over MQTT or p2p gRPC streams, as
`flame.transport.v1.Frame`s: chunks with a digest, acknowledged, resumed after a
dropped connection, never pickled.

Layers, top to bottom::

    plane      start_dataplane / start_bridge -> DataPlane (server + bridge)
    servicer   ChannelService: requests -> channel calls, byte streams
    bridge     the task's channels, joined on demand; the outbox byte budget
    channel    one channel: ends (Membership), Inbox, Outbox, its Transport
    inbox      reassembly, verification, acks, the queue the role code reads
    outbox     windowed transfers per receiver, resume, retries
    transport  the Transport ABC; mqtt: MqttTransport and the topic scheme (topics);
               p2p: P2pTransport, the PeerService server (PeerHub), discovery
"""

from __future__ import annotations

from flame.flamelet.dataplane.bridge import Bridge
from flame.flamelet.dataplane.config import ConfigError, TaskConfig, parse_task_config
from flame.flamelet.dataplane.discovery import (
    ControlPlaneDiscovery,
    DirectoryDiscovery,
    Discovery,
)
from flame.flamelet.dataplane.mqtt import MqttTransport
from flame.flamelet.dataplane.p2p import P2pTransport, PeerHub, PeerSettings, p2p_transports
from flame.flamelet.dataplane.plane import DataPlane, start_bridge, start_dataplane
from flame.flamelet.dataplane.settings import BrokerSettings, MqttProtocol, TransferLimits
from flame.flamelet.dataplane.transport import (
    Endpoint,
    FrameSink,
    NotConnected,
    Transport,
    TransportFactory,
)

__all__ = [
    "Bridge",
    "BrokerSettings",
    "ConfigError",
    "ControlPlaneDiscovery",
    "DataPlane",
    "DirectoryDiscovery",
    "Discovery",
    "Endpoint",
    "FrameSink",
    "MqttProtocol",
    "MqttTransport",
    "NotConnected",
    "P2pTransport",
    "PeerHub",
    "PeerSettings",
    "TaskConfig",
    "TransferLimits",
    "Transport",
    "TransportFactory",
    "p2p_transports",
    "parse_task_config",
    "start_bridge",
    "start_dataplane",
]
