"""`flamelet`: the per-task agent."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from flame.dataplane.v1 import channel_service_pb2_grpc
from flame.flamelet.servers import channel_services, peer_services
from flame.peer.v1 import peer_service_pb2_grpc
from flame.rpc.command import announce, run_server, server_command_options, server_options
from flame.rpc.server import ServerOptions, serve_until_signal, start_server

__all__ = ["main"]


@click.command(context_settings={"auto_envvar_prefix": "FLAME_FLAMELET"})
@server_command_options
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    help="Unix socket for the role code's ChannelService (default: a fresh temp path).",
)
def main(
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    plaintext: bool,
    log_level: str,
    socket_path: Path | None,
) -> None:
    """Run a Flame task agent's data-plane servers."""
    peer_options = server_options(
        host=host,
        port=port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        plaintext=plaintext,
    )
    socket_path = socket_path or Path(tempfile.mkdtemp(prefix="flamelet-")) / "channel.sock"

    async def serve() -> None:
        peer = await start_server(
            peer_services(peer_service_pb2_grpc.PeerServiceServicer()), peer_options
        )
        # The role code is a child on the same machine: a Unix socket, no TLS.
        local = await start_server(
            channel_services(channel_service_pb2_grpc.ChannelServiceServicer()),
            ServerOptions(host=f"unix:{socket_path}", port=0, tls=None),
        )
        announce("flamelet", peer)
        announce("flamelet channel", local)
        await serve_until_signal(peer, on_stop=local.stop)

    run_server("flamelet", log_level, serve)
