"""`flame-notifier`: serve NotifyService."""

from __future__ import annotations

from pathlib import Path

import click

from flame.notify.v1 import notify_service_pb2, notify_service_pb2_grpc
from flame.rpc.command import announce, run_server, server_command_options, server_options
from flame.rpc.server import Service, bind, serve_until_signal, start_server

__all__ = ["main", "notifier_services"]


def notifier_services() -> list[Service]:
    """The services a notifier serves."""
    return [
        bind(
            notify_service_pb2.DESCRIPTOR.services_by_name["NotifyService"],
            notify_service_pb2_grpc.add_NotifyServiceServicer_to_server,
            notify_service_pb2_grpc.NotifyServiceServicer(),
        )
    ]


@click.command(context_settings={"auto_envvar_prefix": "FLAME_NOTIFIER"})
@server_command_options
def main(
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    plaintext: bool,
    log_level: str,
) -> None:
    """Run the Flame notifier."""
    options = server_options(
        host=host,
        port=port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        plaintext=plaintext,
    )

    async def serve() -> None:
        running = await start_server(notifier_services(), options)
        announce("flame-notifier", running)
        await serve_until_signal(running)

    run_server("flame-notifier", log_level, serve)
