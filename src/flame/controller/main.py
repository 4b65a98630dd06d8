"""`flame-controller`: serve the control-plane resource services over MongoDB."""

from __future__ import annotations

from pathlib import Path

import click

from flame.controller.app import controller_services, open_database
from flame.rpc.command import announce, run_server, server_command_options, server_options
from flame.rpc.server import serve_until_signal, start_server

__all__ = ["main"]


@click.command(context_settings={"auto_envvar_prefix": "FLAME_CONTROLLER"})
@server_command_options
@click.option("--mongo-uri", default="mongodb://127.0.0.1:27017/", show_default=True)
@click.option("--database", default="flame", show_default=True)
@click.option(
    "--internal-key", required=True, help="Secret shared with the apiserver (env recommended)."
)
def main(
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    plaintext: bool,
    log_level: str,
    mongo_uri: str,
    database: str,
    internal_key: str,
) -> None:
    """Run the Flame controller."""
    options = server_options(
        host=host,
        port=port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        plaintext=plaintext,
    )

    async def serve() -> None:
        client, db = await open_database(mongo_uri, database)
        running = await start_server(controller_services(db, internal_key=internal_key), options)
        announce("flame-controller", running)

        async def close() -> None:
            await client.close()

        await serve_until_signal(running, on_stop=close)

    run_server("flame-controller", log_level, serve)
