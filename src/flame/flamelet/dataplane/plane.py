"""Starting and stopping a task's data plane: the bridge and its local server."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from flame.agent.v1 import agent_pb2
from flame.flamelet.dataplane.bridge import Bridge
from flame.flamelet.dataplane.config import TaskConfig, parse_task_config
from flame.flamelet.dataplane.discovery import (
    ControlPlaneDiscovery,
    DirectoryDiscovery,
    directory_roots,
)
from flame.flamelet.dataplane.heap import keep_chunks_on_heap
from flame.flamelet.dataplane.mqtt import mqtt_transports
from flame.flamelet.dataplane.p2p import PeerHub, PeerSettings, p2p_transports
from flame.flamelet.dataplane.servicer import ChannelServicer
from flame.flamelet.dataplane.settings import BrokerSettings, TransferLimits
from flame.flamelet.dataplane.transport import Endpoint, TransportFactory
from flame.flamelet.servers import channel_services
from flame.rpc.server import RunningServer, ServerOptions, start_server
from flame.rpc.tls import ClientTls
from flame.wire.shared import make_shared_folder

__all__ = ["DataPlane", "start_bridge", "start_dataplane"]

_log = logging.getLogger(__name__)

SOCKET_NAME = "channel.sock"
# sun_path holds 108 bytes with its terminating NUL; keep a margin.
_MAX_SOCKET_PATH = 100
# Seconds the local server lets calls in flight finish when stopping.
_GRACE_SECONDS = 1.0


class DataPlane:
    """A running data plane: the bridge and the ChannelService the role code calls.

    Attributes:
        socket_path: The Unix socket of the ChannelService; the role code dials
            `unix:<socket_path>`.
        bridge: The task's channels.
    """

    def __init__(
        self,
        socket_path: str,
        bridge: Bridge,
        server: RunningServer,
        shared_folder: Path | None = None,
    ) -> None:
        """Wrap a started `server` serving `bridge` on `socket_path`, with the folder
        of its shared message files."""
        self.socket_path = socket_path
        self.bridge = bridge
        self._server = server
        self._shared_folder = shared_folder

    async def stop(self) -> None:
        """Stop serving, deliver what is pending (within the leave timeout), leave
        every channel, and remove the socket."""
        await self._server.stop()
        await self.bridge.close()
        self._remove_files()

    def _remove_files(self) -> None:
        Path(self.socket_path).unlink(missing_ok=True)
        # Files handed to role code that never took them.
        if self._shared_folder is not None:
            shutil.rmtree(self._shared_folder, ignore_errors=True)

    async def abort(self) -> None:
        """Stop at once and drop the connections with no goodbye, as a crash would:
        the peers learn of it from the last wills (MQTT) or the missing ALIVE
        announcements (p2p). For failure tests."""
        await self._server.server.stop(None)
        await self.bridge.abort()
        self._remove_files()


async def start_dataplane(
    manifest: agent_pb2.TaskManifest,
    *,
    work_dir: Path,
    task_key: str,
    apiserver: str,
    tls: ClientTls | None,
    broker: BrokerSettings | None = None,
    limits: TransferLimits | None = None,
    peer: PeerSettings | None = None,
) -> DataPlane:
    """Start the data plane of a flamelet's task.

    The MQTT transport needs only the broker. The p2p transport finds its peers
    through the control plane (AgentService.RegisterPeer and ListPeers, with
    `task_key` through `apiserver` over `tls`).

    Args:
        manifest: The task's manifest; its `config_json` names the channels.
        work_dir: The task's folder; the socket is `<work_dir>/channel.sock`, or a
            private temporary folder's when that path is too long for a socket.
        task_key: The task's key for the apiserver.
        apiserver: The apiserver's address.
        tls: TLS to the apiserver.
        broker: The MQTT broker and the job's credentials (username = job id); by
            default the config's broker address, anonymously.
        limits: Transfer sizes and timings.
        peer: Where the p2p server listens, its TLS and presence timings; with
            TLS and no `ca_file`, peers are verified with the CA of `tls`.

    Returns:
        The running data plane; `stop()` it when the task ends.

    Raises:
        ValueError: The manifest's configuration is invalid or names another task,
            or `peer` is unusable (see `PeerHub`).
    """
    config = json.loads(manifest.config_json)
    task = parse_task_config(config)
    if (task.task_id, task.job_id) != (manifest.task_id, manifest.job_id):
        raise ValueError(
            f"the config is for task {task.task_id} of job {task.job_id}, "
            f"not task {manifest.task_id} of job {manifest.job_id}"
        )
    limits = limits or TransferLimits()
    peer = peer or PeerSettings()
    if peer.tls is not None and peer.ca_file is None and tls is not None:
        peer = replace(peer, ca_file=tls.ca_file)
    discovery = ControlPlaneDiscovery(apiserver, task_key=task_key, tls=tls)
    p2p = p2p_transports(PeerHub(discovery, peer, limits))
    # The flamelet's process is the bridge's own (unlike a standalone role's).
    keep_chunks_on_heap()
    return await start_bridge(
        config,
        socket_path=_socket_path(work_dir),
        broker=broker,
        limits=limits,
        transports={"p2p": p2p},
    )


async def start_bridge(
    config: Mapping[str, Any],
    *,
    socket_path: Path,
    broker: BrokerSettings | None = None,
    limits: TransferLimits | None = None,
    transports: Mapping[str, TransportFactory] | None = None,
    peer: PeerSettings | None = None,
) -> DataPlane:
    """Serve ChannelService for a task on `socket_path`, bridged to its peers.

    The SDK's standalone mode calls this in-process; the flamelet calls it through
    `start_dataplane`. No channel is joined until the role code asks.

    Args:
        config: The task configuration JSON, parsed.
        socket_path: Where to serve; a stale socket there is replaced.
        broker: The MQTT broker and credentials. Its host and port win over the
            config's `brokers`; a channel's own `brokerHost` still wins over them.
            By default the config's broker address (port 1883), anonymously.
        limits: Transfer sizes and timings.
        transports: Transport factories per backend sort, added to (or replacing)
            the MQTT and p2p ones.
        peer: Where the p2p server listens, its TLS and presence timings. The p2p
            ends find each other through a shared folder (`DirectoryDiscovery`):
            the channel's `brokerHost` or the `p2p` broker as `file:///path`.

    Returns:
        The running data plane.

    Raises:
        ValueError: The configuration is invalid, or `peer` is unusable.
        OSError: The socket cannot be bound.

    Example:
        plane = await start_bridge(config, socket_path=Path("/tmp/t1/channel.sock"))
        ...  # the role code dials f"unix:{plane.socket_path}"
        await plane.stop()
    """
    task = parse_task_config(config)
    limits = limits or TransferLimits()
    hub = PeerHub(DirectoryDiscovery(directory_roots(task)), peer or PeerSettings(), limits)
    factories: dict[str, TransportFactory] = {
        "mqtt": mqtt_transports(_broker_of(task, broker), limits),
        "p2p": p2p_transports(hub),
        **(transports or {}),
    }
    shared_folder = make_shared_folder() if limits.shared_files else None
    bridge = Bridge(task, transports=factories, limits=limits, shared_folder=shared_folder)
    socket_path.unlink(missing_ok=True)
    try:
        server = await start_server(
            channel_services(ChannelServicer(bridge)),
            ServerOptions(host=f"unix:{socket_path}", grace_seconds=_GRACE_SECONDS),
        )
    except BaseException:
        if shared_folder is not None:
            shutil.rmtree(shared_folder, ignore_errors=True)
        raise
    # Only the task's own user may talk to its data plane.
    socket_path.chmod(0o600)
    _log.info("data plane serving", extra={"socket": str(socket_path), "task": task.task_id})
    return DataPlane(str(socket_path), bridge, server, shared_folder)


def _broker_of(
    task: TaskConfig, broker: BrokerSettings | None
) -> Callable[[Endpoint], BrokerSettings]:
    def settings(endpoint: Endpoint) -> BrokerSettings:
        spec = task.channels[endpoint.channel]
        if broker is None:
            address = task.broker_host(spec)
            return BrokerSettings().at(address) if address else BrokerSettings()
        return broker.at(spec.broker_host) if spec.broker_host else broker

    return settings


def _socket_path(work_dir: Path) -> Path:
    path = work_dir / SOCKET_NAME
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        return path
    return Path(tempfile.mkdtemp(prefix="flame-")) / SOCKET_NAME
