"""`flame-notifier`: serve NotifyService with events stored in MongoDB."""

from __future__ import annotations

import asyncio
import gc
import signal
from pathlib import Path

import click

from flame.notifier.app import open_database, start_notifier
from flame.notifier.wake import Siblings
from flame.notifier.workers import serve_workers, watch_supervisor
from flame.rpc.command import announce, run_server, server_command_options, server_options
from flame.rpc.server import ServerOptions

__all__ = ["main"]

# Opt-in: on the 2-core machine the subscribers share, several workers did not
# lower fan-out latency (ADR 0007).
_DEFAULT_WORKERS = 1


@click.command(context_settings={"auto_envvar_prefix": "FLAME_NOTIFIER"})
@server_command_options
@click.option("--mongo-uri", default="mongodb://127.0.0.1:27017/", show_default=True)
@click.option("--database", default="flame", show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=_DEFAULT_WORKERS,
    show_default=True,
    help="Processes serving the port (SO_REUSEPORT); 1 serves in this process.",
)
# Set by the supervisor of several workers for each of them (notifier/workers.py).
@click.option("--worker-index", type=int, hidden=True)
@click.option("--wake-dir", type=click.Path(file_okay=False, path_type=Path), hidden=True)
@click.option("--supervisor-fd", type=int, hidden=True)
@click.pass_context
def main(
    context: click.Context,
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    plaintext: bool,
    log_level: str,
    mongo_uri: str,
    database: str,
    workers: int,
    worker_index: int | None,
    wake_dir: Path | None,
    supervisor_fd: int | None,
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
    if worker_index is not None and wake_dir is not None and supervisor_fd is not None:
        siblings = Siblings(wake_dir, worker_index, workers)
        run_server(
            f"flame-notifier-{worker_index}",
            log_level,
            lambda: _serve(mongo_uri, database, options, siblings, supervisor_fd),
        )
    elif workers == 1:
        run_server("flame-notifier", log_level, lambda: _serve(mongo_uri, database, options))
    else:
        if host.startswith("unix:"):
            raise click.UsageError("a Unix socket is served by one process: give --workers 1")
        settings = context.params
        run_server(
            "flame-notifier",
            log_level,
            lambda: serve_workers(workers, host, port, options.grace_seconds, settings),
        )


async def _serve(
    mongo_uri: str,
    database: str,
    options: ServerOptions,
    siblings: Siblings | None = None,
    supervisor: int | None = None,
) -> None:
    """Serve NotifyService until signalled, or, for a worker, until its supervisor is gone."""
    client, db = await open_database(mongo_uri, database)
    try:
        notifier = await start_notifier(db, options, siblings=siblings)
        _calm_garbage_collector()
        stop = _on_signal()
        if supervisor is None:
            announce("flame-notifier", notifier.running)
            await stop.wait()
        else:
            watching = asyncio.create_task(
                watch_supervisor(supervisor, notifier.running.port, stop)
            )
            await stop.wait()
            watching.cancel()
        await notifier.stop()
    finally:
        await client.close()


def _calm_garbage_collector() -> None:
    """Keep collector pauses out of fan-outs.

    A full collection walks every tracked object: with 1,000 streams open it paused
    the loop 40-55 ms, about twice per ten fan-outs, and young collections every
    700 allocations added 2-9 ms each. What exists once the server runs (modules,
    descriptors, the server) is frozen out of the walks, and young collections wait
    for 10,000 allocations: then one full collection of 8 ms in ten fan-outs.
    """
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def _on_signal() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT."""
    # Not flame.rpc.server.serve_until_signal: it stops the server before its
    # on_stop hook, so open streams would hold the server for the grace period.
    received = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, received.set)
    return received


if __name__ == "__main__":
    main()
