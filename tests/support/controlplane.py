"""A real control plane for integration tests: controller and apiserver processes
over a SecantusDB database, reached through the apiserver like users reach it."""

from __future__ import annotations

import secrets
import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml

from flame.user.v1 import user_pb2, user_service_pb2, user_service_pb2_grpc
from tests.support.processes import ServerProcess, start_server_process

__all__ = ["ControlPlane", "running_control_plane"]

ADMIN = "admin"


@dataclass
class ControlPlane:
    """Addresses and credentials of a running control plane."""

    apiserver: ServerProcess
    controller: ServerProcess
    notifier: ServerProcess
    admin_token: str
    internal_key: str
    mongo_uri: str
    database: str
    controller_args: list[str]
    environment: dict[str, str]
    stack: ExitStack

    @property
    def apiserver_address(self) -> str:
        return self.apiserver.address

    @property
    def controller_address(self) -> str:
        return self.controller.address

    def create_user(self, name: str, *, admin: bool = False) -> str:
        """Create a user through the apiserver and return its API token."""
        with grpc.insecure_channel(self.apiserver_address) as channel:
            reply = user_service_pb2_grpc.UserServiceStub(channel).CreateUser(
                user_service_pb2.CreateUserRequest(user=user_pb2.User(id=name, is_admin=admin)),
                metadata=(("authorization", f"Bearer {self.admin_token}"),),
                timeout=30,
            )
        return str(reply.token)

    def kill_controller(self) -> None:
        """SIGKILL the controller, as a crash would."""
        self.controller.process.send_signal(signal.SIGKILL)
        self.controller.process.wait(10)

    def start_controller(self) -> None:
        """Start a controller again on the same port (the apiserver reconnects to it)."""
        port = self.controller.address.rsplit(":", 1)[1]
        args = [*self.controller_args, "--port", port]
        self.controller = self.stack.enter_context(start_server_process(args, env=self.environment))

    def write_config(self, path: Path, token: str) -> Path:
        """Write a flamectl config for `token` at `path` and return it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        config = {"endpoint": self.apiserver_address, "token": token, "plaintext": True}
        path.write_text(yaml.safe_dump(config))
        return path


@contextmanager
def running_control_plane(
    mongo_uri: str, database: str, *, extra_controller_args: tuple[str, ...] = ()
) -> Iterator[ControlPlane]:
    """Start a notifier, a controller and an apiserver on free ports; stop them on exit."""
    internal_key = secrets.token_urlsafe(24)
    admin_token = "flm_" + secrets.token_urlsafe(30)
    environment = {
        "FLAME_CONTROLLER_INTERNAL_KEY": internal_key,
        "FLAME_CONTROLLER_BOOTSTRAP_ADMIN_TOKEN": admin_token,
        "FLAME_APISERVER_INTERNAL_KEY": internal_key,
    }
    with ExitStack() as stack:
        notifier_args = [
            "flame-notifier",
            "--plaintext",
            "--mongo-uri",
            mongo_uri,
            "--database",
            f"{database}_n",
        ]
        notifier = stack.enter_context(start_server_process(notifier_args))
        controller_args = [
            "flame-controller",
            "--plaintext",
            "--mongo-uri",
            mongo_uri,
            "--database",
            database,
            "--bootstrap-admin",
            ADMIN,
            "--broker",
            "mqtt=127.0.0.1:1883",
            "--notifier",
            notifier.address,
            "--notifier-plaintext",
            *extra_controller_args,
        ]
        controller = stack.enter_context(start_server_process(controller_args, env=environment))
        apiserver_args = [
            "flame-apiserver",
            "--plaintext",
            "--controller",
            controller.address,
            "--controller-plaintext",
        ]
        apiserver = stack.enter_context(start_server_process(apiserver_args, env=environment))
        yield ControlPlane(
            apiserver,
            controller,
            notifier,
            admin_token,
            internal_key,
            mongo_uri,
            database,
            controller_args,
            environment,
            stack,
        )
