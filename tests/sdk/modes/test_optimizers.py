"""Server optimizers and trainer regularizers against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flame.errors import ConfigError
from flame.mode.weights import WeightsAccumulator
from flame.optimizer import FedAdaGrad, FedAdam, FedAvg, FedProxRegularizer, FedYogi, Regularizer
from flame.optimizers import create_optimizer, optimizer_provider

TAU2 = 0.01**2  # v starts at tau^2


def test_fedavg_adds_the_sample_weighted_mean_delta() -> None:
    updates = WeightsAccumulator()
    updates.add({"w": np.array([1.0, 0.0])}, 1)
    updates.add({"w": np.array([0.0, 3.0])}, 3)

    new = FedAvg().do({"w": np.array([1.0, 2.0])}, updates.mean())

    # mean delta = (1 * [1, 0] + 3 * [0, 3]) / 4 = [0.25, 2.25]
    np.testing.assert_allclose(new["w"], [1.25, 4.25])


def test_fedavg_rounds_integer_buffers_instead_of_truncating() -> None:
    updates = WeightsAccumulator()
    updates.add({"steps": torch.tensor(3)}, 1)
    updates.add({"steps": torch.tensor(4)}, 2)

    new = FedAvg().do({"steps": torch.tensor(10)}, updates.mean())

    # mean delta = 11 / 3 = 3.67 -> 4 (the original's cast gave 3).
    assert new["steps"].dtype == torch.int64 and int(new["steps"]) == 14


def fedadam() -> FedAdam:
    return FedAdam(beta_1=0.9, beta_2=0.99, eta=0.1, tau=0.01)


def test_fedadam_two_steps_by_hand() -> None:
    adam = fedadam()

    first = adam.do({"w": np.array([1.0])}, {"w": np.array([0.5])})
    second = adam.do(first, {"w": np.array([-0.2])})

    m1 = 0.1 * 0.5
    v1 = 0.99 * TAU2 + 0.01 * 0.5**2
    w1 = 1.0 + 0.1 * m1 / (math.sqrt(v1) + 0.01)
    m2 = 0.9 * m1 + 0.1 * -0.2
    v2 = 0.99 * v1 + 0.01 * 0.2**2
    w2 = w1 + 0.1 * m2 / (math.sqrt(v2) + 0.01)
    np.testing.assert_allclose(first["w"], [w1], rtol=1e-12)
    np.testing.assert_allclose(second["w"], [w2], rtol=1e-12)
    assert w1 == pytest.approx(1.0819936, abs=1e-7)


@pytest.mark.parametrize(
    ("optimizer", "v1"),
    [
        (FedAdaGrad(beta_1=0.9, beta_2=0.99, eta=0.1, tau=0.01), TAU2 + 0.25),
        # sign(v - d^2) = sign(1e-4 - 0.25) = -1: v grows by (1 - beta_2) d^2.
        (FedYogi(beta_1=0.9, beta_2=0.99, eta=0.1, tau=0.01), TAU2 + 0.01 * 0.25),
    ],
)
def test_fedadagrad_and_fedyogi_second_moments(optimizer: FedAdaGrad | FedYogi, v1: float) -> None:
    new = optimizer.do({"w": np.array([1.0])}, {"w": np.array([0.5])})

    np.testing.assert_allclose(new["w"], [1.0 + 0.1 * 0.05 / (math.sqrt(v1) + 0.01)])
    np.testing.assert_allclose(optimizer.v["w"], [v1])


def test_fedadam_on_torch_matches_numpy_and_keeps_dtypes() -> None:
    base = {"w": torch.tensor([1.0, -1.0]), "steps": torch.tensor(7)}
    delta = {"w": torch.tensor([0.5, 0.1]), "steps": torch.tensor(2.0, dtype=torch.float64)}

    new = fedadam().do(base, delta)
    reference = fedadam().do({"w": np.array([1.0, -1.0])}, {"w": np.array([0.5, 0.1])})

    assert new["w"].dtype == torch.float32
    np.testing.assert_allclose(new["w"].numpy(), reference["w"], rtol=1e-6)
    assert int(new["steps"]) == 9  # integer tensors get the plain FedAvg step


def test_fedprox_term_and_its_gradient() -> None:
    regularizer = FedProxRegularizer(mu=0.5)
    w = torch.tensor([1.0, 2.0], requires_grad=True)

    term = regularizer.get_term(w=[w], w_t=[torch.zeros(2)])
    term.backward()

    assert term.item() == pytest.approx(0.25 * 5)  # mu / 2 * ||w - w_t||^2
    assert w.grad is not None and w.grad.tolist() == [0.5, 1.0]  # mu (w - w_t)
    # w_t is kept until update(): later calls need not pass it.
    assert regularizer.get_term(w=[w]).item() == pytest.approx(1.25)
    regularizer.update()
    with pytest.raises(ValueError, match="pass w_t"):
        regularizer.get_term(w=[w])


def test_the_factory_builds_each_sort_with_its_regularizer() -> None:
    assert isinstance(create_optimizer("fedavg").regularizer, Regularizer)
    assert create_optimizer("fedavg").regularizer.get_term(w=[]) == 0.0
    prox = optimizer_provider.get("fedprox", mu=0.01)
    assert isinstance(prox.regularizer, FedProxRegularizer) and prox.regularizer.mu == 0.01
    yogi = create_optimizer("fedyogi", beta_1=0.5, beta_2=0.9, eta=0.2, tau=0.1)
    assert (yogi.beta_1, yogi.beta_2, yogi.eta, yogi.tau) == (0.5, 0.9, 0.2, 0.1)


def test_the_factory_names_the_bad_key() -> None:
    with pytest.raises(ConfigError, match=r"optimizer\.sort"):
        create_optimizer("fedsgd")
    with pytest.raises(ConfigError, match=r"optimizer\.kwargs"):
        create_optimizer("fedprox")  # mu is required
    with pytest.raises(ConfigError, match=r"optimizer\.kwargs"):
        create_optimizer("fedavg", mu=1)
