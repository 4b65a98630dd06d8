"""`flame-notifier`: serve NotifyService with events stored in MongoDB."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click

from flame.notifier.app import open_database, start_notifier
from flame.rpc.command import announce, run_server, server_command_options, server_options

__all__ = ["main"]


@click.command(context_settings={"auto_envvar_prefix": "FLAME_NOTIFIER"})
@server_command_options
@click.option("--mongo-uri", default="mongodb://127.0.0.1:27017/", show_default=True)
@click.option("--database", default="flame", show_default=True)
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
        client, db = await open_database(mongo_uri, database)
        try:
            notifier = await start_notifier(db, options)
            announce("flame-notifier", notifier.running)
            await _signalled()
            await notifier.stop()
        finally:
            await client.close()

    run_server("flame-notifier", log_level, serve)


async def _signalled() -> None:
    """Wait for SIGTERM or SIGINT."""
    # Not flame.rpc.server.serve_until_signal: it stops the server before its
    # on_stop hook, so open streams would hold the server for the grace period.
    received = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, received.set)
    await received.wait()
