"""Large weights between two role processes in standalone mode, through each backend:
a 100 MB and a 400 MB tensor cross from the aggregator to the trainer with matching
digests (each process runs its own bridge; MQTT through mosquitto, p2p direct)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flame._dataplane_client import SHARED_FILES_ENV
from tests.sdk.test_standalone import (
    COMMON,
    finish,
    printed,
    start_role,
    task_config,
)

pytestmark = pytest.mark.integration

SENDER = """
manager = channel_manager(Config(sys.argv[1]))
manager.join_all()
channel = manager.get_by_tag("distribute")
channel.await_join(timeout=60)
trainer = channel.one_end()
size = int(sys.argv[2])
weights = {"w": torch.arange(size // 4, dtype=torch.float32)}
channel.send(trainer, {MessageType.WEIGHTS: weights}, timeout=240)
print("SENT", digest(weights), flush=True)
message, _ = channel.recv(trainer, timeout=240)
assert message[MessageType.EOT] is True
print("AGGREGATOR DONE", flush=True)
"""

RECEIVER = """
with ChannelManager(Config(sys.argv[1])) as manager:
    manager.join_all()
    channel = manager.get_by_tag("fetch")
    channel.await_join(timeout=60)
    aggregator = channel.one_end()
    message, _ = channel.recv(aggregator, timeout=240)
    print("RECEIVED", digest(message[MessageType.WEIGHTS]), flush=True)
    channel.send(aggregator, {MessageType.EOT: True})
print("TRAINER DONE", flush=True)
"""


def configure(folder: Path, backend: str, broker_port: int) -> None:
    for role, body in (("aggregator", SENDER), ("trainer", RECEIVER)):
        config: dict[str, Any] = task_config(role, broker_port)
        if backend == "p2p":
            config["backend"] = "p2p"
            config["brokers"] = [{"sort": "p2p", "host": (folder / "peers").as_uri()}]
        (folder / role).mkdir()
        (folder / role / "main.py").write_text(COMMON + body)
        (folder / role / "config.json").write_text(json.dumps(config))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["mqtt", "p2p"])
@pytest.mark.parametrize("megabytes", [100, 400])
@pytest.mark.parametrize("handover", ["shared files", "chunk streams"])
def test_a_large_tensor_crosses_intact(
    tmp_path: Path,
    mosquitto: int,
    backend: str,
    megabytes: int,
    handover: str,
) -> None:
    """Both ways between role code and its bridge: files on /dev/shm, or chunk streams."""
    configure(tmp_path, backend, mosquitto)
    size = str(megabytes * 1_000_000)
    env = {SHARED_FILES_ENV: "1" if handover == "shared files" else "0"}
    processes = {
        role: start_role(tmp_path, role, size, env=env) for role in ("trainer", "aggregator")
    }
    outputs = {role: finish(process, timeout=280) for role, process in processes.items()}
    assert "AGGREGATOR DONE" in outputs["aggregator"] and "TRAINER DONE" in outputs["trainer"]
    assert printed(outputs["aggregator"], "SENT") == printed(outputs["trainer"], "RECEIVED")
