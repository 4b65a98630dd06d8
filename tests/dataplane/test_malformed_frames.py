"""Garbage on a bridge's topics is logged and dropped; the bridge keeps working."""

from __future__ import annotations

import asyncio
import logging

import blake3
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from flame.transport.v1 import frame_pb2
from tests.dataplane.brokers import Mosquitto
from tests.dataplane.support import CHANNEL, MIB, Tasks, job_id, payload

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def chunk(**fields: object) -> bytes:
    defaults: dict[str, object] = {
        "sender_id": "f" * 40,
        "channel": CHANNEL,
        "message_id": "evil",
        "sequence": 0,
        "total_chunks": 1,
        "total_size": 4,
        "digest": blake3.blake3(b"evil").hexdigest(),
        "data": b"evil",
    }
    return frame_pb2.Frame(chunk=frame_pb2.Chunk(**{**defaults, **fields})).SerializeToString()  # type: ignore[arg-type]


def publish_all(port: int, messages: list[tuple[str, bytes, bool]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, body, retain in messages:
            client.publish(topic, body, qos=1, retain=retain).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_malformed_frames_are_dropped(
    tasks: Tasks, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    job = job_id()
    aggregator = await tasks.start("aggregator", job=job)
    trainer = await tasks.start("trainer", job=job)
    await aggregator.await_ends([trainer.id])
    await trainer.await_ends([aggregator.id])
    base = f"flame/{job}/{CHANNEL}/default"
    data_topic = f"{base}/data/{aggregator.id}"
    presence = frame_pb2.Frame(
        presence=frame_pb2.Presence(type=frame_pb2.Presence.TYPE_JOIN, end_id="x", role="trainer")
    ).SerializeToString()
    garbage = [
        (data_topic, b"\xff\xfe not a protobuf", False),
        (data_topic, b"", False),
        (data_topic, presence, False),  # A presence where chunks go.
        (data_topic, chunk(sender_id=trainer.id, total_size=2**62), False),
        (data_topic, chunk(sender_id=trainer.id, digest="not hex"), False),
        (data_topic, chunk(sender_id=trainer.id, sequence=7), False),
        (data_topic, chunk(sender_id=trainer.id, channel="other"), False),
        (data_topic, chunk(sender_id=trainer.id, data=b"too long"), False),
        (data_topic, chunk(), False),  # From a task that is no end.
        (f"{base}/ack/{trainer.id}", b"\x00\x01\x02", False),
        (f"{base}/presence/trainer/spoofed", b"\x08", True),  # Retained garbage.
        (f"{base}/presence/trainer/spoofed", presence, True),  # Its end id is not "spoofed".
        (f"{base}/leave/trainer/{trainer.id}", b"junk", False),
    ]
    with caplog.at_level(logging.WARNING, logger="flame.flamelet.dataplane"):
        await asyncio.to_thread(publish_all, mosquitto.port, garbage)
        await asyncio.sleep(0.5)
    dropped = [r for r in caplog.records if r.getMessage().startswith("dropped")]
    assert len(dropped) >= 8
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    assert await aggregator.ends() == [trainer.id]
    assert await aggregator.receive(no_wait=True) is None
    data = payload(3 * MIB, seed=5)
    await trainer.send(data, [aggregator.id])
    received = await aggregator.receive([trainer.id])
    assert received is not None and received.data == data
    # A newcomer is not fooled by the retained garbage either.
    newcomer = await tasks.start("aggregator", job=job)
    await newcomer.await_ends([trainer.id])
