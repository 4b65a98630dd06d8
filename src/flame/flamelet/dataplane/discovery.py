"""How p2p ends find each other: the endpoints of a (job, channel, group, role).

An end registers the address of its bridge's PeerService when it joins a channel and
lists the other role's addresses; presence itself (JOIN, ALIVE, LEAVE) then travels
between the bridges. A listing is only a hint: an address is used once the end
behind it answers, and an end that announces itself is accepted only if the
discovery lists it at the address it announced.

Two discoveries:

* `ControlPlaneDiscovery` (a flamelet's task): AgentService.RegisterPeer and
  ListPeers through the apiserver, authenticated with the task key. The controller
  keeps endpoints until the job is deleted, so leaving re-registers the endpoint
  with an empty address, which listings skip; a crashed end's stale address simply
  stops answering.
* `DirectoryDiscovery` (standalone mode, no control plane): a folder shared by the
  ends, e.g. on one machine or a network file system. Each end writes
  `<root>/<job>/<channel>/<group>/<role>/<end_id>.json` holding
  `{"end_id": ..., "role": ..., "address": "host:port"}` atomically (a temporary file
  renamed over it) and removes it when it leaves. The root is the channel's
  `brokerHost`, else the task's `brokers` entry of sort `p2p`, as a `file://` URL
  or an absolute path; without either, `$FLAME_P2P_DIR`, else
  `<tmp>/flame-peers-<uid>`. Every name in the path is a checked topic level (see
  `config`), so none can climb out of the root.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlparse

import grpc

from flame.agent.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc
from flame.controlplane.metadata import TASK_KEY
from flame.flamelet.dataplane.config import TaskConfig
from flame.flamelet.dataplane.transport import Endpoint
from flame.rpc.client import open_channel
from flame.rpc.tls import ClientTls

__all__ = [
    "DIRECTORY_ENV",
    "ControlPlaneDiscovery",
    "DirectoryDiscovery",
    "Discovery",
    "DiscoveryRefused",
    "DiscoveryUnavailable",
    "directory_root",
    "directory_roots",
]

_log = logging.getLogger(__name__)

DIRECTORY_ENV = "FLAME_P2P_DIR"
# Worth trying again: the control plane is restarting or overloaded.
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)

Addresses = dict[str, str]
"""End id -> `host:port` of its PeerService."""

_T = TypeVar("_T")


class DiscoveryUnavailable(ConnectionError):
    """The discovery cannot be reached now; trying again may succeed."""


class DiscoveryRefused(PermissionError):
    """The discovery refused the end (a bad key, an ended job) or is misconfigured."""


class Discovery(ABC):
    """Registers the ends of channels and lists the other role's."""

    @abstractmethod
    async def register(self, endpoint: Endpoint, address: str) -> None:
        """Publish `endpoint`'s PeerService `address`.

        Raises:
            DiscoveryUnavailable: Not now; try again.
            DiscoveryRefused: Never, for this end.
        """

    @abstractmethod
    async def peers(self, endpoint: Endpoint) -> Addresses:
        """The addresses of the other role's ends in `endpoint`'s job, channel and group.

        Raises:
            DiscoveryUnavailable: Not now; try again.
            DiscoveryRefused: Never, for this end.
        """

    @abstractmethod
    async def unregister(self, endpoint: Endpoint) -> None:
        """Withdraw `endpoint`'s address (best effort)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; the discovery may be used again afterwards."""


class ControlPlaneDiscovery(Discovery):
    """Discovery through the apiserver's AgentService, as the task `task_key` opens.

    Args:
        apiserver: The apiserver's `host:port`.
        task_key: The task's key, sent as `x-flame-task-key`.
        tls: TLS to the apiserver; plaintext when None.
        timeout: Seconds each call may take.
    """

    def __init__(
        self, apiserver: str, *, task_key: str, tls: ClientTls | None, timeout: float = 5.0
    ) -> None:
        self._apiserver = apiserver
        self._tls = tls
        self._metadata = ((TASK_KEY, task_key),)
        self._timeout = timeout
        self._channel: grpc.aio.Channel | None = None

    async def register(self, endpoint: Endpoint, address: str) -> None:
        request = agent_service_pb2.RegisterPeerRequest(
            job_id=endpoint.job_id,
            endpoint=_peer_endpoint(endpoint, address),
            other_role=endpoint.other_role,
        )
        # The answer lists the other role's ends; the transport lists them anyway.
        await _rpc(
            "RegisterPeer",
            self._stub().RegisterPeer(request, metadata=self._metadata, timeout=self._timeout),
        )

    async def peers(self, endpoint: Endpoint) -> Addresses:
        request = agent_service_pb2.ListPeersRequest(
            job_id=endpoint.job_id,
            task_id=endpoint.end_id,
            channel=endpoint.channel,
            group=endpoint.group,
            role=endpoint.other_role,
        )
        response = await _rpc(
            "ListPeers",
            self._stub().ListPeers(request, metadata=self._metadata, timeout=self._timeout),
        )
        return _addresses(response.peers)

    async def unregister(self, endpoint: Endpoint) -> None:
        # The contract has no deregistration: an empty address is one nobody dials.
        try:
            await self.register(endpoint, "")
        except (DiscoveryUnavailable, DiscoveryRefused) as error:
            _log.info("could not withdraw the p2p endpoint: %s", error)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close(None)

    def _stub(self) -> agent_service_pb2_grpc.AgentServiceAsyncStub:
        if self._channel is None:
            self._channel = open_channel(self._apiserver, tls=self._tls)
        return agent_service_pb2_grpc.AgentServiceStub(self._channel)


async def _rpc(method: str, call: Awaitable[_T]) -> _T:
    """The result of a discovery call; its RpcError as DiscoveryUnavailable or -Refused."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        why = f"{method}: {error.code().name}: {error.details()}"
        if error.code() in _TRANSIENT:
            raise DiscoveryUnavailable(why) from error
        raise DiscoveryRefused(why) from error


class DirectoryDiscovery(Discovery):
    """Discovery through files in a shared folder (see the module's docstring).

    Args:
        root_of: The root folder of an endpoint's channel.
    """

    def __init__(self, root_of: Callable[[Endpoint], Path]) -> None:
        self._root_of = root_of

    async def register(self, endpoint: Endpoint, address: str) -> None:
        await asyncio.to_thread(self._write, endpoint, address)

    async def peers(self, endpoint: Endpoint) -> Addresses:
        return await asyncio.to_thread(self._read, endpoint)

    async def unregister(self, endpoint: Endpoint) -> None:
        path = self._own_file(endpoint)
        try:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        except OSError as error:
            _log.warning("could not remove %s: %s", path, error)

    async def close(self) -> None:
        """Nothing to release: every call opens and closes its files."""

    def _folder(self, endpoint: Endpoint, role: str) -> Path:
        e = endpoint
        return self._root_of(e) / e.job_id / e.channel / e.group / role

    def _own_file(self, endpoint: Endpoint) -> Path:
        return self._folder(endpoint, endpoint.role) / f"{endpoint.end_id}.json"

    def _write(self, endpoint: Endpoint, address: str) -> None:
        path = self._own_file(endpoint)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            record = {"end_id": endpoint.end_id, "role": endpoint.role, "address": address}
            # Readers never see a half-written file: they see the old one or the new.
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(record))
            os.replace(temporary, path)
        except OSError as error:
            raise DiscoveryRefused(f"cannot register in {path.parent}: {error}") from error

    def _read(self, endpoint: Endpoint) -> Addresses:
        folder = self._folder(endpoint, endpoint.other_role)
        found: Addresses = {}
        try:
            paths = sorted(folder.glob("*.json"))
        except OSError as error:
            raise DiscoveryUnavailable(f"cannot list {folder}: {error}") from error
        for path in paths:
            address = _read_record(path, endpoint.other_role)
            if address:
                found[path.stem] = address
        return found


def directory_root(address: str) -> Path:
    """The discovery folder named by a p2p broker address.

    Args:
        address: A `file://` URL, an absolute path, or "" for the default.

    Raises:
        DiscoveryRefused: The address names no local folder (e.g. a metaserver's
            `host:port`, which standalone mode cannot use).
    """
    if not address:
        default = Path(tempfile.gettempdir()) / f"flame-peers-{os.getuid()}"
        return Path(os.environ.get(DIRECTORY_ENV) or default)
    parsed = urlparse(address)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(unquote(parsed.path))
    if not parsed.scheme and Path(address).is_absolute():
        return Path(address)
    raise DiscoveryRefused(f"p2p discovery {address!r} is not a folder: name one as file:///path")


def directory_roots(task: TaskConfig) -> Callable[[Endpoint], Path]:
    """The discovery folder of each channel of `task`: its `brokerHost`, else the
    task's `p2p` broker, else the default (see `directory_root`)."""

    def root_of(endpoint: Endpoint) -> Path:
        return directory_root(task.broker_host(task.channels[endpoint.channel]))

    return root_of


def _read_record(path: Path, role: str) -> str:
    """The address in an end's file, or "" when it is gone, partial or not that end's."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    if not isinstance(record, dict):
        return ""
    if record.get("end_id") != path.stem or record.get("role") != role:
        _log.warning("ignored a p2p discovery file that names another end: %s", path)
        return ""
    address = record.get("address")
    return address if isinstance(address, str) else ""


def _peer_endpoint(endpoint: Endpoint, address: str) -> agent_pb2.PeerEndpoint:
    return agent_pb2.PeerEndpoint(
        task_id=endpoint.end_id,
        role=endpoint.role,
        channel=endpoint.channel,
        group=endpoint.group,
        address=address,
    )


def _addresses(peers: Iterable[agent_pb2.PeerEndpoint]) -> Addresses:
    return {peer.task_id: peer.address for peer in peers if peer.address}
