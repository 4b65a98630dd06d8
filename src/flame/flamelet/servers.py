"""The flamelet's two data-plane servers: the local ChannelService its role code
calls over a Unix socket, and the PeerService peer flamelets call over TCP."""

from __future__ import annotations

from flame.dataplane.v1 import channel_service_pb2, channel_service_pb2_grpc
from flame.peer.v1 import peer_service_pb2, peer_service_pb2_grpc
from flame.rpc.server import Service, bind, bind_serialized

__all__ = ["TRANSFER_CHUNKS_METHOD", "channel_services", "peer_services"]

# Called with requests laid out by `flame.wire.chunkframes.encode_chunk`.
TRANSFER_CHUNKS_METHOD = "/flame.peer.v1.PeerService/TransferChunks"


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
    """The services of the server peer flamelets call.

    TransferChunks takes its requests serialized: the servicer reads them with
    `flame.wire.chunkframes`, so that a chunk's bytes are never copied through protobuf.
    """
    descriptor = peer_service_pb2.DESCRIPTOR.services_by_name["PeerService"]
    return [bind_serialized(descriptor, servicer, requests={"TransferChunks"})]
