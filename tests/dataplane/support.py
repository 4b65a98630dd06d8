"""Task configs, bridges started on their own Unix sockets, and a ChannelService
client with a deadline on every call."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from flame.dataplane.v1 import channel_pb2, channel_service_pb2, channel_service_pb2_grpc
from flame.flamelet.dataplane import (
    BrokerSettings,
    DataPlane,
    PeerSettings,
    TransferLimits,
    start_bridge,
)
from flame.flamelet.dataplane.transport import Bytes, Transport
from flame.rpc.client import open_channel
from flame.rpc.errors import error_details
from flame.transport.v1 import frame_pb2
from flame.wire import message_digest

if TYPE_CHECKING:
    from flame.dataplane.v1.channel_service_pb2_grpc import ChannelServiceAsyncStub

pb = channel_service_pb2
MIB = 1024 * 1024
CHANNEL = "param-channel"

# Quick to give up and to notice: a failing test fails in seconds, not minutes.
TEST_LIMITS = TransferLimits(stall_seconds=2.0, leave_grace_seconds=10.0, leave_timeout=5.0)
# p2p listings every second, so that a late end is found at once.
FAST = PeerSettings(rediscover_seconds=1.0)


def new_id() -> str:
    """A fresh 40-hex id, like the control plane's task ids."""
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]


def job_id() -> str:
    return uuid.uuid4().hex[:24]


def task_config(
    task_id: str,
    role: str,
    *,
    job: str,
    group: str = "default",
    groups: Sequence[str] = ("default",),
    pair: tuple[str, str] = ("trainer", "aggregator"),
    channel: str = CHANNEL,
    backend: str = "mqtt",
) -> dict[str, Any]:
    """A task configuration with one channel, in the original Flame shape."""
    return {
        "taskid": task_id,
        "role": role,
        "job": {"id": job, "name": "test"},
        "backend": "mqtt",
        "brokers": [{"sort": "mqtt", "host": "localhost"}],
        "groupAssociation": {channel: group},
        "channels": [
            {
                "name": channel,
                "pair": list(pair),
                "groupBy": {"type": "tag", "value": list(groups)},
                "funcTags": {pair[0]: ["fetch"], pair[1]: ["distribute"]},
                "backend": backend,
            }
        ],
    }


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def digest(data: bytes | bytearray) -> str:
    return message_digest([data])


@dataclass
class Received:
    header: channel_pb2.MessageHeader
    data: bytearray


class Task:
    """One bridge and a ChannelService client on its socket."""

    def __init__(self, plane: DataPlane, channel: grpc.aio.Channel, task_id: str) -> None:
        self.plane = plane
        self.id = task_id
        self._channel = channel
        self.stub: ChannelServiceAsyncStub = channel_service_pb2_grpc.ChannelServiceStub(channel)

    async def join(self, channel: str = CHANNEL) -> pb.JoinChannelResponse:
        return await self.stub.JoinChannel(pb.JoinChannelRequest(channel=channel), timeout=20)

    async def leave(self, channel: str = CHANNEL) -> None:
        await self.stub.LeaveChannel(pb.LeaveChannelRequest(channel=channel), timeout=20)

    async def ends(self, channel: str = CHANNEL) -> list[str]:
        response = await self.stub.ListEnds(pb.ListEndsRequest(channel=channel), timeout=5)
        return [end.end_id for end in response.ends]

    async def await_ends(self, expected: Sequence[str], timeout: float = 10.0) -> None:
        """Wait until the ends are exactly `expected`."""
        async with asyncio.timeout(timeout):
            while sorted(await self.ends()) != sorted(expected):
                await asyncio.sleep(0.05)

    async def send(
        self,
        data: bytes,
        to: Sequence[str] = (),
        *,
        broadcast: bool = False,
        message_id: str = "",
        digest: str = "",
        total_size: int | None = None,
        timeout: float = 60,
    ) -> pb.SendMessageResponse:
        header = channel_pb2.MessageHeader(
            channel=CHANNEL,
            message_id=message_id,
            end_ids=list(to),
            broadcast=broadcast,
            total_size=len(data) if total_size is None else total_size,
            digest=digest,
        )
        return await self.stub.SendMessage(_requests(header, data), timeout=timeout)

    async def receive(
        self,
        senders: Sequence[str] = (),
        *,
        no_wait: bool = False,
        peek: bool = False,
        timeout: float = 30,
    ) -> Received | None:
        request = pb.ReceiveMessageRequest(
            channel=CHANNEL, end_ids=list(senders), no_wait=no_wait, peek=peek
        )
        header, data = None, bytearray()
        async for response in self.stub.ReceiveMessage(request, timeout=timeout):
            if response.HasField("header"):
                header = response.header
                data = bytearray()
            else:
                data += response.chunk
        return None if header is None else Received(header, data)

    async def close(self) -> None:
        await self._channel.close(None)


def _requests(header: channel_pb2.MessageHeader, data: bytes) -> Iterator[pb.SendMessageRequest]:
    yield pb.SendMessageRequest(header=header)
    view = memoryview(data)
    for offset in range(0, len(view), MIB):
        yield pb.SendMessageRequest(chunk=bytes(view[offset : offset + MIB]))


def reason(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    details = error_details(error)
    return details.code, details.reason


class Tasks:
    """Starts MQTT bridges for a test and stops them all at its end."""

    backend = "mqtt"

    def __init__(self, folder: Path, broker: BrokerSettings) -> None:
        self._folder = folder
        self.broker = broker
        self._started: list[Task] = []

    async def start(
        self,
        role: str,
        *,
        job: str,
        task_id: str | None = None,
        broker: BrokerSettings | None = None,
        limits: TransferLimits = TEST_LIMITS,
        join: bool = True,
        **config: Any,
    ) -> Task:
        task_id = task_id or new_id()
        socket = self._folder / f"{task_id[:12]}.sock"
        plane = await start_bridge(
            task_config(task_id, role, job=job, **config),
            socket_path=socket,
            broker=broker or self.broker,
            limits=limits,
        )
        task = Task(plane, open_channel(f"unix:{socket}", tls=None), task_id)
        self._started.append(task)
        if join:
            await task.join()
        return task

    async def stop_all(self) -> None:
        for task in self._started:
            await task.close()
            await task.plane.stop()


class P2pTasks:
    """Starts p2p bridges discovering each other in one folder; stops them at the end."""

    backend = "p2p"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.peers = folder / "peers"
        self._started: list[Task] = []

    async def start(
        self,
        role: str,
        *,
        job: str,
        peer: PeerSettings = FAST,
        limits: TransferLimits = TEST_LIMITS,
        join: bool = True,
        broker_host: str | None = None,
        **options: Any,
    ) -> Task:
        task_id = new_id()
        config = task_config(task_id, role, job=job, backend="p2p", **options)
        config["brokers"].append({"sort": "p2p", "host": f"file://{self.peers}"})
        if broker_host is not None:
            config["channels"][0]["brokerHost"] = broker_host
        socket = self.folder / f"{task_id[:12]}.sock"
        plane = await start_bridge(config, socket_path=socket, limits=limits, peer=peer)
        task = Task(plane, open_channel(f"unix:{socket}", tls=None), task_id)
        self._started.append(task)
        if join:
            await task.join()
        return task

    def record(self, task: Task, job: str, role: str, group: str = "default") -> Path:
        """The discovery file of `task`."""
        return self.peers / job / CHANNEL / group / role / f"{task.id}.json"

    async def stop_all(self) -> None:
        for task in self._started:
            await task.close()
            await task.plane.stop()


# Either transport's harness: the channel contract holds for both.
Harness = Tasks | P2pTasks


async def pair(harness: Harness, job: str, **options: Any) -> tuple[Task, Task]:
    """An aggregator and a trainer that see each other."""
    aggregator = await harness.start("aggregator", job=job, **options)
    trainer = await harness.start("trainer", job=job, **options)
    await aggregator.await_ends([trainer.id])
    await trainer.await_ends([aggregator.id])
    return aggregator, trainer


def count_chunks_sent(monkeypatch: pytest.MonkeyPatch, transport: type[Transport]) -> Counter[int]:
    """How many times each chunk sequence is published through `transport`, by any bridge."""
    sent: Counter[int] = Counter()
    publish = transport.publish

    async def counting(
        self: Transport, end_id: str, frame: frame_pb2.Frame, data: Bytes = b""
    ) -> None:
        await publish(self, end_id, frame, data)
        if frame.HasField("chunk"):
            sent[frame.chunk.sequence] += 1

    monkeypatch.setattr(transport, "publish", counting)
    return sent
