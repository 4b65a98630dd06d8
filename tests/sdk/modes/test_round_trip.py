"""Whole jobs in one process: roles in threads over in-memory channels.

The global model after training must equal FedAvg replayed by hand (`reference_fedavg`),
including when a trainer dies mid-job, loudly (its channels drop) or silently (it hangs
and the aggregator's deadline ends the round).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flame.mode.horizontal.syncfl.protocol import QuorumError
from flame.mode.message import MessageType
from flame.mode.role import Role
from flame.registry import LocalRegistry, RunInfo
from tests.sdk.modes.memory_channels import MemoryHub
from tests.sdk.modes.roles import (
    LinearAggregator,
    LinearTrainer,
    RelayAggregator,
    channel,
    reference_fedavg,
    task_config,
    trainer_data,
)

SIZES = {"t1": 10, "t2": 20, "t3": 30}
PARAM = channel("param-channel", ("aggregator", "trainer"), ["default"])
ROUNDS = 3
JOIN_WAIT = 10.0


def run_roles(roles: Sequence[Role], timeout: float = 30.0) -> dict[int, BaseException]:
    """Compose and run every role in its own thread; the exceptions by role index."""
    errors: dict[int, BaseException] = {}

    def target(index: int, role: Role) -> None:
        try:
            role.compose()
            role.run()
        except BaseException as exc:
            errors[index] = exc

    threads = [
        threading.Thread(target=target, args=(i, role), daemon=True) for i, role in enumerate(roles)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a role hung"
    return errors


def two_tier(
    hub: MemoryHub,
    registry: Path,
    *,
    hyperparameters: dict[str, Any] | None = None,
    trainer: Callable[..., LinearTrainer] = LinearTrainer,
    crash: dict[str, int] | None = None,
    silent: frozenset[str] = frozenset(),
) -> tuple[LinearAggregator, list[LinearTrainer]]:
    """An aggregator and the trainers of SIZES, joined on one in-memory channel."""
    hyper = {"rounds": ROUNDS, "joinTimeout": JOIN_WAIT, **(hyperparameters or {})}
    groups = {"param-channel": "default"}
    registry_block = {"sort": "local", "uri": str(registry)}
    aggregator = LinearAggregator(
        task_config(
            "agg", "aggregator", [PARAM], groups, hyperparameters=hyper, registry=registry_block
        )
    )
    trainers = [
        trainer(
            task_config(name, "trainer", [PARAM], groups, hyperparameters=hyper),
            seed=index,
            size=size,
            crash_in_round=(crash or {}).get(name, 0),
        )
        for index, (name, size) in enumerate(SIZES.items())
    ]
    for role in [aggregator, *trainers]:
        role.cm = hub.manager(role.config, silent=role.config.task_id in silent)
        # Everyone is on the channel before round 1, so round 1 has all trainers.
        role.cm.join_all()
    return aggregator, trainers


def global_model(aggregator: LinearAggregator) -> tuple[np.ndarray, np.ndarray]:
    model = aggregator.model
    return model.weight.detach().double().numpy()[0], model.bias.detach().double().numpy()


def expected(rounds: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    data = {name: trainer_data(i, size) for i, (name, size) in enumerate(SIZES.items())}
    return reference_fedavg(data, rounds)


def assert_model(actual: tuple[np.ndarray, np.ndarray], wanted: tuple[np.ndarray, Any]) -> None:
    np.testing.assert_allclose(actual[0], wanted[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(actual[1], wanted[1], rtol=1e-5, atol=1e-6)


def test_three_rounds_give_hand_computed_fedavg(tmp_path: Path) -> None:
    hub = MemoryHub()
    aggregator, trainers = two_tier(hub, tmp_path)

    errors = run_roles([aggregator, *trainers])

    assert errors == {}
    everyone = list(SIZES)
    assert_model(global_model(aggregator), expected([everyone] * ROUNDS))
    assert all(t._work_done for t in trainers)
    # Every upload is a delta tagged with its round, and the job ends with EOT.
    uploads = [m for _, sender, _, m in hub.sent if sender != "agg"]
    assert sorted(m["MODEL_VERSION"] for m in uploads) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert all(m["DATASET_SIZE"] in SIZES.values() for m in uploads)
    eots = [m for _, sender, _, m in hub.sent if sender == "agg" and "EOT" in m]
    assert len(eots) == len(trainers)
    # The final model was registered, and it is the global model.
    registry = LocalRegistry(root=tmp_path, run=RunInfo("job-1", "linear", "agg", "aggregator"))
    saved = registry.load_model("linear", 1)
    assert torch.equal(saved["weight"], aggregator.model.weight.detach())
    metrics = (tmp_path / "linear-job-1" / "agg" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + 2 * ROUNDS  # header, then weight-norm and aggregated_updates


def test_a_trainer_that_dies_in_round_2_does_not_hang_the_aggregator(tmp_path: Path) -> None:
    hub = MemoryHub()
    aggregator, trainers = two_tier(hub, tmp_path, crash={"t3": 2})

    errors = run_roles([aggregator, *trainers])

    assert list(errors) == [3]  # only t3, which crashed
    assert "crashes in round 2" in str(errors[3])
    assert_model(
        global_model(aggregator), expected([["t1", "t2", "t3"], ["t1", "t2"], ["t1", "t2"]])
    )


def test_a_silent_trainer_is_cut_off_by_the_aggregation_deadline(tmp_path: Path) -> None:
    hub = MemoryHub()
    aggregator, trainers = two_tier(
        hub,
        tmp_path,
        hyperparameters={"aggregationTimeout": 1.5},
        crash={"t3": 2},
        silent=frozenset({"t3"}),
    )

    errors = run_roles([aggregator, *trainers])

    assert list(errors) == [3]
    assert_model(
        global_model(aggregator), expected([["t1", "t2", "t3"], ["t1", "t2"], ["t1", "t2"]])
    )


def test_a_round_below_quorum_fails_with_a_clear_error(tmp_path: Path) -> None:
    hub = MemoryHub()
    aggregator, trainers = two_tier(
        hub, tmp_path, hyperparameters={"minTrainers": 3, "fetchTimeout": 5}, crash={"t3": 2}
    )

    errors = run_roles([aggregator, *trainers])

    quorum = errors.pop(0)
    assert isinstance(quorum, QuorumError)
    assert "round 2: 2 of 3 trainers sent an update, fewer than minTrainers=3" in str(quorum)
    # The aggregator left its channels, so the trainers stopped waiting at once.
    assert set(errors) == {1, 2, 3}


def test_late_updates_of_an_earlier_round_are_not_aggregated(tmp_path: Path) -> None:
    hub = MemoryHub()

    class LateInRoundOne(LinearTrainer):
        def train(self) -> None:
            if self._round == 1 and self.config.task_id == "t3":
                # Upload round 1's update only once the aggregator moved on to round 2.
                assert wait_until(lambda: any(m.get("ROUND") == 2 for m in to("t3")))
            super().train()

    def to(receiver: str) -> list[Any]:
        return [m for _, _, r, m in list(hub.sent) if r == receiver]

    aggregator, trainers = two_tier(
        hub, tmp_path, hyperparameters={"aggregationTimeout": 1.5}, trainer=LateInRoundOne
    )

    errors = run_roles([aggregator, *trainers])

    assert errors == {}
    # t3's round-1 update came during round 2 and was dropped; it was in rounds 2 and 3.
    assert_model(global_model(aggregator), expected([["t1", "t2"], list(SIZES), list(SIZES)]))


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_hierarchical_fedavg_equals_flat_fedavg() -> None:
    hub = MemoryHub()
    hyper = {"rounds": 2, "joinTimeout": JOIN_WAIT}
    global_channel = channel("global-channel", ("top-aggregator", "middle-aggregator"), ["default"])
    param_channel = channel("param-channel", ("middle-aggregator", "trainer"), ["eu", "na"])
    top = LinearAggregator(
        task_config(
            "top",
            "top-aggregator",
            [global_channel],
            {"global-channel": "default"},
            hyperparameters=hyper,
        )
    )
    middles = [
        RelayAggregator(
            task_config(
                f"mid-{group}",
                "middle-aggregator",
                [global_channel, param_channel],
                {"global-channel": "default", "param-channel": group},
                hyperparameters=hyper,
            )
        )
        for group in ("eu", "na")
    ]
    groups = {"t1": "eu", "t2": "eu", "t3": "na"}
    trainers = [
        LinearTrainer(
            task_config(
                name,
                "trainer",
                [param_channel],
                {"param-channel": groups[name]},
                hyperparameters=hyper,
            ),
            seed=index,
            size=size,
        )
        for index, (name, size) in enumerate(SIZES.items())
    ]
    for role in [top, *middles, *trainers]:
        role.cm = hub.manager(role.config)
        role.cm.join_all()

    errors = run_roles([top, *middles, *trainers])

    assert errors == {}
    assert_model(global_model(top), expected([list(SIZES)] * 2))
    # Middles upload their trainers' mean delta with the summed sample count.
    to_top = [m for _, _, receiver, m in hub.sent if receiver == "top"]
    assert sorted(m["DATASET_SIZE"] for m in to_top) == [30, 30, 30, 30]
    assert all(m[MessageType.MODEL_VERSION.name] in (1, 2) for m in to_top)
