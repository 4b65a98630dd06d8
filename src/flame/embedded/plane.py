"""Starting, repairing, inspecting and stopping the embedded control plane.

Layout of the home folder:
    config.yaml       flamectl configuration (endpoint, admin token, CA)
    compute.key       the local compute's key (the compute stays registered)
    tls/              private CA and server certificates
    db/               SecantusDB storage (kept across up/down)
    mqtt/             the MQTT broker's configuration
    mlflow/           the model registry (MLflow on SQLite) and its artifacts
    deployer/         the local deployer's task work folders and logs
    logs/<name>.log   each component's output
    run/state.json    what `up` started: pids and addresses, read by `down` and `status`
    run/internal.key  the apiserver-controller key

`up` is idempotent: on a running plane it starts only the components that died,
on their old addresses, so the others (and the jobs they run) carry on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flame.embedded.processes import (
    free_port,
    is_alive,
    spawn,
    stop_process_group,
    wait_for_announcement,
    wait_for_port,
)
from flame.rpc.certs import CertificateAuthority

__all__ = [
    "Component",
    "ComponentHealth",
    "down",
    "internal_key_file",
    "registry_uri",
    "status",
    "up",
]

ADMIN_USER = "admin"
# The embedded compute, as the original's default deployer: datasets whose realm
# is `default/us` (or the compute id `default`) run here, as do all non-data tasks.
LOCAL_COMPUTE = "default"
LOCAL_REGION = "default/us"
_REGISTERED = re.compile(r'"message": "compute (registered)"')
_START_TIMEOUT = 60.0
# Debian installs mosquitto in /usr/sbin, which a user's PATH may lack.
_SBIN_MOSQUITTO = (Path("/usr/sbin/mosquitto"), Path("/usr/local/sbin/mosquitto"))
_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Component:
    """One process `up` started."""

    name: str
    pid: int
    address: str
    tls: bool


@dataclass(frozen=True)
class ComponentHealth:
    """What `status` found for one component."""

    name: str
    pid: int
    address: str
    running: bool
    serving: str


@dataclass
class _Plan:
    """What starting the components needs: the home, its CA and secrets, and the
    addresses of components already up (later ones connect to earlier ones)."""

    home: Path
    ca: CertificateAuthority
    internal_key: str
    admin_token: str
    log: Callable[[str], None]
    started: dict[str, Component]
    previous: dict[str, Component]

    def port_of(self, name: str) -> int:
        """The port a component had before, so that its clients find it again."""
        earlier = self.previous.get(name)
        return int(earlier.address.rsplit(":", 1)[1]) if earlier and ":" in earlier.address else 0

    def address(self, name: str) -> str:
        return self.started[name].address


def up(home: Path, *, log: Callable[[str], None] = lambda _: None) -> list[Component]:
    """Start the control plane under `home`, or the components of it that died."""
    previous = {component.name: component for component in _read_state(home)}
    home.mkdir(parents=True, exist_ok=True)
    plan = _Plan(
        home=home,
        ca=CertificateAuthority(home / "tls"),
        internal_key=_read_or_make(internal_key_file(home), lambda: secrets.token_urlsafe(32)),
        admin_token=_admin_token(home),
        log=log,
        started={},
        previous=previous,
    )
    _create_registry(plan)
    try:
        for name, start in _STARTERS:
            earlier = previous.get(name)
            if earlier is not None and is_alive(earlier.pid):
                plan.started[name] = earlier
            else:
                plan.started[name] = start(plan)
    finally:
        _write_state(home, list(plan.started.values()))
    _write_config(home, plan)
    return list(plan.started.values())


def registry_uri(home: Path) -> str:
    """The MLflow tracking and model-registry URI the tasks of this plane use: a
    SQLite file, so that no MLflow server needs to run."""
    folder = home / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _create_registry(plan: _Plan) -> None:
    """Create the registry's tables now: tasks that all find an empty SQLite file
    at once race to create them, and all but one fail."""
    if (plan.home / "mlflow" / "mlflow.db").exists() or importlib.util.find_spec("mlflow") is None:
        return
    script = "import sys, mlflow; mlflow.MlflowClient(sys.argv[1]).search_experiments()"
    subprocess.run(
        [sys.executable, "-c", script, registry_uri(plan.home)],
        check=True,
        capture_output=True,
        timeout=_START_TIMEOUT,
    )
    plan.log(f"{'registry':<12} {registry_uri(plan.home)}")


def internal_key_file(home: Path) -> Path:
    """Where `up` keeps the apiserver-controller key, for tools that talk to the
    controller directly (the control-plane benchmark)."""
    return home / "run" / "internal.key"


def down(home: Path) -> list[Component]:
    """Stop everything `up` started under `home` (and nothing else); return what was stopped."""
    stopped = list(reversed(_read_state(home)))
    for component in stopped:
        stop_process_group(component.pid)
    _state_file(home).unlink(missing_ok=True)
    return stopped


def status(home: Path) -> list[ComponentHealth]:
    """Each component's process state and, for gRPC servers, its health."""
    ca_file = home / "tls" / "ca.pem"
    return [_health(component, ca_file) for component in _read_state(home)]


# Starting each component.


def _start_database(plan: _Plan) -> Component:
    port = plan.port_of("secantusdb") or free_port()
    log_file = plan.home / "logs" / "secantusdb.log"
    command = [
        str(_BIN / "secantusd-py"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--storage-path", str(plan.home / "db"),
        "--log-level", "WARNING",
    ]  # fmt: skip
    pid = spawn(command, log_file=log_file)
    wait_for_port(port, pid, timeout=_START_TIMEOUT, log_file=log_file)
    plan.log(f"{'secantusdb':<12} 127.0.0.1:{port}")
    return Component("secantusdb", pid, f"127.0.0.1:{port}", tls=False)


def _start_broker(plan: _Plan) -> Component:
    """mosquitto when the machine has it, else the in-Python amqtt broker."""
    port = plan.port_of("mqtt") or free_port()
    log_file = _fresh_log(plan.home, "mqtt")
    mosquitto = shutil.which("mosquitto") or next(
        (str(path) for path in _SBIN_MOSQUITTO if path.exists()), None
    )
    if mosquitto:
        command = [mosquitto, "-c", str(_mosquitto_config(plan.home, port))]
    else:
        command = [sys.executable, "-m", "flame.embedded.amqtt_broker", "--port", str(port)]
    pid = spawn(command, log_file=log_file)
    wait_for_port(port, pid, timeout=_START_TIMEOUT, log_file=log_file)
    plan.log(f"{'mqtt':<12} 127.0.0.1:{port} ({Path(command[0]).name if mosquitto else 'amqtt'})")
    return Component("mqtt", pid, f"127.0.0.1:{port}", tls=False)


def _mosquitto_config(home: Path, port: int) -> Path:
    folder = home / "mqtt"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence false",
        # Small frames (acks, presence) would otherwise wait ~40 ms for Nagle.
        "set_tcp_nodelay true",
    ]
    if os.geteuid() == 0:
        lines.append("user root")  # mosquitto would drop to a user that cannot read this home
    path = folder / "mosquitto.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def _start_notifier(plan: _Plan) -> Component:
    cert = plan.ca.issue("notifier")
    command = [
        str(_BIN / "flame-notifier"),
        "--tls-cert", str(cert.cert_file),
        "--tls-key", str(cert.key_file),
        "--mongo-uri", f"mongodb://{plan.address('secantusdb')}/",
        "--database", "flame_notifier",
    ]  # fmt: skip
    return _start_server("notifier", plan, command, {})


def _start_controller(plan: _Plan) -> Component:
    cert = plan.ca.issue("controller")
    command = [
        str(_BIN / "flame-controller"),
        "--tls-cert", str(cert.cert_file),
        "--tls-key", str(cert.key_file),
        "--mongo-uri", f"mongodb://{plan.address('secantusdb')}/",
        "--bootstrap-admin", ADMIN_USER,
        "--notifier", plan.address("notifier"),
        "--notifier-ca", str(plan.ca.cert_file),
        "--broker", f"mqtt={plan.address('mqtt')}",
        "--registry", f"mlflow={registry_uri(plan.home)}",
    ]  # fmt: skip
    env = {
        "FLAME_CONTROLLER_INTERNAL_KEY": plan.internal_key,
        "FLAME_CONTROLLER_BOOTSTRAP_ADMIN_TOKEN": plan.admin_token,
    }
    return _start_server("controller", plan, command, env)


def _start_apiserver(plan: _Plan) -> Component:
    cert = plan.ca.issue("apiserver")
    command = [
        str(_BIN / "flame-apiserver"),
        "--tls-cert", str(cert.cert_file),
        "--tls-key", str(cert.key_file),
        "--controller", plan.address("controller"),
        "--controller-ca", str(plan.ca.cert_file),
    ]  # fmt: skip
    return _start_server(
        "apiserver", plan, command, {"FLAME_APISERVER_INTERNAL_KEY": plan.internal_key}
    )


def _start_deployer(plan: _Plan) -> Component:
    command = [
        str(_BIN / "flame-deployer"),
        "--compute-id", LOCAL_COMPUTE,
        "--region", LOCAL_REGION,
        "--apiserver", plan.address("apiserver"),
        "--notifier", plan.address("notifier"),
        "--ca-file", str(plan.ca.cert_file),
        "--work-root", str(plan.home / "deployer"),
    ]  # fmt: skip
    env = {
        "FLAME_DEPLOYER_ADMIN_TOKEN": plan.admin_token,
        "FLAME_DEPLOYER_COMPUTE_KEY": _read_or_make(
            plan.home / "compute.key", lambda: secrets.token_urlsafe(32)
        ),
    }
    log_file = _fresh_log(plan.home, "deployer")
    pid = spawn(command, log_file=log_file, env=env)
    wait_for_announcement(log_file, pid, timeout=_START_TIMEOUT, pattern=_REGISTERED)
    plan.log(f"{'deployer':<12} compute {LOCAL_COMPUTE} ({LOCAL_REGION})")
    return Component("deployer", pid, f"compute/{LOCAL_COMPUTE}", tls=False)


def _start_server(name: str, plan: _Plan, command: list[str], env: dict[str, str]) -> Component:
    port = plan.port_of(name)
    log_file = _fresh_log(plan.home, name)
    pid = spawn([*command, "--port", str(port)], log_file=log_file, env=env)
    address = wait_for_announcement(log_file, pid, timeout=_START_TIMEOUT)
    plan.log(f"{name:<12} {address}")
    return Component(name, pid, address, tls=True)


# In start order: each component connects to the ones before it.
_STARTERS: tuple[tuple[str, Callable[[_Plan], Component]], ...] = (
    ("secantusdb", _start_database),
    ("mqtt", _start_broker),
    ("notifier", _start_notifier),
    ("controller", _start_controller),
    ("apiserver", _start_apiserver),
    ("deployer", _start_deployer),
)


# Files of the home folder.


def _fresh_log(home: Path, name: str) -> Path:
    log_file = home / "logs" / f"{name}.log"
    log_file.unlink(missing_ok=True)
    return log_file


def _state_file(home: Path) -> Path:
    return home / "run" / "state.json"


def _read_state(home: Path) -> list[Component]:
    path = _state_file(home)
    if not path.exists():
        return []
    return [Component(**item) for item in json.loads(path.read_text())["components"]]


def _write_state(home: Path, components: list[Component]) -> None:
    path = _state_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"components": [asdict(c) for c in components]}, indent=2))


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(secret)


def _read_or_make(path: Path, make: Callable[[], str]) -> str:
    if not path.exists():
        _write_secret(path, make())
    return path.read_text()


def _admin_token(home: Path) -> str:
    """The admin token: the one already in config.yaml (the database keeps its hash),
    or a new one for a new home."""
    config = home / "config.yaml"
    if config.exists():
        token = (yaml.safe_load(config.read_text()) or {}).get("token")
        if token:
            return str(token)
    return "flm_" + secrets.token_urlsafe(30)


def _write_config(home: Path, plan: _Plan) -> None:
    config = {
        "endpoint": plan.address("apiserver"),
        "token": plan.admin_token,
        "tls": {"ca_file": str(plan.ca.cert_file)},
    }
    _write_secret(home / "config.yaml", yaml.safe_dump(config, sort_keys=False))


# Health.


def _health(component: Component, ca_file: Path) -> ComponentHealth:
    running = is_alive(component.pid)
    serving = "-"
    if running and component.tls:
        serving = _check_health(component.address, ca_file)
    return ComponentHealth(component.name, component.pid, component.address, running, serving)


def _check_health(address: str, ca_file: Path) -> str:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
    try:
        with grpc.secure_channel(address, credentials) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
    except grpc.RpcError as error:
        return f"unreachable ({error.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
