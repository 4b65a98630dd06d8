"""End to end, standalone: a trainer and an aggregator started by hand
(`python <role>/main.py config.json`, no control plane, no FLAME_DATAPLANE_SOCKET)
exchange a torch state dict both ways through the in-process bridge and mosquitto."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flame._dataplane_client import SOCKET_ENV

pytestmark = pytest.mark.integration

JOB_ID = "6a0f3c2b1d4e5f6a7b8c9d0e"
TASK_IDS = {
    "aggregator": "a1" * 20,
    "trainer": "b2" * 20,
}

# What both roles share: the state dict the aggregator starts from, and a digest of a
# state dict's names, dtypes, shapes and bytes that each side prints for the test.
COMMON = """
import hashlib
import sys

import torch

from flame.channel_manager import ChannelManager, channel_manager
from flame.config import Config
from flame.mode.message import MessageType


def initial_weights():
    generator = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(32, 16, 3, 3, generator=generator),
        "fc.weight": torch.randn(1024, 2048, generator=generator).to(torch.bfloat16),
        "fc.bias": torch.randn(1024, generator=generator).to(torch.float16),
        "steps": torch.tensor(7),
    }


def digest(state):
    sha = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        sha.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        sha.update(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()
"""

# The original style: the shared manager, never cleaned up by hand. The last message
# is sent just before the process ends: leaving at exit must still deliver it.
AGGREGATOR = """
manager = channel_manager(Config(sys.argv[1]))
manager.join_all()
channel = manager.get_by_tag("distribute")
channel.await_join(timeout=60)
trainer = channel.one_end()
weights = initial_weights()
channel.send(trainer, {MessageType.WEIGHTS: weights, MessageType.ROUND: 1})
print("SENT", digest(weights), flush=True)
message, _ = channel.recv(trainer, timeout=60)
update = message[MessageType.WEIGHTS]
print("RECEIVED", digest(update), flush=True)
for name, tensor in weights.items():
    assert update[name].dtype == tensor.dtype, name
    assert torch.equal(update[name], tensor + 1), name
assert message[MessageType.DATASET_SIZE] == 600
channel.send(trainer, {MessageType.EOT: True})
print("AGGREGATOR DONE", flush=True)
"""

TRAINER = """
config = Config(sys.argv[1])
with ChannelManager(config) as manager:
    manager.join_all()
    channel = manager.get_by_tag("fetch")
    channel.await_join(timeout=60)
    aggregator = channel.one_end()
    message, _ = channel.recv(aggregator, timeout=60)
    weights = message[MessageType.WEIGHTS]
    print("RECEIVED", digest(weights), flush=True)
    update = {name: tensor + 1 for name, tensor in weights.items()}
    channel.send(aggregator, {MessageType.WEIGHTS: update, MessageType.DATASET_SIZE: 600})
    print("SENT", digest(update), flush=True)
    message, _ = channel.recv(aggregator, timeout=60)
    assert message[MessageType.EOT] is True
print("TRAINER DONE", flush=True)
"""


def task_config(role: str, broker_port: int) -> dict[str, Any]:
    return {
        "taskid": TASK_IDS[role],
        "role": role,
        "realm": "",
        "backend": "mqtt",
        "brokers": [{"sort": "mqtt", "host": f"127.0.0.1:{broker_port}"}],
        "groupAssociation": {"param-channel": "default"},
        "channels": [
            {
                "name": "param-channel",
                "pair": ["trainer", "aggregator"],
                "groupBy": {"type": "tag", "value": ["default"]},
                "funcTags": {
                    "aggregator": ["distribute", "aggregate"],
                    "trainer": ["fetch", "upload"],
                },
            }
        ],
        "job": {"id": JOB_ID, "name": "standalone"},
        "hyperparameters": {"rounds": 1},
        "selector": {"sort": "default", "kwargs": {}},
    }


def write_role(folder: Path, role: str, body: str, broker_port: int) -> None:
    (folder / role).mkdir()
    (folder / role / "main.py").write_text(COMMON + body)
    (folder / role / "config.json").write_text(json.dumps(task_config(role, broker_port)))


def start_role(
    folder: Path, role: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    inherited = {key: value for key, value in os.environ.items() if key != SOCKET_ENV}
    env = inherited | (env or {})
    return subprocess.Popen(
        [sys.executable, f"{role}/main.py", f"{role}/config.json", *args],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 90) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    assert process.returncode == 0, output
    return output


def printed(output: str, word: str) -> str:
    return next(line.split()[1] for line in output.splitlines() if line.startswith(word))


@pytest.mark.timeout(180)
def test_trainer_and_aggregator_exchange_a_state_dict(tmp_path: Path, mosquitto: int) -> None:
    write_role(tmp_path, "aggregator", AGGREGATOR, mosquitto)
    write_role(tmp_path, "trainer", TRAINER, mosquitto)

    processes = {role: start_role(tmp_path, role) for role in ("trainer", "aggregator")}
    outputs = {role: finish(process) for role, process in processes.items()}

    assert "AGGREGATOR DONE" in outputs["aggregator"]
    assert "TRAINER DONE" in outputs["trainer"]
    # Both left their channels cleanly, the aggregator at exit.
    assert all("could not leave" not in output for output in outputs.values()), outputs
    assert printed(outputs["aggregator"], "SENT") == printed(outputs["trainer"], "RECEIVED")
    assert printed(outputs["trainer"], "SENT") == printed(outputs["aggregator"], "RECEIVED")
