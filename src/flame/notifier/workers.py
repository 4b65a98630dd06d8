"""Several notifier processes serving one port (ADR 0007).

`flame-notifier --workers N` (N > 1) runs a supervisor that serves nothing
itself: it starts N workers, fresh interpreters each running the single-process
notifier on the same host and port. gRPC binds with SO_REUSEPORT, so the kernel
spreads incoming connections over the workers; they share the database, and wake
each other through Unix datagrams (`wake.Siblings`) when they store a publication.

Each worker gets one end of a socket pair from the supervisor. It writes its port
there once serving (the first worker picks the port when asked for port 0; the
others then bind that one), and stops when it reads end-of-file: the supervisor
exited or was killed, since the kernel closes its end of the pair either way. The
supervisor stops every worker on SIGTERM or SIGINT, and every other worker (then
exits with an error) when one dies.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from flame.rpc.command import announce_address

__all__ = ["serve_workers", "watch_supervisor", "worker_environment"]

# A worker connects to the database, prepares it and binds within this.
_START_TIMEOUT = 60.0
# Beyond the server's grace period, what a worker may take to stop before it is killed.
_STOP_MARGIN = 10.0
_ENV_PREFIX = "FLAME_NOTIFIER_"


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    # The supervisor's end of the pair: open for as long as the supervisor lives.
    lifeline: asyncio.StreamWriter


async def serve_workers(
    count: int, host: str, port: int, grace_seconds: float, settings: Mapping[str, object]
) -> None:
    """Serve `host:port` with `count` workers configured by the command's `settings`
    until SIGTERM or SIGINT.

    Raises:
        ChildProcessError: A worker did not start, or exited on its own.
    """
    workers: list[_Worker] = []
    with tempfile.TemporaryDirectory(prefix="flame-notifier-") as wake_dir:
        environment = {**settings, "workers": count, "wake_dir": wake_dir}
        try:
            # Port 0: the first worker picks a free port, which the others then share.
            first = [await _start_worker(0, port, environment, workers)] if port == 0 else []
            port = port or first[0]
            indexes = range(len(first), count)
            await asyncio.gather(*(_start_worker(i, port, environment, workers) for i in indexes))
            announce_address("flame-notifier", f"{host}:{port}")
            await _until_signal_or_exit(workers)
        finally:
            await _stop(workers, grace_seconds + _STOP_MARGIN)


async def _start_worker(
    index: int, port: int, settings: Mapping[str, object], workers: list[_Worker]
) -> int:
    """Start worker `index` on `port`, add it to `workers` and return the port it serves."""
    ours, theirs = socket.socketpair()
    environment = worker_environment(
        {**settings, "port": port, "worker_index": index, "supervisor_fd": theirs.fileno()}
    )
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "flame.notifier.main",
            stdin=asyncio.subprocess.DEVNULL,
            env=environment,
            pass_fds=[theirs.fileno()],
        )
    finally:
        theirs.close()
    reader, lifeline = await asyncio.open_connection(sock=ours)
    workers.append(_Worker(index, process, lifeline))
    try:
        async with asyncio.timeout(_START_TIMEOUT):
            line = await reader.readline()
    except TimeoutError:
        raise ChildProcessError(
            f"notifier worker {index} did not serve within {_START_TIMEOUT} s"
        ) from None
    if not line:
        raise ChildProcessError(f"notifier worker {index} exited before serving")
    return int(line)


def worker_environment(settings: Mapping[str, object]) -> dict[str, str]:
    """This process's environment with `settings` (the command's options by parameter
    name) as the `FLAME_NOTIFIER_*` variables the worker's command reads.

    The environment rather than arguments: the database URI may hold a password,
    which the process list would show.
    """
    environment = dict(os.environ)
    for name, value in settings.items():
        variable = _ENV_PREFIX + name.upper()
        if value is None:
            environment.pop(variable, None)
        elif isinstance(value, bool):
            environment[variable] = "1" if value else "0"
        else:
            environment[variable] = str(value)
    return environment


async def _until_signal_or_exit(workers: list[_Worker]) -> None:
    signalled = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled.set)
    exits = {asyncio.ensure_future(worker.process.wait()): worker for worker in workers}
    stop = asyncio.ensure_future(signalled.wait())
    done, _ = await asyncio.wait({stop, *exits}, return_when=asyncio.FIRST_COMPLETED)
    for task in (stop, *exits):
        task.cancel()
    for exited in done & exits.keys():
        worker = exits[exited]
        raise ChildProcessError(f"notifier worker {worker.index} exited with {exited.result()}")


async def _stop(workers: list[_Worker], timeout: float) -> None:
    """SIGTERM every worker still running; SIGKILL those not gone after `timeout`."""
    running = [worker.process for worker in workers if worker.process.returncode is None]
    for process in running:
        process.terminate()
    if running:
        _, late = await asyncio.wait(
            [asyncio.ensure_future(p.wait()) for p in running], timeout=timeout
        )
        for process in running:
            if process.returncode is None:
                process.kill()
        await asyncio.gather(*late)
    for worker in workers:
        worker.lifeline.close()


async def watch_supervisor(supervisor_fd: int, port: int, orphaned: asyncio.Event) -> None:
    """In a worker: tell the supervisor it serves `port`, then set `orphaned` once the
    supervisor is gone (its end of the pair closed)."""
    lifeline = socket.socket(fileno=supervisor_fd)
    reader, writer = await asyncio.open_connection(sock=lifeline)
    writer.write(f"{port}\n".encode())
    await writer.drain()
    # The supervisor never writes: the read ends only when its end closes.
    await reader.read()
    orphaned.set()
    writer.close()
