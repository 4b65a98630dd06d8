"""Opt-in installation of a job's `dependencies` into a venv shared by its tasks."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from flame.flamelet.workdir import PrepareError, WorkArea

__all__ = ["dependencies", "prepare_venv"]

# What of a failed command's output goes into the FAILED reason.
_REASON_TAIL_BYTES = 2048
_LOCK_POLL_SECONDS = 0.2
# Written once the venv is complete: a venv without it was cut short and is made again.
_READY_MARKER = ".flame-ready"


def dependencies(config_json: str) -> list[str]:
    """The pip requirements listed under `dependencies` in a task config.

    Raises:
        PrepareError: The config is not JSON, or the list holds something other
            than requirement strings (an entry starting with `-` would be a pip option).
    """
    try:
        config = json.loads(config_json)
    except json.JSONDecodeError as error:
        raise PrepareError(f"task config is not JSON: {error}") from error
    listed = config.get("dependencies") if isinstance(config, dict) else None
    if not listed:
        return []
    if not isinstance(listed, list) or not all(
        isinstance(item, str) and item.strip() and not item.startswith("-") for item in listed
    ):
        raise PrepareError("task config 'dependencies' must be a list of pip requirement strings")
    return list(listed)


async def prepare_venv(
    area: WorkArea,
    requirements: list[str],
    *,
    base_python: str,
    env: Mapping[str, str],
    timeout: float,
) -> str:
    """Make the job's venv (over `base_python`'s packages), install `requirements` into it,
    and return its python.

    Tasks of one job on one machine share the venv: a file lock keeps them from
    building it at the same time. The whole of it ends within `timeout` seconds.

    Raises:
        PrepareError: The venv or an installation failed or took too long; the
            message ends with the command's last output.
    """
    venv = area.venv_dir
    python = venv / "bin" / "python"
    try:
        async with asyncio.timeout(timeout), _locked(area.venv_lock):
            if not (venv / _READY_MARKER).exists():
                create = [base_python, "-m", "venv", "--clear", "--system-site-packages", str(venv)]
                await _run(create, env, "creating the venv")
                (venv / _READY_MARKER).touch()
            pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
            await _run([*pip, "--no-input", *requirements], env, "installing dependencies")
    except TimeoutError as error:
        raise PrepareError(f"installing dependencies took longer than {timeout:g} s") from error
    return str(python)


@contextlib.asynccontextmanager
async def _locked(path: Path) -> AsyncIterator[None]:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:  # polled, not blocking, so that the caller's deadline holds
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(_LOCK_POLL_SECONDS)
        yield
    finally:
        os.close(fd)  # also releases the lock


async def _run(argv: list[str], env: Mapping[str, str], what: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = await process.communicate()
    finally:
        if process.returncode is None:  # cancelled by the deadline
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    if process.returncode != 0:
        tail = output[-_REASON_TAIL_BYTES:].decode("utf-8", errors="replace").strip()
        raise PrepareError(f"{what} failed (exit status {process.returncode}): {tail}")
