"""Fixtures of the SDK tests: example task configurations, a fake data plane, and
a real mosquitto broker."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flame.channel import Channel, Timeouts
from flame.channel_manager import ChannelManager
from flame.config import Config
from tests.sdk.fake_dataplane import FakeDataPlane
from tests.support.examples import EXAMPLES
from tests.support.processes import free_port, wait_for_port

HIER_TASKS = EXAMPLES / "hier_mnist/expected_tasks"
TASK_ID = "5a2c0b8e9d3f4a1b6c7d8e9f0a1b2c3d4e5f6a7b"
CHANNEL = "param-channel"
PEERS = ("agg-eu", "agg-na")
FAST = Timeouts(recv=5.0, send=5.0, join=5.0, call=5.0)


def hier_task(number: int) -> dict[str, Any]:
    """hier_mnist's expected task `number` with a task id, as the control plane sends it."""
    task: dict[str, Any] = json.loads((HIER_TASKS / f"{number}.json").read_text())
    return {**task, "taskid": TASK_ID}


@pytest.fixture
def trainer_dict() -> dict[str, Any]:
    """A hier_mnist trainer of group `na`, on `param-channel` with middle aggregators."""
    return copy.deepcopy(hier_task(7))


@pytest.fixture
def trainer_config(trainer_dict: dict[str, Any]) -> Config:
    return Config.from_dict(trainer_dict)


@pytest.fixture
def dataplane() -> Iterator[FakeDataPlane]:
    plane = FakeDataPlane([CHANNEL], other_role="middle-aggregator")
    yield plane
    plane.stop()


@pytest.fixture
def manager(trainer_config: Config, dataplane: FakeDataPlane) -> Iterator[ChannelManager]:
    with ChannelManager(trainer_config, socket_path=dataplane.socket_path, timeouts=FAST) as cm:
        yield cm


@pytest.fixture
def channel(manager: ChannelManager, dataplane: FakeDataPlane) -> Channel:
    """`param-channel`, joined, with the two peers of PEERS on it."""
    for peer in PEERS:
        dataplane.add_end(CHANNEL, peer)
    return manager.join(CHANNEL)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[int]:
    """A mosquitto broker on a free local port, anonymous, in memory."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n"
    )
    broker = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, timeout=10, process=broker)
        yield port
    finally:
        broker.terminate()
        broker.wait(10)
