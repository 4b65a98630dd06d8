"""Each server binary starts, reports health and lists its services to grpcurl;
together they serve every service in proto/."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import ServerProcess, start_server_process
from tests.test_contracts import all_proto_services

GRPCURL = Path(sys.executable).parent / "grpcurl"
INTERNAL_KEY = ["--internal-key", "test-internal-key"]
STANDARD = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def grpcurl(*args: str) -> str:
    result = subprocess.run(
        [str(GRPCURL), "-plaintext", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def listed_services(address: str) -> set[str]:
    return set(grpcurl(address, "list").split())


def health(address: str) -> str:
    return str(json.loads(grpcurl(address, "grpc.health.v1.Health/Check"))["status"])


@pytest.fixture(scope="module")
def controller(mongo_uri: str) -> Iterator[ServerProcess]:
    args = ["flame-controller", "--plaintext", "--mongo-uri", mongo_uri, *INTERNAL_KEY]
    with start_server_process(args) as server:
        yield server


@pytest.fixture(scope="module")
def apiserver(controller: ServerProcess) -> Iterator[ServerProcess]:
    args = [
        "flame-apiserver",
        "--plaintext",
        "--controller",
        controller.address,
        "--controller-plaintext",
        *INTERNAL_KEY,
    ]
    with start_server_process(args) as server:
        yield server


@pytest.fixture(scope="module")
def notifier(mongo_uri: str) -> Iterator[ServerProcess]:
    args = ["flame-notifier", "--plaintext", "--mongo-uri", mongo_uri, "--database", "binaries"]
    with start_server_process(args) as server:
        yield server


@pytest.fixture(scope="module")
def flamelet() -> Iterator[ServerProcess]:
    # The `flamelet` binary is a task agent, not a server (tests/flamelet run it): its
    # data-plane servers start with a task. They are served here the way the agent's
    # data plane serves them, through flame.flamelet.servers.
    script = """
import asyncio, pathlib, tempfile
from flame.dataplane.v1.channel_service_pb2_grpc import ChannelServiceServicer
from flame.flamelet.servers import channel_services, peer_services
from flame.peer.v1.peer_service_pb2_grpc import PeerServiceServicer
from flame.rpc.command import announce
from flame.rpc.server import ServerOptions, serve_until_signal, start_server

async def serve():
    with tempfile.TemporaryDirectory(prefix="flamelet-") as folder:
        socket = pathlib.Path(folder) / "channel.sock"
        peer = await start_server(peer_services(PeerServiceServicer()), ServerOptions())
        local = await start_server(
            channel_services(ChannelServiceServicer()), ServerOptions(host=f"unix:{socket}")
        )
        announce("flamelet", peer)
        announce("flamelet channel", local)
        await serve_until_signal(peer, on_stop=local.stop)

asyncio.run(serve())
"""
    with start_server_process(["python", "-c", script], announcements=2) as server:
        yield server


def test_each_binary_reports_serving(
    controller: ServerProcess,
    apiserver: ServerProcess,
    notifier: ServerProcess,
    flamelet: ServerProcess,
) -> None:
    for server in (controller, apiserver, notifier, flamelet):
        assert health(server.address) == "SERVING"


def test_apiserver_lists_the_public_services(apiserver: ServerProcess) -> None:
    assert listed_services(apiserver.address) == STANDARD | {
        "flame.design.v1.DesignService",
        "flame.data.v1.DatasetService",
        "flame.job.v1.JobService",
        "flame.user.v1.UserService",
        "flame.compute.v1.ComputeService",
        "flame.agent.v1.AgentService",
    }


def test_apiserver_describes_a_forwarded_method_through_reflection(
    apiserver: ServerProcess,
) -> None:
    described = grpcurl(apiserver.address, "describe", "flame.job.v1.JobService")
    assert "rpc StartJob ( .flame.job.v1.StartJobRequest )" in described
    assert "rpc ReadTaskLogs ( .flame.job.v1.ReadTaskLogsRequest ) returns ( stream" in described


def test_binaries_together_serve_every_proto_service(
    controller: ServerProcess,
    apiserver: ServerProcess,
    notifier: ServerProcess,
    flamelet: ServerProcess,
) -> None:
    served: set[str] = set()
    for address in [controller.address, apiserver.address, notifier.address, *flamelet.addresses]:
        if address.startswith("unix:"):
            served |= set(grpcurl("-unix", address.removeprefix("unix:"), "list").split())
        else:
            served |= listed_services(address)
    assert all_proto_services() <= served


def test_server_refuses_to_start_without_tls_or_plaintext() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "flame-notifier")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "--plaintext" in result.stderr
