"""A fake ComputeService served in-process, fake flamelet programs, and process checks."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flame.compute.v1 import compute_pb2, compute_service_pb2, compute_service_pb2_grpc
from flame.controlplane import metadata as md
from flame.rpc.errors import AlreadyExists, PermissionDenied, Unavailable
from flame.rpc.server import RunningServer, ServerOptions, bind, start_server

AgentStatus = compute_pb2.AgentStatus

ADMIN_TOKEN = "admin-token-for-tests"
COMPUTE_KEY = "compute-key-0123456789"
TASKS_PER_JOB = 2


def task_id(job_id: str, index: int) -> str:
    """The id the fake gives task `index` of a job: 40 hex digits, like the job builder's."""
    return hashlib.sha1(f"{job_id}/{index}".encode()).hexdigest()


class FakeComputeService(compute_service_pb2_grpc.ComputeServiceServicer):
    """Checks credentials like the apiserver, serves 2 tasks per job, records statuses."""

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}  # api key by compute id
        self.registrations = 0
        self.issued: dict[str, list[str]] = {}  # task keys minted, by task id
        self.reports: list[tuple[str, AgentStatus]] = []  # (job id, status)
        self.failures: list[str] = []  # calls to fail with UNAVAILABLE, by method name

    async def RegisterCompute(
        self, request: compute_service_pb2.RegisterComputeRequest, context: Any
    ) -> compute_service_pb2.RegisterComputeResponse:
        self._maybe_fail("RegisterCompute")
        if _metadata(context, md.AUTHORIZATION) != f"Bearer {ADMIN_TOKEN}":
            raise PermissionDenied("PERMISSION_DENIED", "this call needs an admin's API token")
        known = self.keys.get(request.compute.id)
        if known is not None and known != request.api_key:
            raise AlreadyExists(
                "COMPUTE_ALREADY_EXISTS", f"compute '{request.compute.id}' already exists"
            )
        self.keys[request.compute.id] = request.api_key
        self.registrations += 1
        return compute_service_pb2.RegisterComputeResponse(
            compute=request.compute, created=known is None
        )

    async def GetDeploymentConfig(
        self, request: compute_service_pb2.GetDeploymentConfigRequest, context: Any
    ) -> compute_service_pb2.GetDeploymentConfigResponse:
        self._maybe_fail("GetDeploymentConfig")
        self._authenticate(request.compute_id, context)
        tasks = []
        for index in range(TASKS_PER_JOB):
            task, key = task_id(request.job_id, index), secrets.token_hex(16)
            self.issued.setdefault(task, []).append(key)
            tasks.append(compute_pb2.TaskCredential(task_id=task, task_key=key))
        config = compute_pb2.DeploymentConfig(job_id=request.job_id, tasks=tasks)
        return compute_service_pb2.GetDeploymentConfigResponse(config=config)

    async def UpdateDeploymentStatus(
        self, request: compute_service_pb2.UpdateDeploymentStatusRequest, context: Any
    ) -> compute_service_pb2.UpdateDeploymentStatusResponse:
        self._maybe_fail("UpdateDeploymentStatus")
        self._authenticate(request.compute_id, context)
        self.reports += [(request.job_id, status) for status in request.statuses]
        return compute_service_pb2.UpdateDeploymentStatusResponse()

    def states(self, job_id: str) -> list[tuple[str, int, str]]:
        """(task id, state, message) of the job's reports, in arrival order."""
        return [(s.task_id, s.state, s.message) for job, s in self.reports if job == job_id]

    async def wait_for(self, job_id: str, state: int, count: int, timeout: float = 10.0) -> None:
        """Wait until the job has `count` reports in `state`."""
        await eventually(
            lambda: sum(s == state for _, s, _ in self.states(job_id)) >= count,
            timeout,
            f"{count} reports of state {AgentStatus.State.Name(state)}",  # type: ignore[arg-type]
        )

    def _authenticate(self, compute_id: str, context: Any) -> None:
        key = self.keys.get(compute_id)
        if key is None or _metadata(context, md.COMPUTE_KEY) != key:
            raise PermissionDenied("PERMISSION_DENIED", f"not the api key of '{compute_id}'")

    def _maybe_fail(self, method: str) -> None:
        if method in self.failures:
            self.failures.remove(method)
            raise Unavailable("INJECTED", f"{method} failed on purpose")


def _metadata(context: Any, key: str) -> str | None:
    return dict(context.invocation_metadata() or ()).get(key)


@dataclass
class ComputeServer:
    """The fake and where it listens."""

    fake: FakeComputeService
    running: RunningServer

    @property
    def address(self) -> str:
        return self.running.address


@pytest.fixture
async def compute_server() -> AsyncIterator[ComputeServer]:
    fake = FakeComputeService()  # type: ignore[abstract]  # the reads a deployer never makes
    service = bind(
        compute_service_pb2.DESCRIPTOR.services_by_name["ComputeService"],
        compute_service_pb2_grpc.add_ComputeServiceServicer_to_server,
        fake,
    )
    running = await start_server([service], ServerOptions(port=0, grace_seconds=0.5))
    yield ComputeServer(fake, running)
    await running.stop()


async def eventually(
    condition: Callable[[], bool], timeout: float = 10.0, what: str = "the condition"
) -> None:
    """Wait until `condition()` holds, letting the event loop (and its servers) run."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether a process runs; zombies do not."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] not in ("Z", "X")


_FLAMELET = '''\
    #!{python}
    """A stand-in for flamelet: records how it was started, then behaves per MODE."""
    import json, os, signal, subprocess, sys, time

    MODE = {mode!r}
    task = sys.argv[sys.argv.index("--task-id") + 1]
    record = {{
        "argv": sys.argv,
        "task_key": os.environ.get("FLAME_TASK_KEY"),
        "deployer_env": sorted(k for k in os.environ if k.startswith("FLAME_DEPLOYER_")),
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
    }}
    if MODE in ("sleep", "stubborn"):
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        record["grandchild"] = grandchild.pid
    if MODE == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    path = os.path.join({records!r}, task + ".json")
    with open(path + ".tmp", "w") as out:
        json.dump(record, out)
    os.replace(path + ".tmp", path)
    print("fake flamelet", task, MODE, flush=True)
    if MODE == "exit0":
        sys.exit(0)
    if MODE == "exit5":
        sys.exit(5)
    time.sleep(60)
'''


@dataclass
class FakeFlamelet:
    """A fake flamelet program and what its runs recorded, one JSON file per task."""

    path: Path
    records_dir: Path

    def records(self) -> dict[str, dict[str, Any]]:
        """What each run recorded, by task id."""
        return {file.stem: json.loads(file.read_text()) for file in self.records_dir.glob("*.json")}

    async def wait_for_records(self, count: int, timeout: float = 10.0) -> dict[str, Any]:
        await eventually(lambda: len(self.records()) >= count, timeout, f"{count} flamelet runs")
        return self.records()

    def pids(self) -> list[int]:
        """Every process the runs started: the flamelets and their children."""
        return [
            pid
            for record in self.records().values()
            for pid in (record["pid"], record.get("grandchild"))
            if pid
        ]

    def kill_leftovers(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(OSError):
                command = Path(f"/proc/{pid}/cmdline").read_text()
                # Only processes still running these scripts: pids get reused.
                if alive(pid) and (str(self.path) in command or "time.sleep(60)" in command):
                    os.kill(pid, signal.SIGKILL)


MakeFlamelet = Callable[[str], FakeFlamelet]


@pytest.fixture
def fake_flamelet(tmp_path: Path) -> Iterator[MakeFlamelet]:
    """Write fake flamelet programs: mode `sleep` (with a child), `stubborn` (ignores
    SIGTERM), `exit0` or `exit5`; whatever they leave running is killed at the end."""
    made: list[FakeFlamelet] = []

    def make(mode: str) -> FakeFlamelet:
        folder = tmp_path / f"flamelet-{mode}-{len(made)}"
        records = folder / "records"
        records.mkdir(parents=True)
        path = folder / "flamelet"
        script = textwrap.dedent(_FLAMELET).format(
            python=sys.executable, mode=mode, records=str(records)
        )
        path.write_text(script)
        path.chmod(0o755)
        made.append(FakeFlamelet(path, records))
        return made[-1]

    yield make
    for flamelet in made:
        flamelet.kill_leftovers()
