"""User code of a tiny FL job, written as for the original SDK, and its expected result.

The model is a torch linear regression (3 features -> 1); each trainer takes `STEPS`
full-batch gradient steps of plain SGD on its own synthetic data per round.
`reference_fedavg` replays the same job in float64 NumPy with the closed-form gradient,
independently of the SDK.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from flame.config import Config
from flame.mode.horizontal.syncfl.middle_aggregator import MiddleAggregator
from flame.mode.horizontal.syncfl.top_aggregator import TopAggregator
from flame.mode.horizontal.syncfl.trainer import Trainer

STEPS = 5
LEARNING_RATE = 0.1
INITIAL_WEIGHT = np.array([[0.1, -0.2, 0.3]])
INITIAL_BIAS = np.array([0.05])
TRUE_WEIGHT = np.array([1.0, -2.0, 0.5])


def trainer_data(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and targets of one trainer."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(size, 3))
    targets = features @ TRUE_WEIGHT + 0.5 + 0.1 * rng.normal(size=size)
    return features, targets


class LinearTrainer(Trainer):
    """A trainer as users write them: `config`, `model`, `dataset_size` in `__init__`."""

    def __init__(self, config: Config, seed: int, size: int, crash_in_round: int = 0) -> None:
        self.config = config
        self.model = None
        self.dataset_size = 0
        self.seed, self.size, self.crash_in_round = seed, size, crash_in_round

    def initialize(self) -> None:
        self.model = torch.nn.Linear(3, 1)

    def load_data(self) -> None:
        features, targets = trainer_data(self.seed, self.size)
        self.features = torch.tensor(features, dtype=torch.float32)
        self.targets = torch.tensor(targets, dtype=torch.float32).unsqueeze(1)
        self.dataset_size = self.size

    def train(self) -> None:
        if self._round == self.crash_in_round:
            raise RuntimeError(f"trainer {self.seed} crashes in round {self._round}")
        optimizer = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE)
        for _ in range(STEPS):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(self.model(self.features), self.targets)
            loss.backward()
            optimizer.step()
        self.update_metrics({"train-loss": loss.item()})

    def evaluate(self) -> None:
        pass


class LinearAggregator(TopAggregator):
    """A top aggregator as users write them: `config`, `model`, `dataset` in `__init__`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.model = None
        self.dataset = None

    def initialize(self) -> None:
        self.model = torch.nn.Linear(3, 1)
        with torch.no_grad():
            self.model.weight.copy_(torch.tensor(INITIAL_WEIGHT))
            self.model.bias.copy_(torch.tensor(INITIAL_BIAS))

    def load_data(self) -> None:
        pass

    def train(self) -> None:
        pass

    def evaluate(self) -> None:
        self.update_metrics({"weight-norm": self.model.weight.norm().item()})


class RelayAggregator(MiddleAggregator):
    """A middle aggregator as users write them: only `config`."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def initialize(self) -> None:
        pass

    def load_data(self) -> None:
        pass

    def train(self) -> None:
        pass

    def evaluate(self) -> None:
        pass


def reference_fedavg(
    data: Mapping[str, tuple[np.ndarray, np.ndarray]], rounds: Iterable[Sequence[str]]
) -> tuple[np.ndarray, np.ndarray]:
    """The global (weight, bias) after FedAvg rounds with the given participants each."""
    weight, bias = INITIAL_WEIGHT[0].copy(), INITIAL_BIAS[0]
    for participants in rounds:
        sizes = np.array([len(data[name][1]) for name in participants], dtype=float)
        local = [local_sgd(weight, bias, *data[name]) for name in participants]
        pairs = list(zip(sizes, local, strict=True))
        weight = weight + sum(n * (w - weight) for n, (w, _) in pairs) / sizes.sum()
        bias = bias + sum(n * (b - bias) for n, (_, b) in pairs) / sizes.sum()
    return weight, np.array([bias])


def local_sgd(
    weight: np.ndarray, bias: float, features: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, float]:
    # d/dw mean((Xw + b - y)^2) = 2/n X^T r; d/db = 2/n sum(r).
    for _ in range(STEPS):
        residual = features @ weight + bias - targets
        weight = weight - LEARNING_RATE * 2 * features.T @ residual / len(targets)
        bias = bias - LEARNING_RATE * 2 * residual.mean()
    return weight, bias


def task_config(
    task_id: str,
    role: str,
    channels: list[dict[str, Any]],
    groups: Mapping[str, str],
    **extra: Any,
) -> Config:
    """A task configuration as the control plane writes it."""
    return Config.from_dict(
        {
            "taskid": task_id,
            "role": role,
            "realm": "",
            "backend": "mqtt",
            "brokers": [],
            "groupAssociation": dict(groups),
            "channels": channels,
            "job": {"id": "job-1", "name": "linear"},
            **extra,
        }
    )


def channel(name: str, pair: tuple[str, str], groups: list[str]) -> dict[str, Any]:
    """A channel entry: the first role of `pair` is upstream (distribute/aggregate)."""
    upstream, downstream = pair
    return {
        "name": name,
        "pair": list(pair),
        "groupBy": {"type": "tag", "value": groups},
        "funcTags": {upstream: ["distribute", "aggregate"], downstream: ["fetch", "upload"]},
    }
