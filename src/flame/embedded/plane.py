"""Starting, inspecting and stopping the embedded control plane under a home folder.

Layout of the home folder:
    config.yaml       flamectl configuration (endpoint, admin token, CA)
    tls/              private CA and server certificates
    db/               SecantusDB storage (kept across up/down)
    logs/<name>.log   each component's output
    run/state.json    what `up` started: pids and addresses, read by `down` and `status`
"""

from __future__ import annotations

import json
import re
import secrets
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

__all__ = ["Component", "ComponentHealth", "down", "internal_key_file", "status", "up"]

ADMIN_USER = "admin"
# The embedded compute, as the original's default deployer: datasets whose realm
# is `default/us` (or the compute id `default`) run here, as do all non-data tasks.
LOCAL_COMPUTE = "default"
LOCAL_REGION = "default/us"
_REGISTERED = re.compile(r'"message": "compute (registered)"')
_START_TIMEOUT = 60.0
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


def up(home: Path, *, log: Callable[[str], None] = lambda _: None) -> list[Component]:
    """Start the control plane under `home` unless it runs already; return its components."""
    running = _read_state(home)
    if running and all(is_alive(component.pid) for component in running):
        return running
    down(home)
    home.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority(home / "tls")
    secrets_env = {
        "FLAME_CONTROLLER_INTERNAL_KEY": (internal_key := secrets.token_urlsafe(32)),
        "FLAME_APISERVER_INTERNAL_KEY": internal_key,
        "FLAME_CONTROLLER_BOOTSTRAP_ADMIN_TOKEN": _admin_token(home),
    }
    components: list[Component] = []
    try:
        database = _start_database(home, log)
        components.append(database)
        notifier = _start_notifier(home, ca, database.address, log)
        components.append(notifier)
        controller = _start_controller(home, ca, database.address, notifier.address, secrets_env, log)
        components.append(controller)
        apiserver = _start_apiserver(home, ca, controller.address, secrets_env, log)
        components.append(apiserver)
        components.append(_start_deployer(home, ca, apiserver, notifier, secrets_env, log))
    finally:
        _write_state(home, components)
    _write_config(home, ca, apiserver.address, secrets_env)
    _write_secret(internal_key_file(home), internal_key)
    return components


def internal_key_file(home: Path) -> Path:
    """Where `up` keeps the apiserver–controller key, for tools that talk to the
    controller directly (the control-plane benchmark)."""
    return home / "run" / "internal.key"


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(secret)


def _admin_token(home: Path) -> str:
    """The admin token: the one already in config.yaml (the database keeps its hash),
    or a new one for a new home."""
    config = home / "config.yaml"
    if config.exists():
        token = (yaml.safe_load(config.read_text()) or {}).get("token")
        if token:
            return str(token)
    return "flm_" + secrets.token_urlsafe(30)


def _start_database(home: Path, log: Callable[[str], None]) -> Component:
    port = free_port()
    log_file = home / "logs" / "secantusdb.log"
    command = [
        str(_BIN / "secantusd-py"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--storage-path", str(home / "db"),
        "--log-level", "WARNING",
    ]
    pid = spawn(command, log_file=log_file)
    wait_for_port(port, pid, timeout=_START_TIMEOUT, log_file=log_file)
    log(f"secantusdb   127.0.0.1:{port}")
    return Component("secantusdb", pid, f"127.0.0.1:{port}", tls=False)


def _start_notifier(
    home: Path, ca: CertificateAuthority, database: str, log: Callable[[str], None]
) -> Component:
    cert = ca.issue("notifier")
    command = [
        str(_BIN / "flame-notifier"),
        "--tls-cert", str(cert.cert_file),
        "--tls-key", str(cert.key_file),
        "--mongo-uri", f"mongodb://{database}/",
        "--database", "flame_notifier",
    ]
    return _start_server("notifier", home, command, {}, log)


def _start_controller(
    home: Path,
    ca: CertificateAuthority,
    database: str,
    notifier: str,
    env: dict[str, str],
    log: Callable[[str], None],
) -> Component:
    cert = ca.issue("controller")
    command = [
        str(_BIN / "flame-controller"),
        "--tls-cert", str(cert.cert_file),
        "--tls-key", str(cert.key_file),
        "--mongo-uri", f"mongodb://{database}/",
        "--bootstrap-admin", ADMIN_USER,
        "--notifier", notifier,
        "--notifier-ca", str(ca.cert_file),
    ]
    return _start_server("controller", home, command, env, log)


def _start_apiserver(
    home: Path,
    ca: CertificateAuthority,
    controller: str,
    env: dict[str, str],
    log: Callable[[str], None],
) -> Component:
    cert = ca.issue("apiserver")
    command = [
        str(_BIN / "flame-apiserver"),
        "--tls-cert", str(cert.cert_file),
        "--tls-key", str(cert.key_file),
        "--controller", controller,
        "--controller-ca", str(ca.cert_file),
    ]
    return _start_server("apiserver", home, command, env, log)


def _start_deployer(
    home: Path,
    ca: CertificateAuthority,
    apiserver: Component,
    notifier: Component,
    env: dict[str, str],
    log: Callable[[str], None],
) -> Component:
    command = [
        str(_BIN / "flame-deployer"),
        "--compute-id", LOCAL_COMPUTE,
        "--region", LOCAL_REGION,
        "--apiserver", apiserver.address,
        "--notifier", notifier.address,
        "--ca-file", str(ca.cert_file),
        "--work-root", str(home / "deployer"),
    ]
    deployer_env = {
        "FLAME_DEPLOYER_ADMIN_TOKEN": env["FLAME_CONTROLLER_BOOTSTRAP_ADMIN_TOKEN"],
        "FLAME_DEPLOYER_COMPUTE_KEY": _compute_key(home),
    }
    log_file = home / "logs" / "deployer.log"
    log_file.unlink(missing_ok=True)
    pid = spawn(command, log_file=log_file, env=deployer_env)
    wait_for_announcement(log_file, pid, timeout=_START_TIMEOUT, pattern=_REGISTERED)
    log(f"{'deployer':<12} compute {LOCAL_COMPUTE} ({LOCAL_REGION})")
    return Component("deployer", pid, f"compute/{LOCAL_COMPUTE}", tls=False)


def _compute_key(home: Path) -> str:
    """The local compute's key: made once per home, since the compute stays registered."""
    path = home / "compute.key"
    if not path.exists():
        _write_secret(path, secrets.token_urlsafe(32))
    return path.read_text()


def _start_server(
    name: str, home: Path, command: list[str], env: dict[str, str], log: Callable[[str], None]
) -> Component:
    log_file = home / "logs" / f"{name}.log"
    log_file.unlink(missing_ok=True)
    pid = spawn(command, log_file=log_file, env=env)
    address = wait_for_announcement(log_file, pid, timeout=_START_TIMEOUT)
    log(f"{name:<12} {address}")
    return Component(name, pid, address, tls=True)


def _write_config(home: Path, ca: CertificateAuthority, endpoint: str, env: dict[str, str]) -> None:
    config = {
        "endpoint": endpoint,
        "token": env["FLAME_CONTROLLER_BOOTSTRAP_ADMIN_TOKEN"],
        "tls": {"ca_file": str(ca.cert_file)},
    }
    _write_secret(home / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def down(home: Path) -> list[Component]:
    """Stop everything `up` started under `home` (and nothing else); return what was stopped."""
    stopped = list(reversed(_read_state(home)))
    for component in stopped:
        stop_process_group(component.pid)
    _state_file(home).unlink(missing_ok=True)
    internal_key_file(home).unlink(missing_ok=True)
    return stopped


def status(home: Path) -> list[ComponentHealth]:
    """Each component's process state and, for gRPC servers, its health."""
    ca_file = home / "tls" / "ca.pem"
    return [_health(component, ca_file) for component in _read_state(home)]


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
