"""FedAvg (McMahan et al. 2017): add the weighted mean delta to the global weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flame.mode.weights import Weights, add
from flame.optimizer.optimizer import Optimizer

__all__ = ["FedAvg"]


class FedAvg(Optimizer):
    """`w <- w + sum_i (n_i / N) delta_i`.

    Example:
        >>> import numpy as np
        >>> FedAvg().do({"w": np.array([1.0])}, {"w": np.array([0.5])})
        {'w': array([1.5])}
    """

    def do(self, base_weights: Mapping[str, Any], mean_delta: Mapping[str, Any]) -> Weights:
        """See `Optimizer.do`."""
        return add(base_weights, mean_delta)
