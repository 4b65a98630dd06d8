"""The same bridge on the embedded amqtt broker, which speaks MQTT 3.1.1 only."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.dataplane.support import MIB, Tasks, job_id, payload, reason

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_presence_and_transfers_over_amqtt(amqtt_tasks: Tasks) -> None:
    job = job_id()
    aggregator = await amqtt_tasks.start("aggregator", job=job)
    trainers = [await amqtt_tasks.start("trainer", job=job) for _ in range(2)]
    await aggregator.await_ends([t.id for t in trainers])
    for trainer in trainers:
        await trainer.await_ends([aggregator.id])
    data = payload(1 * MIB, seed=1)
    sent = await aggregator.send(data, broadcast=True)
    assert sorted(sent.end_ids) == sorted(t.id for t in trainers)
    for trainer in trainers:
        assert (received := await trainer.receive([aggregator.id])) is not None
        assert received.data == data
    update = payload(20 * MIB, seed=2)
    await trainers[0].send(update, [aggregator.id])
    assert (received := await aggregator.receive([trainers[0].id])) is not None
    assert received.data == update


async def test_a_peer_that_dies_leaves_at_once_on_amqtt(amqtt_tasks: Tasks) -> None:
    job = job_id()
    aggregator = await amqtt_tasks.start("aggregator", job=job)
    trainer = await amqtt_tasks.start("trainer", job=job)
    await aggregator.await_ends([trainer.id])
    waiting = asyncio.create_task(aggregator.receive([trainer.id], timeout=20))
    await asyncio.sleep(0.2)
    await trainer.plane.abort()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await waiting
    assert reason(caught.value) == (grpc.StatusCode.NOT_FOUND, "END_LEFT")
    await aggregator.await_ends([], timeout=5)
