"""`flame-apiserver`: the public front door, forwarding to a controller."""

from __future__ import annotations

from pathlib import Path

import click

from flame.apiserver.auth import TokenResolver
from flame.apiserver.proxy import ForwardingHandler
from flame.auth.v1 import auth_service_pb2_grpc
from flame.controlplane import metadata as md
from flame.controlplane.services import PUBLIC_SERVICES
from flame.rpc.client import open_channel
from flame.rpc.command import announce, run_server, server_command_options, server_options
from flame.rpc.server import serve_until_signal, start_server
from flame.rpc.tls import ClientTls

__all__ = ["main"]

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command(context_settings={"auto_envvar_prefix": "FLAME_APISERVER"})
@server_command_options
@click.option("--controller", required=True, help="Controller address, host:port.")
@click.option("--controller-ca", type=_FILE, help="CA that signed the controller's certificate.")
@click.option("--controller-cert", type=_FILE, help="Client certificate for mutual TLS.")
@click.option("--controller-key", type=_FILE, help="Client key for mutual TLS.")
@click.option("--controller-plaintext", is_flag=True, help="Reach the controller without TLS.")
@click.option(
    "--internal-key", required=True, help="Secret shared with the controller (env recommended)."
)
def main(
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    plaintext: bool,
    log_level: str,
    controller: str,
    controller_ca: Path | None,
    controller_cert: Path | None,
    controller_key: Path | None,
    controller_plaintext: bool,
    internal_key: str,
) -> None:
    """Run the Flame apiserver."""
    options = server_options(
        host=host,
        port=port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        plaintext=plaintext,
    )
    if not controller_plaintext and controller_ca is None:
        raise click.UsageError("give --controller-ca, or --controller-plaintext")
    controller_tls = (
        None if controller_plaintext else ClientTls(controller_ca, controller_cert, controller_key)
    )

    async def serve() -> None:
        channel = open_channel(controller, tls=controller_tls)
        resolver = TokenResolver(
            auth_service_pb2_grpc.AuthServiceStub(channel),
            internal_metadata=((md.INTERNAL_KEY, internal_key),),
        )
        handler = ForwardingHandler(PUBLIC_SERVICES, channel, resolver, internal_key=internal_key)
        running = await start_server(
            [],
            options,
            generic_handler=handler,
            generic_service_names=[service.full_name for service in PUBLIC_SERVICES],
        )
        announce("flame-apiserver", running)
        await serve_until_signal(running, on_stop=lambda: channel.close(None))

    run_server("flame-apiserver", log_level, serve)
