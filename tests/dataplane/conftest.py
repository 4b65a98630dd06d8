"""Brokers and bridges for the data-plane tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from flame.flamelet.dataplane import BrokerSettings, MqttProtocol
from tests.dataplane.brokers import AmqttBroker, Mosquitto
from tests.dataplane.support import Harness, P2pTasks, Tasks


@pytest.fixture
def short_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a short path: Unix socket paths are limited to about 100 bytes."""
    return tmp_path_factory.mktemp("dp")


@pytest.fixture
def mosquitto(short_tmp: Path) -> Iterator[Mosquitto]:
    """A fresh mosquitto (anonymous, no persistence) for one test."""
    broker = Mosquitto(short_tmp)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def amqtt_broker() -> Iterator[AmqttBroker]:
    """The embedded amqtt broker, in a thread of the test process."""
    broker = AmqttBroker()
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
async def tasks(mosquitto: Mosquitto, short_tmp: Path) -> AsyncIterator[Tasks]:
    """Bridges on the test's mosquitto, stopped at the end of the test."""
    started = Tasks(short_tmp, BrokerSettings(port=mosquitto.port))
    yield started
    await started.stop_all()


@pytest.fixture
async def amqtt_tasks(amqtt_broker: AmqttBroker, short_tmp: Path) -> AsyncIterator[Tasks]:
    """Bridges on the test's amqtt broker (MQTT 3.1.1)."""
    broker = BrokerSettings(port=amqtt_broker.port, protocol=MqttProtocol.V311)
    started = Tasks(short_tmp, broker)
    yield started
    await started.stop_all()


@pytest.fixture
async def p2p(short_tmp: Path) -> AsyncIterator[P2pTasks]:
    """p2p bridges discovering each other in the test's folder."""
    started = P2pTasks(short_tmp)
    yield started
    await started.stop_all()


@pytest.fixture(params=["mqtt", "p2p"])
def channel_tasks(request: pytest.FixtureRequest) -> Harness:
    """The harness of each transport in turn, for tests of the channel contract."""
    return request.getfixturevalue("tasks" if request.param == "mqtt" else "p2p")
