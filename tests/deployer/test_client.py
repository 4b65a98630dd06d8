"""ComputeClient against the fake ComputeService: credentials, refusals, retries."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from flame.compute.v1 import compute_pb2, compute_service_pb2_grpc
from flame.deployer.client import ComputeClient
from flame.deployer.deployer import ControlPlaneError
from flame.embedded.processes import free_port
from flame.rpc.client import open_channel
from tests.deployer.conftest import ADMIN_TOKEN, COMPUTE_KEY, ComputeServer, task_id

pytestmark = pytest.mark.timeout(20)

S = compute_pb2.AgentStatus


@pytest.fixture
async def client(compute_server: ComputeServer) -> AsyncIterator[ComputeClient]:
    async with open_channel(compute_server.address, tls=None) as channel:
        stub = compute_service_pb2_grpc.ComputeServiceStub(channel)
        yield ComputeClient(stub, "default", COMPUTE_KEY, retry_seconds=5)


async def test_register_creates_then_confirms(
    client: ComputeClient, compute_server: ComputeServer
) -> None:
    assert await client.register("default/us", ADMIN_TOKEN) is True
    assert await client.register("default/us", ADMIN_TOKEN) is False
    assert compute_server.fake.keys == {"default": COMPUTE_KEY}


async def test_register_with_another_key_is_refused_with_its_reason(
    client: ComputeClient, compute_server: ComputeServer
) -> None:
    compute_server.fake.keys["default"] = "the-key-it-was-registered-with"
    with pytest.raises(ControlPlaneError, match="RegisterCompute refused") as caught:
        await client.register("default/us", ADMIN_TOKEN)
    assert (caught.value.reason, caught.value.retryable) == ("COMPUTE_ALREADY_EXISTS", False)


async def test_register_without_an_admin_token_is_refused(client: ComputeClient) -> None:
    with pytest.raises(ControlPlaneError, match="PERMISSION_DENIED"):
        await client.register("default/us", "not-an-admin")


async def test_register_retries_while_unavailable(
    client: ComputeClient, compute_server: ComputeServer
) -> None:
    compute_server.fake.failures = ["RegisterCompute", "RegisterCompute"]
    assert await client.register("default/us", ADMIN_TOKEN, within=10) is True
    assert compute_server.fake.failures == []


async def test_register_gives_up_on_an_unreachable_apiserver_at_its_deadline() -> None:
    async with open_channel(f"127.0.0.1:{free_port()}", tls=None) as channel:
        client = ComputeClient(compute_service_pb2_grpc.ComputeServiceStub(channel), "c", "k" * 16)
        began = time.monotonic()
        with pytest.raises(ControlPlaneError, match="did not succeed within 2 s") as caught:
            await client.register("default/us", ADMIN_TOKEN, within=2)
    assert caught.value.retryable
    assert 1.9 < time.monotonic() - began < 4


async def test_deployment_calls_carry_the_compute_key(
    client: ComputeClient, compute_server: ComputeServer
) -> None:
    await client.register("default/us", ADMIN_TOKEN)
    config = await client.deployment_config("job1")
    assert [task.task_id for task in config.tasks] == [task_id("job1", 0), task_id("job1", 1)]
    status = S(task_id=config.tasks[0].task_id, state=S.STATE_DEPLOY_SUCCEEDED)
    await client.report("job1", [status])
    assert compute_server.fake.reports == [("job1", status)]


async def test_a_wrong_compute_key_is_refused_and_not_retried(
    client: ComputeClient, compute_server: ComputeServer
) -> None:
    compute_server.fake.keys["default"] = "another-key-0123456789"
    with pytest.raises(ControlPlaneError, match="GetDeploymentConfig refused") as caught:
        await client.deployment_config("job1")
    assert not caught.value.retryable


async def test_deployment_calls_retry_while_unavailable(
    client: ComputeClient, compute_server: ComputeServer
) -> None:
    await client.register("default/us", ADMIN_TOKEN)
    compute_server.fake.failures = ["GetDeploymentConfig", "UpdateDeploymentStatus"]
    config = await client.deployment_config("job1")
    await client.report("job1", [S(task_id=config.tasks[0].task_id, state=S.STATE_EXITED)])
    assert len(compute_server.fake.reports) == 1
