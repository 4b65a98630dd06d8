"""Per-job credentials on mosquitto: username = job id, ACL `flame/%u/#`. A client
of one job cannot read another job's channels, and anonymous clients get nowhere."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from flame.flamelet.dataplane import BrokerSettings
from tests.dataplane.brokers import Mosquitto, password_entry
from tests.dataplane.support import Tasks, job_id, reason

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

JOB_A, JOB_B = job_id(), job_id()
PASSWORDS = {JOB_A: "secret-a", JOB_B: "secret-b"}


def write_password_file(path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        path.write_text("".join(password_entry(u, p) + "\n" for u, p in PASSWORDS.items()))
        return
    for index, (user, password) in enumerate(PASSWORDS.items()):
        create = ["-c"] if index == 0 else []
        subprocess.run([tool, "-b", *create, str(path), user, password], check=True)


@pytest.fixture
def secured(short_tmp: Path) -> Iterator[Mosquitto]:
    passwords, acl = short_tmp / "passwd", short_tmp / "acl"
    write_password_file(passwords)
    acl.write_text("pattern readwrite flame/%u/#\n")
    broker = Mosquitto(
        short_tmp,
        extra_conf=["allow_anonymous false", f"password_file {passwords}", f"acl_file {acl}"],
    )
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
async def job_tasks(secured: Mosquitto, short_tmp: Path) -> AsyncIterator[Tasks]:
    started = Tasks(short_tmp, BrokerSettings(port=secured.port))
    yield started
    await started.stop_all()


class Eavesdropper:
    """A raw MQTT client authenticated for one job, subscribed to every job's topics."""

    def __init__(self, port: int, username: str) -> None:
        self.received: list[str] = []
        self.subscribed = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.username_pw_set(username, PASSWORDS[username])
        client.on_connect = lambda c, *_: c.subscribe([(f"flame/{j}/#", 1) for j in PASSWORDS])
        client.on_subscribe = lambda *_: self.subscribed.set()
        client.on_message = lambda c, u, m: self.received.append(m.topic)
        client.connect("127.0.0.1", port)
        client.loop_start()
        self._client = client

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


async def test_a_job_reads_only_its_own_topics(job_tasks: Tasks, secured: Mosquitto) -> None:
    spy = Eavesdropper(secured.port, JOB_A)
    try:
        assert spy.subscribed.wait(5)
        for job in (JOB_A, JOB_B):
            broker = BrokerSettings.for_job(job, PASSWORDS[job]).at(f"127.0.0.1:{secured.port}")
            aggregator = await job_tasks.start("aggregator", job=job, broker=broker)
            trainer = await job_tasks.start("trainer", job=job, broker=broker)
            await aggregator.await_ends([trainer.id])
            await trainer.await_ends([aggregator.id])
            await trainer.send(b"update of " + job.encode(), [aggregator.id])
            received = await aggregator.receive([trainer.id])
            assert received is not None and received.data == b"update of " + job.encode()
        await asyncio.sleep(0.5)
    finally:
        spy.stop()
    # Job A's client saw job A's presences, chunks and acks, and none of job B's.
    assert {topic.split("/")[1] for topic in spy.received} == {JOB_A}
    assert any("/data/" in topic for topic in spy.received)


async def test_credentials_of_another_job_reach_nothing(
    job_tasks: Tasks, secured: Mosquitto
) -> None:
    own = BrokerSettings.for_job(JOB_B, PASSWORDS[JOB_B]).at(f"127.0.0.1:{secured.port}")
    stolen = BrokerSettings.for_job(JOB_A, PASSWORDS[JOB_A]).at(f"127.0.0.1:{secured.port}")
    aggregator = await job_tasks.start("aggregator", job=JOB_B, broker=own)
    intruder = await job_tasks.start("trainer", job=JOB_B, broker=stolen)
    await asyncio.sleep(0.5)
    assert await aggregator.ends() == []
    assert await intruder.ends() == []


async def test_anonymous_and_wrong_passwords_are_refused(
    job_tasks: Tasks, secured: Mosquitto
) -> None:
    wrong = BrokerSettings(username=JOB_A, password="guess", port=secured.port)
    for broker in (BrokerSettings(port=secured.port), wrong):
        task = await job_tasks.start("trainer", job=JOB_A, broker=broker, join=False)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await task.join()
        assert reason(caught.value) == (grpc.StatusCode.UNAVAILABLE, "BROKER_UNAVAILABLE")
