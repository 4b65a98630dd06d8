"""The modes against the SDK's real `Channel`, over the fake ChannelService of tests/sdk.

The in-memory channels of the other tests imitate `Channel`; these tests check the
assumptions they encode (received messages, `recv_fifo` errors) on the real thing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from flame.channel import Channel
from flame.channel_manager import ChannelManager
from flame.config import Config
from flame.mode.horizontal.syncfl.protocol import collect_updates
from flame.mode.message import MessageType
from flame.wire import decode
from tests.sdk.conftest import CHANNEL, FAST, PEERS
from tests.sdk.fake_dataplane import FakeDataPlane
from tests.sdk.modes.roles import (
    INITIAL_BIAS,
    INITIAL_WEIGHT,
    LinearTrainer,
    local_sgd,
    trainer_data,
)


def test_a_trainer_round_over_the_real_channel(
    trainer_dict: dict[str, Any], dataplane: FakeDataPlane
) -> None:
    config = Config.from_dict({**trainer_dict, "hyperparameters": {"joinTimeout": 5}})
    trainer = LinearTrainer(config, seed=0, size=10)
    trainer.cm = ChannelManager(config, socket_path=dataplane.socket_path, timeouts=FAST)
    dataplane.add_end(CHANNEL, "agg-eu")
    global_weights = {
        "weight": torch.tensor(INITIAL_WEIGHT, dtype=torch.float32),
        "bias": torch.tensor(INITIAL_BIAS, dtype=torch.float32),
    }
    dataplane.deliver(
        CHANNEL, "agg-eu", {MessageType.WEIGHTS: global_weights, MessageType.ROUND: 1}
    )
    dataplane.deliver(CHANNEL, "agg-eu", {MessageType.EOT: True})

    trainer.compose()
    trainer.run()

    (upload,) = dataplane.service.sent
    assert list(upload.header.end_ids) == ["agg-eu"]
    message = decode(upload.data)
    assert (message["DATASET_SIZE"], message["MODEL_VERSION"]) == (10, 1)
    weight, bias = local_sgd(INITIAL_WEIGHT[0], INITIAL_BIAS[0], *trainer_data(0, 10))
    delta = message["WEIGHTS"]
    np.testing.assert_allclose(delta["weight"].numpy()[0], weight - INITIAL_WEIGHT[0], rtol=1e-5)
    np.testing.assert_allclose(delta["bias"].numpy(), [bias - INITIAL_BIAS[0]], rtol=1e-5)
    assert dataplane.service.left == [CHANNEL]


def test_collect_updates_over_the_real_channel(channel: Channel, dataplane: FakeDataPlane) -> None:
    first, second = PEERS
    update = {"w": np.array([2.0, 4.0])}
    dataplane.deliver(CHANNEL, second, {"WEIGHTS": update, "DATASET_SIZE": 1, "MODEL_VERSION": 0})
    dataplane.deliver(CHANNEL, first, {"WEIGHTS": update, "DATASET_SIZE": 3, "MODEL_VERSION": 1})
    # `second` sent only a late update, then left: the round goes on without it.
    dataplane.remove_end(CHANNEL, second)

    updates = collect_updates(channel, PEERS, round_=1, timeout=3.0)

    assert (updates.count, updates.total) == (1, 3)
    np.testing.assert_array_equal(updates.mean()["w"], [2.0, 4.0])
