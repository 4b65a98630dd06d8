"""The flamelet's two data-plane servers: the local ChannelService its role code
calls over a Unix socket, and the PeerService peer flamelets call over TCP."""

from __future__ import annotations

from flame.dataplane.v1 import channel_service_pb2, channel_service_pb2_grpc
from flame.peer.v1 import peer_service_pb2, peer_service_pb2_grpc
from flame.rpc.server import Service, bind

__all__ = ["channel_services", "peer_services"]


def channel_services(servicer: channel_service_pb2_grpc.ChannelServiceServicer) -> list[Service]:
    """The services of the local server the role code calls."""
    return [
        bind(
            channel_service_pb2.DESCRIPTOR.services_by_name["ChannelService"],
            channel_service_pb2_grpc.add_ChannelServiceServicer_to_server,
            servicer,
        )
    ]


def peer_services(servicer: peer_service_pb2_grpc.PeerServiceServicer) -> list[Service]:
    """The services of the server peer flamelets call."""
    return [
        bind(
            peer_service_pb2.DESCRIPTOR.services_by_name["PeerService"],
            peer_service_pb2_grpc.add_PeerServiceServicer_to_server,
            servicer,
        )
    ]
