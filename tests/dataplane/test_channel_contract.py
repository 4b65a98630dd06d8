"""The channel contract: what every transport (MQTT through mosquitto, p2p through a
discovery folder) must do, one test body run against each through `channel_tasks`."""

from __future__ import annotations

import time

import pytest

from tests.dataplane.support import MIB, Harness, digest, job_id, pair, payload

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_join_answers_the_end_and_is_idempotent(channel_tasks: Harness) -> None:
    job = job_id()
    for role, other_role in (("trainer", "aggregator"), ("aggregator", "trainer")):
        task = await channel_tasks.start(role, job=job, join=False)
        first, second = await task.join(), await task.join()
        assert first == second
        assert (first.end_id, first.other_role, first.group, first.backend) == (
            task.id,
            other_role,
            "default",
            channel_tasks.backend,
        )


async def test_each_side_sees_the_other_role_only(channel_tasks: Harness) -> None:
    job = job_id()
    aggregator = await channel_tasks.start("aggregator", job=job)
    trainers = [await channel_tasks.start("trainer", job=job) for _ in range(2)]
    await aggregator.await_ends([t.id for t in trainers])
    for trainer in trainers:
        # Trainers are ends of the aggregator, never of each other.
        await trainer.await_ends([aggregator.id])


@pytest.mark.parametrize("size", [1 * MIB, 100 * MIB])
async def test_a_message_arrives_whole_with_its_digest(channel_tasks: Harness, size: int) -> None:
    aggregator, trainer = await pair(channel_tasks, job_id())
    data = payload(size)
    began = time.monotonic()
    sent = await trainer.send(data, [aggregator.id])
    received = await aggregator.receive([trainer.id])
    seconds = time.monotonic() - began
    assert received is not None
    assert received.data == data
    header = received.header
    assert (header.message_id, list(header.end_ids), header.total_size) == (
        sent.message_id,
        [trainer.id],
        size,
    )
    assert header.digest == digest(data)
    assert header.receive_time.seconds > 0
    rate = size / MIB / seconds
    print(
        f"\n{size / MIB:.0f} MiB over {channel_tasks.backend} in {seconds:.2f} s: {rate:.0f} MiB/s"
    )


async def test_a_broadcast_reaches_every_end_each_acknowledged(channel_tasks: Harness) -> None:
    job = job_id()
    aggregator = await channel_tasks.start("aggregator", job=job)
    trainers = [await channel_tasks.start("trainer", job=job) for _ in range(3)]
    await aggregator.await_ends([t.id for t in trainers])
    data = payload(10 * MIB, seed=3)
    sent = await aggregator.send(data, broadcast=True)
    assert sorted(sent.end_ids) == sorted(t.id for t in trainers)
    for trainer in trainers:
        received = await trainer.receive([aggregator.id])
        assert received is not None
        assert received.data == data
        assert received.header.broadcast
        assert received.header.message_id == sent.message_id


async def test_messages_both_ways_keep_their_order(channel_tasks: Harness) -> None:
    aggregator, trainer = await pair(channel_tasks, job_id())
    sizes = [3 * MIB, 10, 0, 2 * MIB + 1, 1]
    messages = [payload(size, seed=i) for i, size in enumerate(sizes)]
    ids = [(await trainer.send(m, [aggregator.id])).message_id for m in messages]
    await aggregator.send(b"model", [trainer.id])
    for message_id, message in zip(ids, messages, strict=True):
        received = await aggregator.receive([trainer.id])
        assert received is not None
        assert (received.header.message_id, bytes(received.data)) == (message_id, message)
    assert await aggregator.receive(no_wait=True) is None
    assert (back := await trainer.receive()) is not None and back.data == b"model"


async def test_groups_are_isolated(channel_tasks: Harness) -> None:
    job = job_id()
    groups = ("eu", "us")
    aggregators = {
        g: await channel_tasks.start("aggregator", job=job, group=g, groups=groups) for g in groups
    }
    trainers = {
        g: [await channel_tasks.start("trainer", job=job, group=g, groups=groups) for _ in range(2)]
        for g in groups
    }
    for group in groups:
        assert (await aggregators[group].join()).group == group
        await aggregators[group].await_ends([t.id for t in trainers[group]])
    await aggregators["eu"].send(b"eu only", broadcast=True)
    for trainer in trainers["eu"]:
        assert (received := await trainer.receive()) is not None and received.data == b"eu only"
    for trainer in trainers["us"]:
        assert await trainer.ends() == [aggregators["us"].id]
        assert await trainer.receive(no_wait=True) is None


async def test_jobs_are_isolated_on_one_broker_or_folder(channel_tasks: Harness) -> None:
    job_a, job_b = job_id(), job_id()
    aggregator_a = await channel_tasks.start("aggregator", job=job_a)
    aggregator_b = await channel_tasks.start("aggregator", job=job_b)
    trainer_a = await channel_tasks.start("trainer", job=job_a)
    trainer_b = await channel_tasks.start("trainer", job=job_b)
    await aggregator_a.await_ends([trainer_a.id])
    await aggregator_b.await_ends([trainer_b.id])
    await aggregator_a.send(b"for job a", broadcast=True)
    assert (received := await trainer_a.receive()) is not None and received.data == b"for job a"
    assert await trainer_b.receive(no_wait=True) is None
    assert await trainer_b.ends() == [aggregator_b.id]


async def test_a_self_loop_channel_sees_its_peers_but_not_itself(channel_tasks: Harness) -> None:
    job = job_id()
    pair_roles = ("trainer", "trainer")
    ring = [await channel_tasks.start("trainer", job=job, pair=pair_roles) for _ in range(3)]
    for member in ring:
        await member.await_ends([m.id for m in ring if m is not member])
    await ring[0].send(b"next", [ring[1].id])
    assert (received := await ring[1].receive([ring[0].id])) is not None
    assert received.data == b"next"
