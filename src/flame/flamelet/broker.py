"""How the flamelet's data plane authenticates to the MQTT broker.

The broker's address comes from the task config (`brokers`); the credentials
come from the flamelet's own configuration, so the role code never sees them:
`--broker-username` (`{job}` stands for the job id: per-job users confined by the
broker's ACL `pattern readwrite flame/%u/#`), the password from the environment
variable FLAME_BROKER_PASSWORD only, and `--broker-ca-file` for TLS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flame.agent.v1 import agent_pb2
from flame.flamelet.dataplane import BrokerSettings
from flame.flamelet.seam import DataPlaneHandle, StartDataPlane, start

__all__ = ["BROKER_PASSWORD_ENV", "BrokerCredentials", "with_broker_credentials"]

BROKER_PASSWORD_ENV = "FLAME_BROKER_PASSWORD"


@dataclass(frozen=True)
class BrokerCredentials:
    """The flamelet's broker identity; empty means anonymous, without TLS."""

    username_template: str = ""
    password: str = ""
    ca_file: Path | None = None

    def settings(self, manifest: agent_pb2.TaskManifest) -> BrokerSettings | None:
        """The broker settings of one task: its config's broker, these credentials."""
        if not (self.username_template or self.ca_file):
            return None
        username = self.username_template.format(job=manifest.job_id) or None
        settings = BrokerSettings(
            username=username, password=self.password or None, tls_ca_file=self.ca_file
        )
        address = _mqtt_broker(json.loads(manifest.config_json))
        return settings.at(address) if address else settings


def _mqtt_broker(config: dict[str, Any]) -> str:
    for broker in config.get("brokers") or []:
        if broker.get("sort") == "mqtt" and broker.get("host"):
            return str(broker["host"])
    return ""


def with_broker_credentials(
    starter: StartDataPlane, credentials: BrokerCredentials
) -> StartDataPlane:
    """`starter` with the task's broker settings added to every call."""

    async def start_with_broker(manifest: agent_pb2.TaskManifest, **kwargs: Any) -> DataPlaneHandle:
        broker = credentials.settings(manifest)
        if broker is None:
            return await start(starter, manifest, **kwargs)
        return await start(
            lambda *args, **more: starter(*args, broker=broker, **more), manifest, **kwargs
        )

    return start_with_broker
