"""A broker killed and restarted in the middle of a 100 MB transfer: the transfer
resumes where the receiver's acknowledgements left it, and delivers exactly once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from flame.flamelet.dataplane import MqttTransport
from tests.dataplane.brokers import Mosquitto
from tests.dataplane.support import (
    CHANNEL,
    MIB,
    Task,
    Tasks,
    count_chunks_sent,
    digest,
    job_id,
    payload,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def chunks_sent(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """How many times each chunk sequence was published, by any bridge."""
    return count_chunks_sent(monkeypatch, MqttTransport)


async def progress(sender: Task) -> float:
    """The acknowledged share of the sender's one transfer (0 before it starts)."""
    transfers = sender.plane.bridge.joined(CHANNEL).pending_transfers()
    if not transfers:
        return 0.0
    (transfer,) = transfers
    return transfer.acked / transfer.frames


async def test_a_transfer_survives_a_broker_restart(
    tasks: Tasks, mosquitto: Mosquitto, chunks_sent: Counter[int]
) -> None:
    job = job_id()
    aggregator = await tasks.start("aggregator", job=job)
    trainer = await tasks.start("trainer", job=job)
    await trainer.await_ends([aggregator.id])
    await aggregator.await_ends([trainer.id])
    data = payload(100 * MIB, seed=11)
    # The bridge sends while the bytes stream in: watch the transfer during the upload.
    sending = asyncio.create_task(trainer.send(data, [aggregator.id]))

    async with asyncio.timeout(20):
        while (done := await progress(trainer)) < 0.15:
            await asyncio.sleep(0.005)
    assert done < 0.9, "the transfer was nearly over before the broker could be killed"
    mosquitto.kill()
    await asyncio.sleep(1.0)
    mosquitto.start()
    began = time.monotonic()
    await sending

    received = await aggregator.receive([trainer.id], timeout=40)
    assert received is not None
    assert digest(received.data) == digest(data)
    assert received.header.digest == digest(data)
    took = time.monotonic() - began
    print(f"\nkilled at {done:.0%} acknowledged; delivered {took:.1f} s after the restart")
    # Resumed, not restarted: the first chunk went out once.
    assert chunks_sent[0] == 1
    # Exactly once, even after the resends settle.
    await asyncio.sleep(1.0)
    assert await aggregator.receive(no_wait=True) is None
    # Both ends announced themselves again on the fresh broker.
    await aggregator.await_ends([trainer.id])
    await trainer.await_ends([aggregator.id])
    assert trainer.plane.bridge.joined(CHANNEL).pending_transfers() == []
