"""The data plane's broker credentials come from the flamelet, its address from the config."""

from __future__ import annotations

import json
from pathlib import Path

from flame.agent.v1 import agent_pb2
from flame.flamelet.broker import BrokerCredentials


def manifest(brokers: list[dict[str, str]]) -> agent_pb2.TaskManifest:
    config = {"taskid": "t1", "job": {"id": "job-7", "name": "d"}, "brokers": brokers}
    return agent_pb2.TaskManifest(job_id="job-7", task_id="t1", config_json=json.dumps(config))


def test_without_credentials_the_config_alone_decides() -> None:
    assert BrokerCredentials().settings(manifest([{"sort": "mqtt", "host": "mq:1884"}])) is None


def test_per_job_username_password_and_the_configs_broker_address(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    credentials = BrokerCredentials("{job}", "secret", ca)
    brokers = [
        {"sort": "p2p", "host": "file:///peers"},
        {"sort": "mqtt", "host": "mq.example:8883"},
    ]
    settings = credentials.settings(manifest(brokers))
    assert settings is not None
    assert (settings.host, settings.port) == ("mq.example", 8883)
    assert (settings.username, settings.password, settings.tls_ca_file) == ("job-7", "secret", ca)
