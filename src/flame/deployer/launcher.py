"""The local launcher: each task agent is a `flamelet` process on this machine.

Each flamelet leads its own process group (a new session), so stopping it also
stops whatever it started, such as the task's ML code. Its output is appended
to `<work root>/logs/<job id>/<task id>.log`. The task key reaches it in the
environment (`FLAME_TASK_KEY`), never in argv, which other users can read.

The `Popen` objects are kept for the life of each agent: their exit status is
the one `reap` reports, so nothing else in the process may wait for these
children (`flame.embedded.processes.spawn` drops its `Popen`, and `is_alive`
reaps, which is why they are not used here).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from flame.compute.v1 import compute_pb2
from flame.deployer.deployer import AgentError
from flame.deployer.forked import fork_flamelet

__all__ = ["FlameletSettings", "LocalAgent", "LocalLauncher", "describe_exit", "flamelet_command"]

TASK_KEY_ENV = "FLAME_TASK_KEY"
# The deployer's own secrets (admin token, compute key) must not reach the agents.
_WITHHELD_ENV_PREFIX = "FLAME_DEPLOYER_"

# Ids become file names: no separators, no dot-names.
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")

_POLL_SECONDS = 0.05
# After SIGKILL a process is gone within milliseconds unless stuck in the kernel.
_KILL_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class FlameletSettings:
    """How to run a flamelet and where it finds the control plane.

    Attributes:
        executable: The `flamelet` program.
        apiserver: `host:port` of the apiserver.
        notifier: `host:port` of the notifier.
        work_root: Folder for the agents' work and the `logs/` of this launcher.
        ca_file: CA the agents trust for TLS; None for the system roots.
        plaintext: Connect without TLS (loopback and tests only).
        fork: Start the standard flamelet as a fork of a preloaded fork server
            (see `flame.deployer.forked`) instead of executing `executable`.
    """

    executable: Path
    apiserver: str
    notifier: str
    work_root: Path
    ca_file: Path | None = None
    plaintext: bool = False
    fork: bool = False


def flamelet_command(settings: FlameletSettings, job_id: str, task_id: str) -> list[str]:
    """The argv of the flamelet of one task (its key goes in the environment)."""
    command = [
        str(settings.executable),
        *("--job-id", job_id),
        *("--task-id", task_id),
        *("--apiserver", settings.apiserver),
        *("--notifier", settings.notifier),
    ]
    if settings.plaintext:
        command.append("--plaintext")
    elif settings.ca_file is not None:
        command += ["--ca-file", str(settings.ca_file)]
    return [*command, "--work-root", str(settings.work_root)]


class LocalLauncher:
    """Starts flamelets as local processes."""

    def __init__(self, settings: FlameletSettings, *, grace_seconds: float = 10.0) -> None:
        """Start flamelets per `settings`; stopping one allows it `grace_seconds` after SIGTERM."""
        self._settings = settings
        self._grace_seconds = grace_seconds

    def log_file(self, job_id: str, task_id: str) -> Path:
        """Where the output of a task's flamelet goes."""
        return self._settings.work_root / "logs" / job_id / f"{task_id}.log"

    def launch(self, job_id: str, task: compute_pb2.TaskCredential) -> LocalAgent:
        """Start the flamelet of one task in its own process group.

        Raises:
            AgentError: An id is not usable as a file name, or the process could not start.
        """
        for label, value in (("job id", job_id), ("task id", task.task_id)):
            if not _SAFE_ID.fullmatch(value):
                raise AgentError(f"{label} {value!r} is not a valid id")
        command = flamelet_command(self._settings, job_id, task.task_id)
        log_file = self.log_file(job_id, task.task_id)
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            if self._settings.fork:
                process: _Process = fork_flamelet(
                    command[1:], _agent_env(task.task_key), log_file, self._settings.work_root
                )
            else:
                process = _execute(
                    command, _agent_env(task.task_key), log_file, self._settings.work_root
                )
        except OSError as error:
            raise AgentError(f"cannot start {command[0]}: {error}") from error
        return LocalAgent(process, grace_seconds=self._grace_seconds)


class _Process(Protocol):
    """What the launcher needs of a started flamelet (a `Popen` or a fork)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...


def _execute(
    command: list[str], env: dict[str, str], log_file: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    # Agents run in the work root, so that what runs for this compute is easy to find.
    with log_file.open("ab") as log:
        return subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


class LocalAgent:
    """A flamelet process, leader of its own process group."""

    def __init__(self, process: _Process, *, grace_seconds: float) -> None:
        """Watch and stop `process`, which leads its own process group."""
        self._process = process
        self._grace_seconds = grace_seconds

    @property
    def pid(self) -> int:
        """The flamelet's pid, also its process group id."""
        return self._process.pid

    def reap(self) -> str | None:
        """None while the flamelet runs; once it has exited, kill what is left of its
        group (orphans of a dead agent that no one would stop) and say how it ended."""
        code = self._process.poll()
        if code is None:
            return None
        with contextlib.suppress(OSError):  # usually nothing is left to kill
            os.killpg(self.pid, signal.SIGKILL)
        return describe_exit(code)

    async def stop(self) -> None:
        """SIGTERM the group, SIGKILL it after the grace period, and wait until it is gone.

        Raises:
            AgentError: The group could not be signalled, or outlived SIGKILL.
        """
        if not self._signal(signal.SIGTERM):
            self._process.poll()
            return
        if await self._gone_within(self._grace_seconds):
            return
        self._signal(signal.SIGKILL)
        if not await self._gone_within(_KILL_WAIT_SECONDS):
            raise AgentError(
                f"process group {self.pid} still runs {_KILL_WAIT_SECONDS:.0f} s after SIGKILL"
            )

    def _signal(self, sig: signal.Signals) -> bool:
        """Send `sig` to the group; False if the group is gone."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return False
        except OSError as error:
            raise AgentError(f"cannot signal process group {self.pid}: {error}") from error
        return True

    async def _gone_within(self, seconds: float) -> bool:
        """Wait up to `seconds` for the leader to exit and the group to empty."""
        try:
            async with asyncio.timeout(seconds):
                while not self._gone():
                    await asyncio.sleep(_POLL_SECONDS)
        except TimeoutError:
            return False
        return True

    def _gone(self) -> bool:
        # poll() also reaps the leader, so that it does not stay a zombie.
        return self._process.poll() is not None and not _group_has_live_members(self.pid)


def describe_exit(code: int) -> str:
    """How a process ended, from its `Popen.returncode`."""
    if code >= 0:
        return f"flamelet exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = str(-code)
    return f"flamelet killed by signal {name}"


def _agent_env(task_key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_WITHHELD_ENV_PREFIX)}
    env[TASK_KEY_ENV] = task_key
    return env


def _group_has_live_members(pgid: int) -> bool:
    """Whether any process of the group runs (Linux: reads /proc); zombies, orphans
    that init has yet to reap, do not count."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # Fields after the command name: state, ppid, pgrp, ...
            state, _, group = stat.read_text().rsplit(") ", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # the process ended while being read
        if int(group) == pgid and state not in ("Z", "X"):
            return True
    return False
