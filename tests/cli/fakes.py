"""Fake control-plane services for flamectl tests, served by the real server runtime.

The servicers raise `flame.rpc.errors` domain errors, which the runtime's
interceptor turns into rich statuses, exactly as the controller's do. The
server runs on its own event loop in a background thread, because flamectl's
gRPC calls are blocking and would otherwise starve the loop they wait on.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from click.testing import CliRunner, Result
from google.protobuf import struct_pb2

from flame.cli.main import main
from flame.design.v1 import code_pb2, design_pb2, design_service_pb2, design_service_pb2_grpc
from flame.job.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from flame.rpc.certs import CertificateAuthority
from flame.rpc.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from flame.rpc.server import RunningServer, ServerOptions, Service, bind, start_server
from flame.rpc.tls import ServerTls
from flame.user.v1 import user_pb2, user_service_pb2, user_service_pb2_grpc

TOKEN = "good-token"
PAGE_SIZE = 2
CODE = b"PK-not-really-a-zip-" * 10


@dataclass
class Calls:
    """What the fakes saw: invocation metadata and deadlines, per method name."""

    metadata: list[dict[str, str]] = field(default_factory=list)
    time_remaining: list[float | None] = field(default_factory=list)
    page_tokens: list[str] = field(default_factory=list)

    def record(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        self.time_remaining.append(context.time_remaining())


def _authenticate(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    metadata = dict(context.invocation_metadata() or ())
    if metadata.get("authorization") != f"Bearer {TOKEN}":
        raise Unauthenticated("TOKEN_INVALID", "the API token is not valid")


class FakeDesigns(design_service_pb2_grpc.DesignServiceServicer):
    """Five designs served two per page; `ghost` is missing; `slow` never answers in time."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.designs = [design_pb2.Design(id=f"d{i}", name=f"design {i}") for i in range(5)]
        self.upload: list[design_service_pb2.UploadCodeRequest] = []
        self.code_sha256 = hashlib.sha256(CODE).hexdigest()

    async def ListDesigns(self, request: Any, context: Any) -> Any:
        self.calls.record(context)
        _authenticate(context)
        self.calls.page_tokens.append(request.page_token)
        start = int(request.page_token or 0)
        end = start + PAGE_SIZE
        next_token = str(end) if end < len(self.designs) else ""
        return design_service_pb2.ListDesignsResponse(
            designs=self.designs[start:end], next_page_token=next_token
        )

    async def GetDesign(self, request: Any, context: Any) -> Any:
        self.calls.record(context)
        _authenticate(context)
        if request.design_id == "slow":
            await asyncio.sleep(5)
        for design in self.designs:
            if design.id == request.design_id:
                return design_service_pb2.GetDesignResponse(design=design)
        raise NotFound("DESIGN_NOT_FOUND", f"no design {request.design_id}")

    async def CreateSchema(self, request: Any, context: Any) -> Any:
        raise InvalidArgument(
            "SCHEMA_INVALID",
            "the schema is not valid",
            violations=[
                FieldViolation("schema.channels[0].pair[1]", "no role 'ghost'"),
                FieldViolation("schema.roles[0].name", "must not be empty"),
            ],
        )

    async def UploadCode(self, request_iterator: Any, context: Any) -> Any:
        self.calls.record(context)
        async for message in request_iterator:
            self.upload.append(message)
        return design_service_pb2.UploadCodeResponse(
            code=code_pb2.CodeRevision(revision=1, roles=["aggregator", "trainer"])
        )

    async def DownloadCode(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.calls.record(context)
        code = code_pb2.CodeRevision(revision=3, size_bytes=len(CODE), sha256=self.code_sha256)
        yield design_service_pb2.DownloadCodeResponse(code=code)
        for start in range(0, len(CODE), 64):
            yield design_service_pb2.DownloadCodeResponse(chunk=CODE[start : start + 64])


class FakeJobs(job_service_pb2_grpc.JobServiceServicer):
    """One running job, `j1`, with integer hyperparameters."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        hyperparameters = struct_pb2.Struct()
        hyperparameters.update({"rounds": 5, "learningRate": 0.01})
        self.job = job_pb2.Job(
            id="j1",
            design_id="mnist",
            state=job_pb2.Job.STATE_RUNNING,
            task_counts={"running": 2},
            model_spec=job_pb2.ModelSpec(hyperparameters=hyperparameters),
        )

    async def GetJob(self, request: Any, context: Any) -> Any:
        if request.job_id != self.job.id:
            raise NotFound("JOB_NOT_FOUND", f"no job {request.job_id}")
        return job_service_pb2.GetJobResponse(job=self.job)

    async def StartJob(self, request: Any, context: Any) -> Any:
        raise FailedPrecondition(
            "ILLEGAL_STATE_TRANSITION",
            "a running job cannot start",
            metadata={"job": request.job_id, "state": "STATE_RUNNING"},
        )


class FakeUsers(user_service_pb2_grpc.UserServiceServicer):
    """Knows one user, `alice`, authenticated by TOKEN."""

    async def GetUser(self, request: Any, context: Any) -> Any:
        _authenticate(context)
        return user_service_pb2.GetUserResponse(user=user_pb2.User(id="alice"))


@dataclass
class FakeControlPlane:
    """The running fakes and a flamectl configuration pointing at them."""

    address: str
    config: Path
    calls: Calls
    designs: FakeDesigns
    jobs: FakeJobs

    def flamectl(self, *args: str) -> Result:
        """Run flamectl with this configuration."""
        return CliRunner().invoke(main, ["--config", str(self.config), *args])


def write_config(path: Path, address: str, token: str = TOKEN) -> Path:
    """A plaintext flamectl configuration for `address`."""
    path.write_text(yaml.safe_dump({"endpoint": address, "token": token, "plaintext": True}))
    return path


def _services(calls: Calls) -> tuple[list[Service], FakeDesigns, FakeJobs]:
    # The fakes implement only what the tests call; the rest answers UNIMPLEMENTED.
    designs, jobs = FakeDesigns(calls), FakeJobs(calls)  # type: ignore[abstract]

    def descriptor(module: Any, name: str) -> Any:
        return module.DESCRIPTOR.services_by_name[name]

    services = [
        bind(
            descriptor(design_service_pb2, "DesignService"),
            design_service_pb2_grpc.add_DesignServiceServicer_to_server,
            designs,
        ),
        bind(
            descriptor(job_service_pb2, "JobService"),
            job_service_pb2_grpc.add_JobServiceServicer_to_server,
            jobs,
        ),
        bind(
            descriptor(user_service_pb2, "UserService"),
            user_service_pb2_grpc.add_UserServiceServicer_to_server,
            FakeUsers(),  # type: ignore[abstract]
        ),
    ]
    return services, designs, jobs


def _tls_config(path: Path, address: str) -> Path:
    """A TLS flamectl configuration trusting the CA in `path`'s folder, named relatively."""
    path.write_text(
        yaml.safe_dump({"endpoint": address, "token": TOKEN, "tls": {"ca_file": "tls/ca.pem"}})
    )
    return path


@contextmanager
def fake_control_plane(tmp_path: Path, *, tls: bool = False) -> Iterator[FakeControlPlane]:
    """Serve the fakes on a background event loop for the duration of the block.

    With `tls`, the server presents a certificate from a CA in `tmp_path/tls`.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    calls = Calls()
    services, designs, jobs = _services(calls)
    server_tls = None
    if tls:
        certificate = CertificateAuthority(tmp_path / "tls").issue("server")
        server_tls = ServerTls(certificate.cert_file, certificate.key_file)
    options = ServerOptions(tls=server_tls, grace_seconds=0)
    running: RunningServer = asyncio.run_coroutine_threadsafe(
        start_server(services, options), loop
    ).result(timeout=10)
    try:
        configure = _tls_config if tls else write_config
        config = configure(tmp_path / "config.yaml", running.address)
        yield FakeControlPlane(running.address, config, calls, designs, jobs)
    finally:
        asyncio.run_coroutine_threadsafe(running.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
