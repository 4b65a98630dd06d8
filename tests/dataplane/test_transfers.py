"""The transfer protocol under faults, over an in-process transport: lost, repeated,
reordered and corrupted chunks, lost acks, dropped connections, ends that leave."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest

from flame.flamelet.dataplane.channel import Channel
from flame.flamelet.dataplane.inbox import Delivered
from flame.flamelet.dataplane.outbox import Outgoing, Transfer
from flame.flamelet.dataplane.settings import TransferLimits
from flame.transport.v1 import frame_pb2
from flame.wire import message_digest
from tests.dataplane.loopback import LoopbackNetwork, LoopbackTransport, hand_over, open_channel

pytestmark = pytest.mark.timeout(20)

# Small chunks, many per message; a stall timeout too long to rescue any test that
# relies on the fast paths (gap reports, reconnections, rejoins).
LIMITS = TransferLimits(chunk_bytes=1024, window_chunks=8, ack_every=2, stall_seconds=30.0)
SIZE = 40 * 1024 + 17


@dataclass
class Ends:
    network: LoopbackNetwork
    trainer: Channel
    trainer_link: LoopbackTransport
    aggregator: Channel
    aggregator_link: LoopbackTransport


async def connect(limits: TransferLimits = LIMITS) -> Ends:
    network = LoopbackNetwork()
    trainer, trainer_link = await open_channel(network, "t1", "trainer", limits)
    aggregator, aggregator_link = await open_channel(network, "a1", "aggregator", limits)
    async with asyncio.timeout(5):
        while not (trainer.membership.is_current("a1") and aggregator.membership.is_current("t1")):
            await asyncio.sleep(0.01)
    return Ends(network, trainer, trainer_link, aggregator, aggregator_link)


@pytest.fixture
async def ends() -> AsyncIterator[Ends]:
    connected = await connect()
    yield connected
    await connected.trainer.abort()
    await connected.aggregator.abort()


def message(data: bytes, message_id: str = "m1", chunk_bytes: int = 1024) -> Outgoing:
    return Outgoing(message_id, bytearray(data), message_digest([data]), False, chunk_bytes)


def data(size: int = SIZE, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def send(sender: Channel, receiver: str, payload: bytes, message_id: str = "m1") -> Transfer:
    (transfer,) = sender.send(message(payload, message_id), [receiver])
    return transfer


async def received(channel: Channel, timeout: float = 5) -> Delivered:
    result = await channel.receive(None, timeout=timeout)
    assert result is not None
    return result


def corrupt(frame: frame_pb2.Frame) -> frame_pb2.Frame:
    """The frame with the first byte of its chunk flipped."""
    damaged = frame_pb2.Frame()
    damaged.CopyFrom(frame)
    damaged.chunk.data = bytes([frame.chunk.data[0] ^ 0xFF]) + frame.chunk.data[1:]
    return damaged


class FaultOnce:
    """Applies `action` to the first chunk with `sequence`, and then never again."""

    def __init__(self, sequence: int, action: str) -> None:
        self.sequence = sequence
        self.action = action
        self.done = False

    def __call__(self, frame: frame_pb2.Frame) -> list[frame_pb2.Frame]:
        if self.done or not frame.HasField("chunk") or frame.chunk.sequence != self.sequence:
            return [frame]
        self.done = True
        return [] if self.action == "drop" else [corrupt(frame)]


async def test_a_lost_chunk_is_resent_after_the_receiver_reports_the_gap(ends: Ends) -> None:
    ends.network.fault = FaultOnce(3, "drop")
    payload = data()
    transfer = send(ends.trainer, "a1", payload)
    got = await received(ends.aggregator)
    assert got.data == payload and got.sender_id == "t1"
    assert await asyncio.wait_for(transfer.delivered, 5) is True
    assert ends.network.chunks_sent[0] == 1  # Resumed at the gap, not from the start.


async def test_repeated_chunks_and_replays_deliver_once(ends: Ends) -> None:
    chunks: list[frame_pb2.Frame] = []
    completions = 0

    def repeat_chunks(frame: frame_pb2.Frame) -> list[frame_pb2.Frame]:
        nonlocal completions
        if frame.HasField("ack"):
            completions += frame.ack.complete
            return [frame]
        chunks.append(frame)
        return [frame, frame]

    ends.network.fault = repeat_chunks
    payload = data()
    transfer = send(ends.trainer, "a1", payload)
    assert (await received(ends.aggregator)).data == payload
    assert await asyncio.wait_for(transfer.delivered, 5) is True
    before = completions
    # Every chunk once more, long after the completion (a late resend).
    for frame in chunks:
        hand_over(ends.aggregator, frame)
    await asyncio.sleep(0.05)
    assert await ends.aggregator.receive(None, no_wait=True) is None
    assert completions == before + len(chunks)  # Each is answered: the message is complete.


async def test_reordered_chunks_still_arrive_whole_and_in_order(ends: Ends) -> None:
    held: list[frame_pb2.Frame] = []

    def swap_pairs(frame: frame_pb2.Frame) -> list[frame_pb2.Frame]:
        # Every even chunk (but a last one) arrives after the chunk following it.
        if not frame.HasField("chunk"):
            return [frame]
        chunk = frame.chunk
        if chunk.sequence % 2 == 0 and chunk.sequence + 1 < chunk.total_chunks:
            held.append(frame)
            return []
        late = [frame, *held]
        held.clear()
        return late

    ends.network.fault = swap_pairs
    payloads = [data(seed=i) for i in range(3)]
    for index, payload in enumerate(payloads):
        send(ends.trainer, "a1", payload, message_id=f"m{index}")
    arrived = [await received(ends.aggregator) for _ in payloads]
    assert [m.data for m in arrived] == payloads
    assert [m.message_id for m in arrived] == ["m0", "m1", "m2"]


async def test_a_corrupt_message_is_sent_again_from_the_start(ends: Ends) -> None:
    ends.network.fault = FaultOnce(2, "corrupt")
    payload = data()
    transfer = send(ends.trainer, "a1", payload)
    assert (await received(ends.aggregator)).data == payload
    assert await asyncio.wait_for(transfer.delivered, 5) is True
    assert ends.network.chunks_sent[0] == 2
    assert await ends.aggregator.receive(None, no_wait=True) is None


async def test_a_message_corrupt_every_time_is_given_up() -> None:
    connected = await connect()
    try:
        connected.network.fault = lambda f: [corrupt(f) if f.HasField("chunk") else f]
        transfer = send(connected.trainer, "a1", data())
        assert await asyncio.wait_for(transfer.delivered, 5) is False
        assert connected.network.chunks_sent[0] == LIMITS.max_corrupt + 1
        assert await connected.aggregator.receive(None, no_wait=True) is None
    finally:
        await connected.trainer.abort()
        await connected.aggregator.abort()


async def test_lost_acks_are_recovered_by_the_stall_timeout() -> None:
    connected = await connect(replace(LIMITS, stall_seconds=0.2))
    try:
        dropped = 0

        def drop_acks(frame: frame_pb2.Frame) -> list[frame_pb2.Frame]:
            nonlocal dropped
            if frame.HasField("ack") and dropped < 6:
                dropped += 1
                return []
            return [frame]

        connected.network.fault = drop_acks
        payload = data()
        transfer = send(connected.trainer, "a1", payload)
        assert (await received(connected.aggregator)).data == payload
        assert await asyncio.wait_for(transfer.delivered, 5) is True
        assert await connected.aggregator.receive(None, no_wait=True) is None
    finally:
        await connected.trainer.abort()
        await connected.aggregator.abort()


async def test_a_dropped_connection_resumes_from_the_last_ack(ends: Ends) -> None:
    link = ends.trainer_link
    payload = data(200 * 1024)

    cut = FaultOnce(60, "drop")

    def cut_at_chunk_60(frame: frame_pb2.Frame) -> list[frame_pb2.Frame]:
        arriving = cut(frame)
        if not arriving:
            link.connected = False  # The connection breaks in the middle of the window.
        return arriving

    ends.network.fault = cut_at_chunk_60
    transfer = send(ends.trainer, "a1", payload)
    async with asyncio.timeout(5):
        while link.connected:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    link.restore()
    assert (await received(ends.aggregator)).data == payload
    assert await asyncio.wait_for(transfer.delivered, 5) is True
    assert ends.network.chunks_sent[0] == 1
    assert max(ends.network.chunks_sent.values()) == 2  # Only the unacknowledged window twice.


async def test_a_receiver_that_reconnects_gets_the_rest(ends: Ends) -> None:
    link = ends.aggregator_link
    payload = data(200 * 1024)

    dropped = False

    def drop_receiver_at_chunk_50(frame: frame_pb2.Frame) -> list[frame_pb2.Frame]:
        nonlocal dropped
        if frame.HasField("chunk") and frame.chunk.sequence == 50 and not dropped:
            dropped = True
            link.drop()  # Its last will: the trainer sees it leave.
        return [frame]

    ends.network.fault = drop_receiver_at_chunk_50
    transfer = send(ends.trainer, "a1", payload)
    async with asyncio.timeout(5):
        while ends.trainer.membership.is_current("a1"):
            await asyncio.sleep(0.01)
    link.restore()
    assert (await received(ends.aggregator)).data == payload
    assert await asyncio.wait_for(transfer.delivered, 5) is True
    assert ends.network.chunks_sent[0] == 1


async def test_transfers_to_a_receiver_gone_for_good_are_given_up() -> None:
    connected = await connect(replace(LIMITS, stall_seconds=0.1, leave_grace_seconds=0.3))
    try:
        connected.aggregator_link.drop()
        async with asyncio.timeout(5):
            while connected.trainer.membership.is_current("a1"):
                await asyncio.sleep(0.01)
        (transfer,) = connected.trainer.send(message(data()), ["a1"])
        assert await asyncio.wait_for(transfer.delivered, 5) is False
        assert connected.trainer.pending_transfers() == []
    finally:
        await connected.trainer.abort()
        await connected.aggregator.abort()


async def test_a_receiver_that_never_acknowledges_is_given_up() -> None:
    limits = replace(LIMITS, stall_seconds=0.1, progress_timeout_seconds=0.5)
    connected = await connect(limits)
    try:
        connected.network.fault = lambda frame: [] if frame.HasField("ack") else [frame]
        first = send(connected.trainer, "a1", data(), message_id="m1")
        second = send(connected.trainer, "a1", data(seed=1), message_id="m2")
        assert await asyncio.wait_for(first.delivered, 5) is False
        # The next transfer's clock starts when it does.
        assert not second.delivered.done()
        assert await asyncio.wait_for(second.delivered, 5) is False
    finally:
        await connected.trainer.abort()
        await connected.aggregator.abort()


async def test_an_empty_message_is_delivered(ends: Ends) -> None:
    transfer = send(ends.trainer, "a1", b"")
    got = await received(ends.aggregator)
    assert (got.data, got.digest) == (bytearray(), message_digest([b""]))
    assert await asyncio.wait_for(transfer.delivered, 5) is True


async def test_a_broadcast_is_acknowledged_by_each_receiver() -> None:
    network = LoopbackNetwork()
    aggregator, _ = await open_channel(network, "a1", "aggregator", LIMITS)
    trainers = [(await open_channel(network, f"t{i}", "trainer", LIMITS))[0] for i in range(3)]
    try:
        async with asyncio.timeout(5):
            while len(aggregator.ends()) < 3:
                await asyncio.sleep(0.01)
        payload = data()
        outgoing = replace(message(payload), broadcast=True)
        transfers = aggregator.send(outgoing, [end.end_id for end in aggregator.ends()])
        assert [await asyncio.wait_for(t.delivered, 5) for t in transfers] == [True] * 3
        for trainer in trainers:
            got = await received(trainer)
            assert got.data == payload and got.broadcast
    finally:
        for channel in [aggregator, *trainers]:
            await channel.abort()


def streaming(payload: bytes, pieces: int, message_id: str = "m1") -> tuple[Outgoing, list[bytes]]:
    """A message taken before its bytes, and its bytes cut unevenly (not on chunks)."""
    outgoing = Outgoing.streaming(message_id, len(payload), False, LIMITS.chunk_bytes)
    cuts = sorted(random.Random(1).sample(range(1, len(payload)), pieces - 1))
    bounds = [0, *cuts, len(payload)]
    return outgoing, [payload[a:b] for a, b in itertools.pairwise(bounds)]


async def test_a_message_is_sent_while_its_bytes_stream_in(ends: Ends) -> None:
    payload = data()
    outgoing, pieces = streaming(payload, 7)
    (transfer,) = ends.trainer.send(outgoing, ["a1"])
    for piece in pieces[:-1]:
        outgoing.write(piece)
        await asyncio.sleep(0.01)
    # Whole chunks went out already; the last one waits for the digest.
    sent = ends.network.chunks_sent
    assert 0 < len(sent) < outgoing.total_chunks and not outgoing.complete
    assert await ends.aggregator.receive(None, no_wait=True) is None
    outgoing.write(pieces[-1])
    outgoing.finish(message_digest([payload]))
    got = await received(ends.aggregator)
    assert got.data == payload and got.digest == message_digest([payload])
    assert await asyncio.wait_for(transfer.delivered, 5) is True


async def test_an_abandoned_upload_is_never_delivered(ends: Ends) -> None:
    payload = data()
    outgoing, pieces = streaming(payload, 3)
    (transfer,) = ends.trainer.send(outgoing, ["a1"])
    outgoing.write(pieces[0])
    outgoing.write(pieces[1])
    await asyncio.sleep(0.05)
    outgoing.abandon()
    assert await asyncio.wait_for(transfer.delivered, 5) is False
    # The next message replaces the unfinished one; nothing of the first arrives.
    second = data(seed=2)
    send(ends.trainer, "a1", second, "m2")
    got = await received(ends.aggregator)
    assert (got.message_id, bytes(got.data)) == ("m2", second)
    assert await ends.aggregator.receive(None, no_wait=True) is None


async def test_a_wrong_digest_on_the_last_chunk_is_corrupt_then_resent(ends: Ends) -> None:
    payload = data()
    outgoing, pieces = streaming(payload, 4)
    (transfer,) = ends.trainer.send(outgoing, ["a1"])
    for piece in pieces:
        outgoing.write(piece)
    outgoing.finish(message_digest([b"something else"]))
    await asyncio.sleep(0.2)
    assert await ends.aggregator.receive(None, no_wait=True) is None
    assert transfer.corrupt >= 1


def test_pieces_of_a_streamed_message_are_its_chunks() -> None:
    payload = data(10 * 1024 + 3)
    outgoing, pieces = streaming(payload, 9)
    for piece in pieces:
        outgoing.write(piece)
    chunks = [outgoing.piece(i) for i in range(outgoing.total_chunks)]
    assert b"".join(chunks) == payload
    assert all(len(c) == LIMITS.chunk_bytes for c in chunks[:-1])
