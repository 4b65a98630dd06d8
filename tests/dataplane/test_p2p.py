"""The p2p backend: bridges in this process find each other through a discovery
folder (or the control plane) and send each other frames over PeerService, driven
through ChannelService on their Unix sockets like the MQTT tests."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from flame.agent.v1 import agent_service_pb2 as agent_pb
from flame.agent.v1 import agent_service_pb2_grpc
from flame.compute.v1 import compute_service_pb2 as compute_pb
from flame.flamelet.dataplane import P2pTransport, PeerSettings, start_dataplane
from flame.flamelet.dataplane.discovery import DIRECTORY_ENV, DiscoveryRefused, directory_root
from flame.flamelet.dataplane.p2p import CHANNEL_KEY, END_ID_KEY, GROUP_KEY, JOB_ID_KEY
from flame.job.v1 import job_pb2
from flame.job.v1 import job_service_pb2 as job_pb
from flame.peer.v1 import peer_service_pb2 as peer_pb
from flame.peer.v1 import peer_service_pb2_grpc
from flame.rpc.certs import CertificateAuthority
from flame.rpc.client import open_channel
from flame.rpc.tls import ServerTls
from flame.transport.v1 import frame_pb2
from tests.controlplane.helpers import Client, create_job, new_user, prepare_example
from tests.dataplane.support import (
    CHANNEL,
    FAST,
    MIB,
    P2pTasks,
    Task,
    count_chunks_sent,
    digest,
    job_id,
    new_id,
    pair,
    payload,
    reason,
)
from tests.support.controlplane import ADMIN, ControlPlane
from tests.support.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Presence = frame_pb2.Presence


@pytest.fixture
def chunks_sent(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """How many times each chunk sequence was handed to a p2p stream."""
    return count_chunks_sent(monkeypatch, P2pTransport)


# --- presence ----------------------------------------------------------------------


async def test_ends_find_each_other_through_the_folder(p2p: P2pTasks) -> None:
    # Joining, roles and isolation are in the channel contract; this is the folder.
    job = job_id()
    aggregator, trainer = await pair(p2p, job)
    for task, role in ((aggregator, "aggregator"), (trainer, "trainer")):
        record = json.loads(p2p.record(task, job, role).read_text())
        assert record["end_id"] == task.id and record["role"] == role
        assert record["address"].startswith("127.0.0.1:")


async def test_a_leave_is_seen_at_once_and_withdraws_the_record(p2p: P2pTasks) -> None:
    job = job_id()
    aggregator, trainer = await pair(p2p, job, peer=PeerSettings())
    data = payload(5 * MIB, seed=7)
    await trainer.send(data, [aggregator.id])
    began = time.monotonic()
    await trainer.leave()  # Delivers first.
    await aggregator.await_ends([], timeout=3)
    assert time.monotonic() - began < 3
    assert not p2p.record(trainer, job, "trainer").exists()
    received = await aggregator.receive([trainer.id])
    assert received is not None and received.data == data
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await aggregator.receive([trainer.id])
    assert reason(caught.value) == (grpc.StatusCode.NOT_FOUND, "END_LEFT")
    # The trainer comes back: it is an end again.
    await trainer.join()
    await aggregator.await_ends([trainer.id])


async def test_a_killed_peer_is_gone_within_seconds(p2p: P2pTasks) -> None:
    job = job_id()
    aggregator, trainer = await pair(p2p, job, peer=PeerSettings())
    waiting = asyncio.create_task(aggregator.receive([trainer.id], timeout=30))
    await asyncio.sleep(0.2)
    began = time.monotonic()
    await trainer.plane.abort()  # No LEAVE: its server is gone, its record stays.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await waiting
    assert reason(caught.value) == (grpc.StatusCode.NOT_FOUND, "END_LEFT")
    took = time.monotonic() - began
    assert await aggregator.ends() == []
    assert p2p.record(trainer, job, "trainer").exists()
    print(f"\nthe killed end was gone after {took:.1f} s")
    assert took < PeerSettings().dead_after_seconds + 3
    # The stale record does not bring it back.
    await asyncio.sleep(PeerSettings().rediscover_seconds + 1)
    assert await aggregator.ends() == []


async def test_a_discovery_that_is_no_folder_fails_the_join(p2p: P2pTasks) -> None:
    task = await p2p.start(
        "trainer", job=job_id(), join=False, broker_host="flame-metaserver:10104"
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await task.join()
    assert reason(caught.value) == (grpc.StatusCode.UNAVAILABLE, "BROKER_UNAVAILABLE")


def test_discovery_folders_are_file_urls_or_absolute_paths(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert directory_root("file:///srv/flame%20peers") == Path("/srv/flame peers")
    assert directory_root("file://localhost/srv/peers") == Path("/srv/peers")
    assert directory_root("/srv/peers") == Path("/srv/peers")
    monkeypatch.setenv(DIRECTORY_ENV, str(tmp_path))
    assert directory_root("") == tmp_path
    for address in ("flame-metaserver:10104", "file://elsewhere/srv", "relative/path"):
        with pytest.raises(DiscoveryRefused):
            directory_root(address)


# --- transfers ---------------------------------------------------------------------


async def test_ends_talk_over_tls(p2p: P2pTasks, short_tmp: Path) -> None:
    authority = CertificateAuthority(short_tmp / "ca")
    issued = authority.issue("peer")
    tls = PeerSettings(
        tls=ServerTls(issued.cert_file, issued.key_file), ca_file=authority.cert_file
    )
    aggregator, trainer = await pair(p2p, job_id(), peer=tls)
    data = payload(2 * MIB, seed=9)
    await trainer.send(data, [aggregator.id])
    assert (received := await aggregator.receive([trainer.id])) is not None
    assert received.data == data


class CuttableProxy:
    """A TCP forwarder to a local port whose connections can be cut, as a network
    failure would cut them; it keeps accepting new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._links: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        for writer in self._links:
            writer.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, upstream_writer}
        await asyncio.gather(
            self._pump(reader, upstream_writer), self._pump(upstream_reader, writer)
        )
        self._links -= {writer, upstream_writer}

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(256 * 1024):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()


@pytest.fixture
async def proxy() -> AsyncIterator[CuttableProxy]:
    forwarder = CuttableProxy(free_port())
    await forwarder.start()
    yield forwarder
    await forwarder.close()


async def test_a_cut_stream_resumes_without_loss_or_duplicate(
    p2p: P2pTasks,
    proxy: CuttableProxy,
    chunks_sent: Counter[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []
    transfer_state = P2pTransport.transfer_state

    def recording(self: P2pTransport, caller: str, request: Any) -> frame_pb2.Ack:
        ack = transfer_state(self, caller, request)
        asked.append(f"{request.message_id}@{ack.next_sequence}")
        return ack

    monkeypatch.setattr(P2pTransport, "transfer_state", recording)
    job = job_id()
    # Peers reach the aggregator through the proxy only.
    behind = PeerSettings(port=proxy.target_port, advertise=f"127.0.0.1:{proxy.port}")
    aggregator = await p2p.start("aggregator", job=job, peer=behind)
    trainer = await p2p.start("trainer", job=job, peer=PeerSettings())
    await aggregator.await_ends([trainer.id])
    await trainer.await_ends([aggregator.id])
    data = payload(64 * MIB, seed=11)
    await trainer.send(data, [aggregator.id])

    (transfer,) = trainer.plane.bridge.joined(CHANNEL).pending_transfers()
    async with asyncio.timeout(20):
        while transfer.acked / transfer.frames < 0.2:
            await asyncio.sleep(0.002)
    done = transfer.acked / transfer.frames
    assert done < 0.9, "the transfer was nearly over before the stream could be cut"
    proxy.cut()

    received = await aggregator.receive([trainer.id], timeout=30)
    assert received is not None and digest(received.data) == digest(data)
    print(f"\ncut at {done:.0%} acknowledged; GetTransferState answered {asked}")
    assert asked, "the sender resumed without asking the receiver"
    assert chunks_sent[0] == 1  # Resumed, not restarted.
    await asyncio.sleep(1.0)
    assert await aggregator.receive(no_wait=True) is None  # Exactly once.
    assert await aggregator.ends() == [trainer.id]
    assert trainer.plane.bridge.joined(CHANNEL).pending_transfers() == []


# --- what peers may not do -----------------------------------------------------------


def metadata(job: str, end_id: str, group: str = "default") -> tuple[tuple[str, str], ...]:
    return ((JOB_ID_KEY, job), (CHANNEL_KEY, CHANNEL), (GROUP_KEY, group), (END_ID_KEY, end_id))


def presence(end_id: str, role: str = "trainer", **fields: Any) -> Presence:
    values = {"type": Presence.TYPE_JOIN, "end_id": end_id, "role": role, "channel": CHANNEL}
    return Presence(**{"group": "default", **values, **fields})


def chunk_request(sender_id: str, **fields: Any) -> peer_pb.TransferChunksRequest:
    values = {
        "sender_id": sender_id,
        "channel": CHANNEL,
        "message_id": "evil",
        "total_chunks": 1,
        "total_size": 4,
        "digest": digest(b"evil"),
        "data": b"evil",
    }
    return peer_pb.TransferChunksRequest(chunk=frame_pb2.Chunk(**{**values, **fields}))


async def refusal(call: Any) -> tuple[grpc.StatusCode, str]:
    """The status and reason of a unary or streaming call that must fail."""
    try:
        if isinstance(call, grpc.aio.UnaryUnaryCall):
            await call
        else:
            async for _ in call:
                pass
    except grpc.aio.AioRpcError as error:
        return reason(error)
    raise AssertionError("the call succeeded")


async def test_calls_from_strangers_and_malformed_frames_are_refused(
    p2p: P2pTasks, caplog: pytest.LogCaptureFixture
) -> None:
    job = job_id()
    aggregator, trainer = await pair(p2p, job)
    address = json.loads(p2p.record(aggregator, job, "aggregator").read_text())["address"]
    trainer_address = json.loads(p2p.record(trainer, job, "trainer").read_text())["address"]
    stranger = new_id()
    unknown = (grpc.StatusCode.FAILED_PRECONDITION, "PEER_UNKNOWN")
    invalid = (grpc.StatusCode.INVALID_ARGUMENT, "FRAME_INVALID")
    async with grpc.aio.insecure_channel(address) as channel:
        stub = peer_service_pb2_grpc.PeerServiceStub(channel)

        def announce(meta: Any, announced: Presence, at: str = "127.0.0.1:1") -> Any:
            request = peer_pb.AnnouncePresenceRequest(presence=announced, address=at)
            return stub.AnnouncePresence(request, metadata=meta, timeout=5)

        cases = [
            (announce((), presence(trainer.id)), unknown),  # No job id.
            (announce(metadata(job_id(), trainer.id), presence(trainer.id)), unknown),
            (announce(metadata(job, trainer.id, "eu"), presence(trainer.id)), unknown),
            (announce(metadata(job, stranger), presence(stranger)), unknown),  # Not listed.
            (announce(metadata(job, trainer.id), presence(trainer.id)), unknown),  # Wrong address.
            (announce(metadata(job, trainer.id), presence(stranger), trainer_address), invalid),
            (announce(metadata(job, trainer.id), presence(trainer.id, "aggregator")), invalid),
            (
                announce(
                    metadata(job, trainer.id),
                    presence(trainer.id, type=Presence.TYPE_UNSPECIFIED),
                    trainer_address,
                ),
                invalid,
            ),
            (
                stub.GetTransferState(
                    peer_pb.GetTransferStateRequest(sender_id=stranger, message_id="m"),
                    metadata=metadata(job, stranger),
                    timeout=5,
                ),
                unknown,
            ),
            (
                stub.TransferChunks(
                    iter([chunk_request(stranger)]), metadata=metadata(job, stranger), timeout=5
                ),
                unknown,
            ),
            (
                stub.TransferChunks(
                    iter([chunk_request(stranger)]), metadata=metadata(job, trainer.id), timeout=5
                ),
                invalid,
            ),
        ]
        for index, (call, expected) in enumerate(cases):
            assert await refusal(call) == expected, index
        # Chunks that match their call but not their message reach the inbox, which
        # drops them or asks for the missing ones; the stream goes on.
        garbage = [
            chunk_request(trainer.id, total_size=2**62),
            chunk_request(trainer.id, digest="not hex"),
            chunk_request(trainer.id, sequence=7),
            chunk_request(trainer.id, data=b"too long"),
        ]
        with caplog.at_level(logging.WARNING, logger="flame.flamelet.dataplane"):
            call = stub.TransferChunks(iter(garbage), metadata=metadata(job, trainer.id), timeout=5)
            acks = [response.ack async for response in call]
            assert all(ack.message_id == "evil" and not ack.complete for ack in acks)
        # Bytes that are no protobuf at all.
        raw = channel.unary_unary(
            "/flame.peer.v1.PeerService/AnnouncePresence",
            request_serializer=bytes,
            response_deserializer=bytes,
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await raw(b"\xff\xfe not a protobuf", metadata=metadata(job, trainer.id), timeout=5)
    flame = [r for r in caplog.records if r.name.startswith("flame.")]
    assert not [r for r in flame if r.levelno >= logging.ERROR]
    assert len([r for r in flame if r.getMessage().startswith("dropped")]) >= 2
    # Nothing reached the role code, the ends are unchanged and still talk.
    assert await aggregator.receive(no_wait=True) is None
    assert await aggregator.ends() == [trainer.id]
    data = payload(3 * MIB, seed=5)
    await trainer.send(data, [aggregator.id])
    assert (received := await aggregator.receive([trainer.id])) is not None
    assert received.data == data


# --- discovery through the control plane -----------------------------------------


@pytest.fixture
def api(control_plane: ControlPlane) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(control_plane.apiserver_address) as channel:
        yield channel


def started_p2p_job(api: grpc.Channel, admin_token: str) -> tuple[Client, str, list[Any]]:
    """A p2p mnist job, started, with its tasks' ids and keys (the deployer's view)."""
    admin = Client.with_token(api, ADMIN, admin_token)
    user = new_user(admin, api, "p2p")
    job = prepare_example(user, "mnist").job
    job.backend = "p2p"
    created = create_job(user, job).id
    user.jobs.StartJob(job_pb.StartJobRequest(job_id=created))
    deadline = time.monotonic() + 20
    while user.jobs.GetJob(job_pb.GetJobRequest(job_id=created)).job.state not in (
        job_pb2.Job.STATE_DEPLOYING,
        job_pb2.Job.STATE_RUNNING,
    ):
        assert time.monotonic() < deadline, "the job was not deployed"
        time.sleep(0.1)
    config = admin.computes.GetDeploymentConfig(
        compute_pb.GetDeploymentConfigRequest(compute_id="default", job_id=created)
    ).config
    return user, created, list(config.tasks)


async def test_ends_find_each_other_through_the_control_plane(
    control_plane: ControlPlane, api: grpc.Channel, short_tmp: Path
) -> None:
    user, job, tasks = started_p2p_job(api, control_plane.admin_token)
    agents = agent_service_pb2_grpc.AgentServiceStub(api)
    started: list[Task] = []
    try:
        for item in tasks:
            manifest = agents.GetTaskManifest(
                agent_pb.GetTaskManifestRequest(job_id=job, task_id=item.task_id),
                metadata=(("x-flame-task-key", item.task_key),),
                timeout=10,
            ).manifest
            work_dir = short_tmp / item.task_id[:8]
            work_dir.mkdir()
            plane = await start_dataplane(
                manifest,
                work_dir=work_dir,
                task_key=item.task_key,
                apiserver=control_plane.apiserver_address,
                tls=None,
                peer=FAST,
            )
            task = Task(plane, open_channel(f"unix:{plane.socket_path}", tls=None), item.task_id)
            started.append(task)
            assert (await task.join()).backend == "p2p"
        aggregator, trainer = sorted(started, key=lambda t: t.plane.bridge.config.role)
        assert (aggregator.plane.bridge.config.role, trainer.plane.bridge.config.role) == (
            "aggregator",
            "trainer",
        )
        await aggregator.await_ends([trainer.id])
        await trainer.await_ends([aggregator.id])
        await aggregator.send(b"global model", broadcast=True)
        assert (received := await trainer.receive([aggregator.id])) is not None
        assert received.data == b"global model"
        update = payload(4 * MIB, seed=2)
        await trainer.send(update, [aggregator.id])
        assert (received := await aggregator.receive([trainer.id])) is not None
        assert received.data == update
    finally:
        for task in started:
            await task.close()
            await task.plane.stop()
        user.jobs.StopJob(job_pb.StopJobRequest(job_id=job))
