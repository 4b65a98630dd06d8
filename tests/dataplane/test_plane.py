"""The seams the flamelet and the SDK call: start_dataplane and start_bridge."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import grpc
import pytest

from flame.agent.v1 import agent_pb2
from flame.flamelet.dataplane import BrokerSettings, TransferLimits, start_dataplane
from flame.rpc.client import open_channel
from tests.dataplane.brokers import Mosquitto
from tests.dataplane.support import Task, Tasks, job_id, new_id, reason, task_config
from tests.support.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def manifest(config: dict[str, object]) -> agent_pb2.TaskManifest:
    job = config["job"]
    assert isinstance(job, dict)
    return agent_pb2.TaskManifest(
        job_id=job["id"],
        task_id=str(config["taskid"]),
        role=str(config["role"]),
        config_json=json.dumps(config),
    )


async def test_start_dataplane_serves_on_the_work_dirs_socket(
    mosquitto: Mosquitto, short_tmp: Path
) -> None:
    config = task_config(new_id(), "trainer", job=job_id())
    plane = await start_dataplane(
        manifest(config),
        work_dir=short_tmp,
        task_key="key",
        apiserver="127.0.0.1:1",
        tls=None,
        broker=BrokerSettings(port=mosquitto.port),
    )
    socket = Path(plane.socket_path)
    assert socket == short_tmp / "channel.sock"
    assert stat.S_IMODE(socket.stat().st_mode) == 0o600
    task = Task(plane, open_channel(f"unix:{socket}", tls=None), str(config["taskid"]))
    try:
        assert (await task.join()).end_id == config["taskid"]
    finally:
        await task.close()
        await plane.stop()
    assert not socket.exists()


async def test_a_work_dir_too_deep_for_a_socket_gets_a_short_one(
    mosquitto: Mosquitto, short_tmp: Path
) -> None:
    deep = short_tmp / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    config = task_config(new_id(), "trainer", job=job_id())
    plane = await start_dataplane(
        manifest(config), work_dir=deep, task_key="k", apiserver="x", tls=None,
        broker=BrokerSettings(port=mosquitto.port),
    )  # fmt: skip
    try:
        assert Path(plane.socket_path).exists()
        assert len(plane.socket_path) < 100
    finally:
        await plane.stop()


async def test_a_manifest_for_another_task_is_refused(short_tmp: Path) -> None:
    config = task_config(new_id(), "trainer", job=job_id())
    wrong = manifest(config)
    wrong.task_id = new_id()
    with pytest.raises(ValueError, match="not task"):
        await start_dataplane(wrong, work_dir=short_tmp, task_key="k", apiserver="x", tls=None)


async def test_a_backend_without_transport_fails_to_join(tasks: Tasks) -> None:
    task = await tasks.start("trainer", job=job_id(), join=False, backend="shm")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await task.join()
    assert reason(caught.value) == (grpc.StatusCode.FAILED_PRECONDITION, "BACKEND_UNSUPPORTED")


async def test_an_unreachable_broker_fails_the_join(tasks: Tasks) -> None:
    nowhere = BrokerSettings(port=free_port())
    limits = TransferLimits(connect_timeout=1.0)
    task = await tasks.start("trainer", job=job_id(), join=False, broker=nowhere, limits=limits)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await task.join()
    assert reason(caught.value) == (grpc.StatusCode.UNAVAILABLE, "BROKER_UNAVAILABLE")
