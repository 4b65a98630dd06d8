"""The local launcher: each task agent is a `flamelet` process on this machine.

Each flamelet leads its own process group (a new session), so stopping it also
stops whatever it started, such as the task's ML code. Its output is appended
to `<work root>/logs/<job id>/<task id>.log`. The task key reaches it in the
environment (`FLAME_TASK_KEY`), never in argv, which other users can read.

The `Popen` objects are kept for the life of each agent: their exit status is
the one `reap` reports, so nothing else in the process may wait for these
children (`flame.embedded.processes.spawn` drops its `Popen`, and `is_alive`
reaps, which is why they are not used here).

Each running agent is also recorded in `<work root>/agents/<task id>.json` (job,
pid and the process's start time, which tells it from a later process that got
the same pid). A deployer killed without its shutdown leaves its flamelets running
and their records behind; the next deployer on the work root adopts them (`adopt`):
it watches and stops them like its own, only their exit status is lost with their
parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from flame.compute.v1 import compute_pb2
from flame.deployer.deployer import AgentError
from flame.deployer.forked import fork_flamelet

__all__ = [
    "STATUS_UNKNOWN",
    "Adopted",
    "FlameletSettings",
    "LocalAgent",
    "LocalLauncher",
    "describe_exit",
    "flamelet_command",
]

TASK_KEY_ENV = "FLAME_TASK_KEY"
# The deployer's own secrets (admin token, compute key) must not reach the agents.
_WITHHELD_ENV_PREFIX = "FLAME_DEPLOYER_"

# Ids become file names: no separators, no dot-names.
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")

_POLL_SECONDS = 0.05
# After SIGKILL a process is gone within milliseconds unless stuck in the kernel.
_KILL_WAIT_SECONDS = 5.0
# The exit "status" of an adopted agent: not a child of this process, so its real
# status went to its former parent. No real status (0-255, or minus a signal) is this.
STATUS_UNKNOWN = 1 << 16


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
        self._records = _AgentRecords(settings.work_root / "agents")

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
        self._records.add(job_id, task.task_id, process.pid)
        return self._agent(process, task.task_id)

    def adopt(self) -> list[Adopted]:
        """The agents recorded on this work root by an earlier deployer, to watch and stop
        as this one's; one that ended meanwhile is reported as ended at its first reap."""
        return [
            Adopted(job_id, task_id, self._agent(_AdoptedProcess(pid, started), task_id))
            for job_id, task_id, pid, started in self._records.entries()
        ]

    def _agent(self, process: _Process, task_id: str) -> LocalAgent:
        return LocalAgent(
            process,
            grace_seconds=self._grace_seconds,
            on_gone=lambda: self._records.remove(task_id),
        )


@dataclass(frozen=True)
class Adopted:
    """An agent an earlier deployer started, and its task."""

    job_id: str
    task_id: str
    agent: LocalAgent


class _AgentRecords:
    """One JSON file per running agent: job id, pid and the process's start time."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def add(self, job_id: str, task_id: str, pid: int) -> None:
        self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        record = {"job_id": job_id, "pid": pid, "started": _start_ticks(pid)}
        path = self._folder / f"{task_id}.json"
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(record))
        partial.replace(path)

    def remove(self, task_id: str) -> None:
        (self._folder / f"{task_id}.json").unlink(missing_ok=True)

    def entries(self) -> list[tuple[str, str, int, int | None]]:
        """(job id, task id, pid, start time) of each record that can be read."""
        found = []
        for path in sorted(self._folder.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                found.append(
                    (str(record["job_id"]), path.stem, int(record["pid"]), record["started"])
                )
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)  # torn or foreign: nothing to adopt
        return found


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


class _AdoptedProcess:
    """A flamelet an earlier deployer started: not a child, so watched through /proc."""

    def __init__(self, pid: int, started: int | None) -> None:
        self._pid = pid
        self._started = started

    @property
    def pid(self) -> int:
        return self._pid

    def poll(self) -> int | None:
        """None while it runs; `STATUS_UNKNOWN` once it ended (or its pid is another's)."""
        running = self._started is not None and _start_ticks(self._pid) == self._started
        return None if running else STATUS_UNKNOWN

    def owns_its_group(self) -> bool:
        """Whether group `pid` can only be this flamelet's: its pid is still its own, or
        no process holds it (Linux gives no new process the id of a live group)."""
        return _start_ticks(self._pid) in (None, self._started)


class LocalAgent:
    """A flamelet process, leader of its own process group."""

    def __init__(
        self,
        process: _Process,
        *,
        grace_seconds: float,
        on_gone: Callable[[], None] | None = None,
    ) -> None:
        """Watch and stop `process`, which leads its own process group; call `on_gone`
        once it is known to be gone."""
        self._process = process
        self._grace_seconds = grace_seconds
        self._on_gone = on_gone

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
        if self._owns_group():
            with contextlib.suppress(OSError):  # usually nothing is left to kill
                os.killpg(self.pid, signal.SIGKILL)
        self._gone_for_good()
        return describe_exit(code)

    async def stop(self) -> None:
        """SIGTERM the group, SIGKILL it after the grace period, and wait until it is gone.

        Raises:
            AgentError: The group could not be signalled, or outlived SIGKILL.
        """
        if not self._signal(signal.SIGTERM):
            self._process.poll()
        elif not await self._gone_within(self._grace_seconds):
            self._signal(signal.SIGKILL)
            if not await self._gone_within(_KILL_WAIT_SECONDS):
                raise AgentError(
                    f"process group {self.pid} still runs {_KILL_WAIT_SECONDS:.0f} s after SIGKILL"
                )
        self._gone_for_good()

    def _gone_for_good(self) -> None:
        if self._on_gone is not None:
            self._on_gone()

    def _owns_group(self) -> bool:
        # An adopted flamelet's pid may name another process by now, and its group another's.
        return not isinstance(self._process, _AdoptedProcess) or self._process.owns_its_group()

    def _signal(self, sig: signal.Signals) -> bool:
        """Send `sig` to the group; False if the group is gone."""
        if not self._owns_group():
            return False
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
    """How a process ended, from its `Popen.returncode` (or `STATUS_UNKNOWN`)."""
    if code == STATUS_UNKNOWN:
        return "flamelet ended; its exit status is unknown (started by an earlier deployer)"
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


def _start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot); None if it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Fields after the command name: state first, the start time 20th.
    return None if fields[0] in ("Z", "X") else int(fields[19])


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
