"""A fake AgentService and a real notifier, in-process, for flamelet tests."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from flame.agent.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc
from flame.controlplane.metadata import TASK_KEY
from flame.flamelet.agent import AgentSettings, TaskAgent
from flame.flamelet.api import AgentApi
from flame.flamelet.retry import RetryPolicy
from flame.flamelet.seam import StartDataPlane
from flame.flamelet.workdir import WorkArea
from flame.job.v1 import task_pb2
from flame.notifier.app import Notifier, open_database, start_notifier
from flame.notify.v1 import event_pb2, notify_service_pb2, notify_service_pb2_grpc
from flame.rpc.client import open_channel
from flame.rpc.errors import NotFound, Unauthenticated
from flame.rpc.server import RunningServer, ServerOptions, bind, start_server

if TYPE_CHECKING:  # the async stub type exists only in the .pyi
    from flame.notify.v1.notify_service_pb2_grpc import NotifyServiceAsyncStub as NotifyStub

State = task_pb2.Task.State
KEY = "the-task-key"
ROLE = "trainer"
START = event_pb2.Event.TYPE_START_JOB
STOP = event_pb2.Event.TYPE_STOP_JOB


def bundle(files: dict[str, str | bytes]) -> bytes:
    """A zip of `files` (name → content)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return out.getvalue()


def role_bundle(main_py: str, role: str = ROLE) -> bytes:
    return bundle({f"{role}/main.py": main_py, f"{role}/__init__.py": ""})


@dataclass
class FakeAgentService(agent_service_pb2_grpc.AgentServiceServicer):
    """Serves one task's manifest and code; records what the agent reports."""

    job_id: str
    task_id: str
    key: str = KEY
    manifest: agent_pb2.TaskManifest = field(default_factory=agent_pb2.TaskManifest)
    code: bytes = b""
    statuses: list[agent_service_pb2.UpdateTaskStatusRequest] = field(default_factory=list)
    logs: bytearray = field(default_factory=bytearray)
    # AppendTaskLogs calls to fail with UNAVAILABLE before accepting any.
    failing_appends: int = 0
    # Each call's metadata key, to check the agent always sends it.
    seen_keys: list[str] = field(default_factory=list)

    def serve_role(
        self, main_py: str, *, max_run_time: int = 0, code: bytes | None = None, **config: Any
    ) -> None:
        """Serve `main_py` as the role's code (or `code` as the bundle, digest and all)."""
        self.code = role_bundle(main_py) if code is None else code
        settings = {"taskid": self.task_id, "role": ROLE, "job": {"id": self.job_id}, **config}
        self.manifest = agent_pb2.TaskManifest(
            job_id=self.job_id,
            task_id=self.task_id,
            role=ROLE,
            config_json=json.dumps(settings),
            code_size_bytes=len(self.code),
            code_sha256=hashlib.sha256(self.code).hexdigest(),
            max_run_time_seconds=max_run_time,
        )

    def states(self) -> list[int]:
        return [status.state for status in self.statuses]

    def final(self) -> agent_service_pb2.UpdateTaskStatusRequest:
        return self.statuses[-1]

    def _check(self, context: Any, job_id: str, task_id: str) -> None:
        key = dict(context.invocation_metadata()).get(TASK_KEY, "")
        self.seen_keys.append(key)
        if key != self.key:
            raise Unauthenticated("TASK_KEY_INVALID", "the task key is not valid")
        if (job_id, task_id) != (self.job_id, self.task_id):
            raise NotFound("TASK_NOT_FOUND", f"no task {task_id} in job {job_id}")

    async def GetTaskManifest(
        self, request: agent_service_pb2.GetTaskManifestRequest, context: Any
    ) -> agent_service_pb2.GetTaskManifestResponse:
        self._check(context, request.job_id, request.task_id)
        return agent_service_pb2.GetTaskManifestResponse(manifest=self.manifest)

    async def DownloadTaskCode(
        self, request: agent_service_pb2.DownloadTaskCodeRequest, context: Any
    ) -> AsyncIterator[agent_service_pb2.DownloadTaskCodeResponse]:
        self._check(context, request.job_id, request.task_id)
        for start in range(0, len(self.code), 100):
            yield agent_service_pb2.DownloadTaskCodeResponse(chunk=self.code[start : start + 100])

    async def UpdateTaskStatus(
        self, request: agent_service_pb2.UpdateTaskStatusRequest, context: Any
    ) -> agent_service_pb2.UpdateTaskStatusResponse:
        self._check(context, request.job_id, request.task_id)
        self.statuses.append(request)
        return agent_service_pb2.UpdateTaskStatusResponse()

    async def AppendTaskLogs(
        self, request_iterator: Any, context: Any
    ) -> agent_service_pb2.AppendTaskLogsResponse:
        received = bytearray()
        async for request in request_iterator:
            self._check(context, request.job_id, request.task_id)
            received += request.data
        if self.failing_appends > 0:
            self.failing_appends -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        self.logs += received
        return agent_service_pb2.AppendTaskLogsResponse(size_bytes=len(self.logs))


@dataclass
class Plane:
    """The fake apiserver and the real notifier one task's agent talks to."""

    service: FakeAgentService
    apiserver: RunningServer
    notifier: Notifier
    notify: NotifyStub

    @property
    def job_id(self) -> str:
        return self.service.job_id

    @property
    def task_id(self) -> str:
        return self.service.task_id

    async def publish(self, event_type: int, job_id: str | None = None) -> None:
        request = notify_service_pb2.PublishEventRequest(
            subscribers=[f"task/{self.task_id}"],
            event=event_pb2.Event(type=event_type, job_id=job_id or self.job_id),
        )
        await self.notify.PublishEvent(request, timeout=10)

    def settings(self, work_root: Path, **overrides: Any) -> AgentSettings:
        values: dict[str, Any] = {
            "job_id": self.job_id,
            "task_id": self.task_id,
            "task_key": KEY,
            "apiserver": self.apiserver.address,
            "tls": None,
            "area": WorkArea(work_root, self.job_id, self.task_id, owned_root=False),
            "stop_grace_seconds": 2.0,
        }
        return AgentSettings(**{**values, **overrides})

    async def run_agent(
        self,
        settings: AgentSettings,
        *,
        start_dataplane: StartDataPlane | None = None,
        timeout: float = 15.0,
        key: str = KEY,
    ) -> int:
        """Run an in-process agent until it ends; return its exit status."""
        async with open_channel(self.apiserver.address, tls=None) as channel:
            api = AgentApi(
                agent_service_pb2_grpc.AgentServiceStub(channel),
                job_id=settings.job_id,
                task_id=settings.task_id,
                task_key=key,
                policy=RetryPolicy(call_timeout=5, stream_timeout=5, budget=5),
            )
            agent = TaskAgent(settings, api, start_dataplane=start_dataplane)
            async with asyncio.timeout(timeout):
                return await agent.run(self.notify)


@pytest.fixture
async def notifier(mongo_uri: str, database_name: str) -> AsyncIterator[Notifier]:
    client, db = await open_database(mongo_uri, database_name)
    running = await start_notifier(db, ServerOptions(port=0, grace_seconds=1))
    yield running
    await running.stop()
    await client.close()


@pytest.fixture
async def plane(notifier: Notifier) -> AsyncIterator[Plane]:
    service = FakeAgentService(job_id=f"job-{uuid.uuid4().hex[:8]}", task_id=uuid.uuid4().hex)
    descriptor = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"]
    apiserver = await start_server(
        [bind(descriptor, agent_service_pb2_grpc.add_AgentServiceServicer_to_server, service)],
        ServerOptions(port=0, grace_seconds=1),
    )
    async with open_channel(notifier.address, tls=None) as channel:
        yield Plane(
            service, apiserver, notifier, notify_service_pb2_grpc.NotifyServiceStub(channel)
        )
    await apiserver.stop()


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting to be reaped is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `check()` holds, polling."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)
