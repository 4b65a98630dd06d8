"""Two or more bridges on a real mosquitto, driven through ChannelService on their
Unix sockets: what only the MQTT transport does (retained presence, the outbox
budget, wills) and the errors; the contract both transports keep is in
test_channel_contract.py."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import grpc
import pytest

from flame.dataplane.v1 import channel_service_pb2 as pb
from tests.dataplane.brokers import Mosquitto
from tests.dataplane.support import MIB, TEST_LIMITS, Tasks, job_id, payload, reason

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_a_late_joiner_finds_the_retained_presence(tasks: Tasks) -> None:
    job = job_id()
    trainer = await tasks.start("trainer", job=job)
    await asyncio.sleep(0.2)
    aggregator = await tasks.start("aggregator", job=job)
    await aggregator.await_ends([trainer.id])
    await trainer.await_ends([aggregator.id])


async def test_watch_ends_streams_current_ends_then_changes(tasks: Tasks) -> None:
    job = job_id()
    aggregator = await tasks.start("aggregator", job=job)
    first = await tasks.start("trainer", job=job)
    await aggregator.await_ends([first.id])
    call = aggregator.stub.WatchEnds(pb.WatchEndsRequest(channel="param-channel"), timeout=20)
    changes = aiter(call)
    current = await anext(changes)
    assert (current.end.end_id, current.end.role, current.joined) == (first.id, "trainer", True)
    assert current.end.join_time.seconds > 0
    second = await tasks.start("trainer", job=job)
    joined = await anext(changes)
    assert (joined.end.end_id, joined.joined) == (second.id, True)
    await second.leave()
    left = await anext(changes)
    assert (left.end.end_id, left.joined) == (second.id, False)
    call.cancel()


async def test_send_stops_taking_messages_while_too_many_bytes_are_pending(
    tasks: Tasks, mosquitto: Mosquitto
) -> None:
    job = job_id()
    limits = replace(TEST_LIMITS, outbox_bytes=4 * MIB)
    aggregator = await tasks.start("aggregator", job=job)
    trainer = await tasks.start("trainer", job=job, limits=limits)
    await trainer.await_ends([aggregator.id])
    await aggregator.await_ends([trainer.id])
    first, second = payload(3 * MIB, seed=1), payload(3 * MIB, seed=2)
    mosquitto.pause()
    try:
        await trainer.send(first, [aggregator.id])  # Taken: the budget was free.
        blocked = asyncio.create_task(trainer.send(second, [aggregator.id]))
        await asyncio.sleep(0.5)
        assert not blocked.done()
        assert trainer.plane.bridge.budget.used == len(first)
    finally:
        mosquitto.resume()
    await blocked
    for expected in (first, second):
        received = await aggregator.receive([trainer.id])
        assert received is not None and received.data == expected
    async with asyncio.timeout(5):  # Freed once the completions reach the sender.
        while trainer.plane.bridge.budget.used:
            await asyncio.sleep(0.01)


async def test_receive_from_any_end_peek_and_no_wait(tasks: Tasks) -> None:
    job = job_id()
    aggregator = await tasks.start("aggregator", job=job)
    trainer = await tasks.start("trainer", job=job)
    await trainer.await_ends([aggregator.id])
    await aggregator.await_ends([trainer.id])
    assert await aggregator.receive(no_wait=True) is None
    await trainer.send(b"update", [aggregator.id], message_id="round-1")
    peeked = await aggregator.receive(peek=True)
    taken = await aggregator.receive()
    assert peeked is not None and taken is not None
    assert peeked.header.message_id == taken.header.message_id == "round-1"
    assert taken.data == b"update"
    assert await aggregator.receive(no_wait=True) is None


async def test_a_receive_ends_at_the_callers_deadline(tasks: Tasks) -> None:
    job = job_id()
    aggregator = await tasks.start("aggregator", job=job)
    trainer = await tasks.start("trainer", job=job)
    await aggregator.await_ends([trainer.id])
    began = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await aggregator.receive([trainer.id], timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - began < 3


async def test_invalid_sends_fail_with_their_reason(tasks: Tasks) -> None:
    job = job_id()
    aggregator = await tasks.start("aggregator", job=job)
    trainer = await tasks.start("trainer", job=job)
    await trainer.await_ends([aggregator.id])
    await aggregator.await_ends([trainer.id])
    cases = [
        ({"to": ["nobody"]}, grpc.StatusCode.NOT_FOUND, "END_NOT_FOUND"),
        ({"to": []}, grpc.StatusCode.INVALID_ARGUMENT, "MESSAGE_INVALID"),
        (
            {"to": [aggregator.id], "total_size": 5},
            grpc.StatusCode.INVALID_ARGUMENT,
            "MESSAGE_INVALID",
        ),
        (
            {"to": [aggregator.id], "total_size": 50},
            grpc.StatusCode.INVALID_ARGUMENT,
            "MESSAGE_INVALID",
        ),
        (
            {"to": [aggregator.id], "digest": "0" * 64},
            grpc.StatusCode.INVALID_ARGUMENT,
            "MESSAGE_INVALID",
        ),
        (
            {"to": [aggregator.id], "total_size": 2**40},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "MESSAGE_TOO_LARGE",
        ),
    ]
    for arguments, code, expected in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await trainer.send(b"x" * 10, **arguments)  # type: ignore[arg-type]
        assert reason(caught.value) == (code, expected), arguments
    # Nothing invalid was delivered, and the channel still works.
    await trainer.send(b"fine", [aggregator.id], message_id="m1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await trainer.send(b"again", [aggregator.id], message_id="m1")
    assert reason(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, "MESSAGE_INVALID")
    received = await aggregator.receive([trainer.id])
    assert received is not None and received.data == b"fine"
    assert await aggregator.receive(no_wait=True) is None


async def test_unknown_and_unjoined_channels_fail_with_their_reason(tasks: Tasks) -> None:
    trainer = await tasks.start("trainer", job=job_id(), join=False)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await trainer.join("no-such-channel")
    assert reason(caught.value) == (grpc.StatusCode.NOT_FOUND, "CHANNEL_NOT_FOUND")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await trainer.ends()
    assert reason(caught.value) == (grpc.StatusCode.FAILED_PRECONDITION, "CHANNEL_NOT_JOINED")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await trainer.receive(["nobody"])
    assert reason(caught.value) == (grpc.StatusCode.FAILED_PRECONDITION, "CHANNEL_NOT_JOINED")
    await trainer.join()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await trainer.receive(["nobody"])
    assert reason(caught.value) == (grpc.StatusCode.NOT_FOUND, "END_NOT_FOUND")


async def test_leave_delivers_pending_messages_and_clears_the_presence(tasks: Tasks) -> None:
    job = job_id()
    aggregator = await tasks.start("aggregator", job=job)
    trainer = await tasks.start("trainer", job=job)
    await trainer.await_ends([aggregator.id])
    await aggregator.await_ends([trainer.id])
    data = payload(20 * MIB, seed=7)
    await trainer.send(data, [aggregator.id])
    await trainer.leave()
    await aggregator.await_ends([], timeout=5)
    # A message of an end that left can still be read; then the end is gone.
    received = await aggregator.receive([trainer.id])
    assert received is not None and received.data == data
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await aggregator.receive([trainer.id])
    assert reason(caught.value) == (grpc.StatusCode.NOT_FOUND, "END_LEFT")
    # The retained JOIN is gone too: a newcomer does not see the trainer.
    newcomer = await tasks.start("aggregator", job=job)
    await asyncio.sleep(0.3)
    assert await newcomer.ends() == []


async def test_a_peer_that_dies_leaves_at_once(tasks: Tasks) -> None:
    job = job_id()
    aggregator = await tasks.start("aggregator", job=job)
    trainer = await tasks.start("trainer", job=job)
    await aggregator.await_ends([trainer.id])
    waiting = asyncio.create_task(aggregator.receive([trainer.id], timeout=20))
    await asyncio.sleep(0.2)
    began = time.monotonic()
    await trainer.plane.abort()  # The TCP connection drops, no DISCONNECT: the will fires.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await waiting
    assert reason(caught.value) == (grpc.StatusCode.NOT_FOUND, "END_LEFT")
    await aggregator.await_ends([], timeout=5)
    assert time.monotonic() - began < 5
    newcomer = await tasks.start("aggregator", job=job)
    await asyncio.sleep(0.3)
    assert await newcomer.ends() == []


async def test_an_unlisted_group_falls_back_to_default(tasks: Tasks) -> None:
    trainer = await tasks.start("trainer", job=job_id(), group="mars", groups=("eu",), join=False)
    assert (await trainer.join()).group == "default"
