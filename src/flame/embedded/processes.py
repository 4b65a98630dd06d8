"""Detached child processes that outlive `flamectl up`, and stopping them."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "free_port",
    "is_alive",
    "spawn",
    "stop_process_group",
    "wait_for_announcement",
    "wait_for_port",
]

_ANNOUNCE = re.compile(r" serving on (\S+)\s*$", re.MULTILINE)


def free_port() -> int:
    """A port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(command: Sequence[str], *, log_file: Path, env: Mapping[str, str] | None = None) -> int:
    """Start `command` in its own session (so `down` can stop its whole group),
    output appended to `log_file`; returns its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return process.pid


def is_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # Reap it if it is our own exited child, so it stops counting as alive.
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return finished == 0
    except ChildProcessError:
        stat = Path(f"/proc/{pid}/stat")
        return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def wait_for_announcement(
    log_file: Path, pid: int, *, timeout: float, pattern: re.Pattern[str] = _ANNOUNCE
) -> str:
    """What a process announced in its log: by default the address a Flame server
    printed ("... serving on ADDRESS"); otherwise the first group of `pattern`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_file.read_text(errors="replace") if log_file.exists() else ""
        match = pattern.search(text)
        if match:
            return match.group(1)
        if not is_alive(pid):
            raise RuntimeError(f"exited before serving; see {log_file}:\n{text[-2000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"not serving after {timeout:.0f} s; see {log_file}")


def wait_for_port(port: int, pid: int, *, timeout: float, log_file: Path) -> None:
    """Wait until something accepts connections on a loopback port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if not is_alive(pid):
            raise RuntimeError(f"exited before listening; see {log_file}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout:.0f} s; see {log_file}")


def stop_process_group(pid: int, *, grace_seconds: float = 10.0) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL what is left after the grace."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if not _group_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return is_alive(pgid) or _group_has_members(pgid)


def _group_has_members(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
