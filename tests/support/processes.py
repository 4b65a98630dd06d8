"""Starting real server processes for tests, and stopping them for sure."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ServerProcess", "free_port", "start_server_process", "wait_for_port"]

BIN = Path(sys.executable).parent
_ANNOUNCE = re.compile(r" serving on (\S+)$")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, *, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before opening {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class ServerProcess:
    """A Flame server binary running as a child; `addresses` are what it announced."""

    def __init__(self, process: subprocess.Popen[str], addresses: list[str], output: list[str]):
        self.process = process
        self.addresses = addresses
        self.output = output

    @property
    def address(self) -> str:
        return self.addresses[0]

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def _read_announcements(
    process: subprocess.Popen[str], expected: int, timeout: float
) -> tuple[list[str], list[str]]:
    addresses: list[str] = []
    output: list[str] = []
    done = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            match = _ANNOUNCE.search(line.strip())
            if match:
                addresses.append(match.group(1))
                if len(addresses) >= expected:
                    done.set()
        done.set()

    threading.Thread(target=pump, daemon=True).start()
    done.wait(timeout)
    return addresses, output


@contextmanager
def start_server_process(
    args: Sequence[str],
    *,
    announcements: int = 1,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """Run `args` (a console script of this environment first), wait until it prints
    `announcements` "serving on ADDRESS" lines, and stop it on exit."""
    command = [str(BIN / args[0]), *args[1:]]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    addresses, output = _read_announcements(process, announcements, timeout)
    server = ServerProcess(process, addresses, output)
    try:
        if len(addresses) < announcements:
            server.stop()
            raise RuntimeError(f"{args[0]} did not start:\n{''.join(output)}")
        yield server
    finally:
        server.stop()
