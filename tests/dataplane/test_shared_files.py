"""Messages handed between role code and its bridge as files in a shared folder
(`MessageHeader.shared_file`), on each transport: the fast path of a large message."""

from __future__ import annotations

import asyncio
import mmap
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from flame._dataplane_client import DataPlaneClient, Received
from flame.dataplane.v1 import channel_pb2
from flame.dataplane.v1 import channel_service_pb2 as pb
from flame.wire.shared import SHARED_FILE_MIN_BYTES, SharedFileWriter, map_file, write_file
from tests.dataplane.support import (
    CHANNEL,
    MIB,
    TEST_LIMITS,
    Harness,
    Task,
    digest,
    job_id,
    pair,
    payload,
    reason,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def shared_folder(task: Task) -> Path:
    folder = (await task.join()).shared_folder
    assert folder, "the bridge offers no shared folder"
    return Path(folder)


async def send_file(task: Task, path: Path, size: int, to: str) -> pb.SendMessageResponse:
    header = channel_pb2.MessageHeader(
        channel=CHANNEL, end_ids=[to], total_size=size, shared_file=str(path)
    )
    return await task.stub.SendMessage(iter([pb.SendMessageRequest(header=header)]), timeout=30)


async def receive_file(task: Task, sender: str) -> list[pb.ReceiveMessageResponse]:
    request = pb.ReceiveMessageRequest(channel=CHANNEL, end_ids=[sender], accept_shared_file=True)
    return [response async for response in task.stub.ReceiveMessage(request, timeout=30)]


async def test_a_message_goes_and_comes_as_files(channel_tasks: Harness) -> None:
    aggregator, trainer = await pair(channel_tasks, job_id())
    data = payload(3 * MIB)
    sender_folder = await shared_folder(trainer)
    await send_file(trainer, write_file(sender_folder, [data]), len(data), aggregator.id)
    # The bridge took the file over: its name is gone.
    assert list(sender_folder.iterdir()) == []

    responses = await receive_file(aggregator, trainer.id)
    assert len(responses) == 1, "no chunk follows a header naming a file"
    header = responses[0].header
    receiver_folder = await shared_folder(aggregator)
    assert Path(header.shared_file).parent == receiver_folder
    assert header.digest == digest(data)
    assert bytes(map_file(header.shared_file, header.total_size, folder=receiver_folder)) == data
    assert list(receiver_folder.iterdir()) == []


async def test_small_messages_come_as_chunks_even_when_files_are_accepted(
    channel_tasks: Harness,
) -> None:
    aggregator, trainer = await pair(channel_tasks, job_id())
    data = payload(SHARED_FILE_MIN_BYTES // 2)
    await trainer.send(data, [aggregator.id])
    responses = await receive_file(aggregator, trainer.id)
    assert not responses[0].header.shared_file
    assert b"".join(r.chunk for r in responses[1:]) == data


@pytest.mark.parametrize("wrong", ["outside the folder", "wrong size", "chunks follow"])
async def test_a_file_that_does_not_fit_the_header_is_refused(
    channel_tasks: Harness, tmp_path: Path, wrong: str
) -> None:
    aggregator, trainer = await pair(channel_tasks, job_id())
    data = payload(2 * MIB)
    path = write_file(await shared_folder(trainer), [data])
    size = len(data) + (1 if wrong == "wrong size" else 0)
    if wrong == "outside the folder":
        path.unlink()
        path = write_file(tmp_path, [data])
    header = channel_pb2.MessageHeader(
        channel=CHANNEL, end_ids=[aggregator.id], total_size=size, shared_file=str(path)
    )
    requests = [pb.SendMessageRequest(header=header)]
    if wrong == "chunks follow":
        requests.append(pb.SendMessageRequest(chunk=b"x"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await trainer.stub.SendMessage(iter(requests), timeout=30)
    assert reason(raised.value) == (grpc.StatusCode.INVALID_ARGUMENT, "MESSAGE_INVALID")
    # Nothing was delivered, and the channel still works.
    assert await aggregator.receive([trainer.id], no_wait=True) is None
    await trainer.send(b"after", [aggregator.id])
    received = await aggregator.receive([trainer.id])
    assert received is not None and received.data == b"after"


async def test_a_bridge_without_shared_files_offers_no_folder(channel_tasks: Harness) -> None:
    task = await channel_tasks.start(
        "trainer", job=job_id(), limits=replace(TEST_LIMITS, shared_files=False), join=False
    )
    assert (await task.join()).shared_folder == ""


async def test_stopping_the_bridge_removes_its_folder(channel_tasks: Harness) -> None:
    task = await channel_tasks.start("trainer", job=job_id(), join=False)
    folder = await shared_folder(task)
    write_file(folder, [b"never taken"])
    await task.plane.stop()
    assert not folder.exists()


async def test_the_sdk_takes_each_message_once(channel_tasks: Harness) -> None:
    """The SDK's client takes large messages as mapped files, each message once."""
    aggregator, trainer = await pair(channel_tasks, job_id())
    first, second = payload(2 * MIB, seed=1), payload(2 * MIB, seed=2)
    for data in (first, second):
        await trainer.send(data, [aggregator.id])
    client = DataPlaneClient(aggregator.plane.socket_path, call_timeout=10)
    try:
        await asyncio.to_thread(client.join, CHANNEL)

        def receive(peek: bool = False) -> Received | None:
            return client.receive(
                CHANNEL, [trainer.id], timeout=10, on_timeout=lambda: TimeoutError(), peek=peek
            )

        taken = [await asyncio.to_thread(receive) for _ in range(2)]
        assert [bytes(message.data) for message in taken if message] == [first, second]
        assert all(isinstance(m.data.obj, mmap.mmap) for m in taken if m), "not shared files"
        assert await asyncio.to_thread(receive, True) is None
    finally:
        client.close()


async def test_a_file_is_sent_while_it_is_written(channel_tasks: Harness) -> None:
    aggregator, trainer = await pair(channel_tasks, job_id())
    data = payload(3 * MIB + 5)
    writer = SharedFileWriter(await shared_folder(trainer), len(data))
    progress = writer.write([data[:MIB], data[MIB : 2 * MIB + 3], data[2 * MIB + 3 :]], MIB)
    header = channel_pb2.MessageHeader(
        channel=CHANNEL, end_ids=[aggregator.id], total_size=len(data), shared_file=str(writer.path)
    )
    requests = [pb.SendMessageRequest(header=header)]
    requests += [pb.SendMessageRequest(shared_file_written=written) for written in progress]
    assert [r.shared_file_written for r in requests[1:]] == [MIB, 2 * MIB + 3, len(data)]
    await trainer.stub.SendMessage(iter(requests), timeout=30)
    writer.close()
    received = await aggregator.receive([trainer.id])
    assert received is not None and received.data == data


async def test_written_bytes_never_go_back(channel_tasks: Harness) -> None:
    aggregator, trainer = await pair(channel_tasks, job_id())
    data = payload(2 * MIB)
    path = write_file(await shared_folder(trainer), [data])
    header = channel_pb2.MessageHeader(
        channel=CHANNEL, end_ids=[aggregator.id], total_size=len(data), shared_file=str(path)
    )
    requests = [
        pb.SendMessageRequest(header=header),
        pb.SendMessageRequest(shared_file_written=MIB),
        pb.SendMessageRequest(shared_file_written=MIB - 1),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await trainer.stub.SendMessage(iter(requests), timeout=30)
    assert reason(raised.value) == (grpc.StatusCode.INVALID_ARGUMENT, "MESSAGE_INVALID")
    assert await aggregator.receive([trainer.id], no_wait=True) is None
