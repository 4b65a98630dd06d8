"""Weights arithmetic and the incremental (bounded-memory) weighted mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flame.mode.weights import (
    WeightsAccumulator,
    add,
    get_weights,
    global_norm,
    set_weights,
    subtract,
)


def random_state(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "fc.weight": torch.randn(4, 3, generator=generator),
        "fc.bias": torch.randn(4, generator=generator, dtype=torch.float64),
        "bn.num_batches_tracked": torch.randint(0, 100, (), generator=generator),
    }


def test_incremental_aggregation_equals_the_batch_weighted_mean() -> None:
    deltas = [random_state(seed) for seed in range(5)]
    sizes = [3, 10, 1, 7, 50]
    accumulator = WeightsAccumulator()
    for delta, size in zip(deltas, sizes, strict=True):
        accumulator.add(delta, size)

    mean = accumulator.mean()

    total = sum(sizes)
    for name in deltas[0]:
        stacked = torch.stack([d[name].double() * n for d, n in zip(deltas, sizes, strict=True)])
        torch.testing.assert_close(mean[name].double(), stacked.sum(0) / total)
    assert (accumulator.count, accumulator.total) == (5, total)
    assert mean["fc.weight"].dtype == torch.float32  # summed in the tensor's own dtype
    assert mean["bn.num_batches_tracked"].dtype == torch.float64  # integers in float64


def test_the_accumulator_holds_one_running_sum_and_leaves_deltas_alone() -> None:
    first = {"w": np.array([1.0, 2.0])}
    accumulator = WeightsAccumulator()
    accumulator.add(first, 2)
    accumulator.add({"w": np.array([3.0, 4.0])}, 2)

    np.testing.assert_array_equal(first["w"], [1.0, 2.0])
    np.testing.assert_array_equal(accumulator.mean()["w"], [2.0, 3.0])


def test_a_mismatched_delta_is_refused_without_touching_the_sum() -> None:
    accumulator = WeightsAccumulator()
    accumulator.add({"w": np.ones(2), "b": np.ones(1)}, 1)

    with pytest.raises(ValueError, match="shape"):
        accumulator.add({"w": np.ones(3), "b": np.full(1, 5.0)}, 1)
    with pytest.raises(KeyError):
        accumulator.add({"w": np.ones(2)}, 1)
    with pytest.raises(ValueError, match="positive"):
        accumulator.add({"w": np.ones(2), "b": np.ones(1)}, 0)

    np.testing.assert_array_equal(accumulator.mean()["b"], [1.0])
    with pytest.raises(ValueError, match="no delta"):
        WeightsAccumulator().mean()


def test_torch_model_weights_round_trip_through_copies() -> None:
    model = torch.nn.Linear(2, 1)
    weights = get_weights(model)
    with torch.no_grad():
        model.weight.add_(1.0)

    delta = subtract(get_weights(model), weights)
    set_weights(model, add(weights, delta))

    torch.testing.assert_close(delta["weight"], torch.ones(1, 2))
    assert delta["bias"].abs().sum() == 0
    assert not weights["weight"].requires_grad


def test_a_dict_of_arrays_is_a_model_too() -> None:
    model = {"w": np.zeros(2)}
    weights = get_weights(model)
    weights["w"] += 1

    set_weights(model, weights)

    np.testing.assert_array_equal(model["w"], [1.0, 1.0])
    assert global_norm({"a": np.array([3.0]), "b": np.array([4.0]), "n": np.array([9])}) == 5.0
    with pytest.raises(TypeError, match=r"torch\.nn\.Module or a dict"):
        get_weights(object())


def test_zero_dimensional_arrays_stay_arrays() -> None:
    # NumPy makes scalars of 0-d results; they would then travel as plain floats.
    delta = subtract({"s": np.array(2.0)}, {"s": np.array(1.5)})
    accumulator = WeightsAccumulator()
    accumulator.add(delta, 1)
    accumulator.add(delta, 3)

    mean = accumulator.mean()

    assert isinstance(delta["s"], np.ndarray) and isinstance(mean["s"], np.ndarray)
    assert float(mean["s"]) == 0.5
    assert isinstance(add({"s": np.array(1.0)}, mean)["s"], np.ndarray)
