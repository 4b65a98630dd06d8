"""A real MongoDB-wire server (SecantusDB) in its own process, on a free port."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.processes import BIN, free_port, wait_for_port

__all__ = ["secantus_server"]


@contextmanager
def secantus_server(storage: Path) -> Iterator[str]:
    """Start `secantusd-py` with fresh storage and yield its mongodb:// URI."""
    port = free_port()
    storage.mkdir(parents=True, exist_ok=True)
    log = (storage.parent / f"secantus-{port}.log").open("wb")
    process = subprocess.Popen(
        [
            str(BIN / "secantusd-py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            str(storage),
            "--log-level",
            "WARNING",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, timeout=60, process=process)
        yield f"mongodb://127.0.0.1:{port}/"
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()
