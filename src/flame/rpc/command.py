"""Command-line options shared by every Flame server binary.

Each option also reads an environment variable, `FLAME_<COMPONENT>_<OPTION>`
(e.g. `FLAME_CONTROLLER_PORT`), so containers configure servers without flags.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from flame.rpc.logs import configure_logging
from flame.rpc.server import RunningServer, ServerOptions
from flame.rpc.tls import ServerTls

__all__ = ["announce", "announce_address", "run_server", "server_command_options", "server_options"]

F = TypeVar("F", bound=Callable[..., Any])

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def server_command_options(func: F) -> F:
    """Add --host, --port, TLS, --plaintext and --log-level options to a click command."""
    options = [
        click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind."),
        click.option("--port", default=0, show_default=True, help="Port; 0 picks a free one."),
        click.option("--tls-cert", type=_FILE, help="Server certificate (PEM)."),
        click.option("--tls-key", type=_FILE, help="Server private key (PEM)."),
        click.option(
            "--tls-client-ca", type=_FILE, help="CA of client certificates: enables mutual TLS."
        ),
        click.option(
            "--plaintext", is_flag=True, help="Serve without TLS (loopback and tests only)."
        ),
        click.option("--log-level", default="INFO", show_default=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def server_options(
    *,
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    plaintext: bool,
) -> ServerOptions:
    """Turn the shared options into ServerOptions; TLS unless plaintext was asked for."""
    if plaintext:
        if tls_cert or tls_key or tls_client_ca:
            raise click.UsageError("--plaintext cannot be combined with --tls-* options")
        return ServerOptions(host=host, port=port, tls=None)
    if not (tls_cert and tls_key):
        raise click.UsageError("give --tls-cert and --tls-key, or --plaintext to serve without TLS")
    return ServerOptions(host=host, port=port, tls=ServerTls(tls_cert, tls_key, tls_client_ca))


def announce(component: str, running: RunningServer) -> None:
    """Print the bound address on one line of stdout, for scripts and tests to read."""
    announce_address(component, running.address)


def announce_address(component: str, address: str) -> None:
    """`announce` for a server bound elsewhere (by worker processes)."""
    print(f"{component} serving on {address}", flush=True)


def run_server(
    component: str, log_level: str, serve: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """Configure logging and run a server's main coroutine until it returns."""
    configure_logging(component, log_level)
    try:
        asyncio.run(serve())
    except OSError as error:
        click.echo(f"{component}: {error}", err=True)
        sys.exit(1)
