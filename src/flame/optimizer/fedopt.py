"""The FedOpt family (Reddi et al. 2021, "Adaptive Federated Optimization"), Algorithm 2.

The mean delta is a pseudo-gradient `d`; per tensor:

    m <- beta_1 m + (1 - beta_1) d                    (m starts at 0)
    v <- second_moment(v, d)                          (v starts at tau^2, as in the paper)
    w <- w + eta m / (sqrt(v) + tau)

There is no bias correction. Integer tensors (counters) get the plain FedAvg update.
Unlike the original SDK, the first round is adaptive too (it was plain FedAvg there), and
the step is applied to the weights passed in rather than to a copy the optimizer kept.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np

from flame.mode.weights import Weights, add_tensor, is_float
from flame.optimizer.optimizer import Optimizer

__all__ = ["FedOpt"]


class FedOpt(Optimizer):
    """Base of FedAdaGrad, FedAdam and FedYogi; they differ in `second_moment`.

    Args:
        beta_1: Decay of the first moment.
        beta_2: Decay of the second moment (unused by FedAdaGrad).
        eta: Server learning rate.
        tau: Adaptivity: bounds the step where `v` is small.
    """

    def __init__(
        self, *, beta_1: float = 0.9, beta_2: float = 0.99, eta: float = 1e-2, tau: float = 1e-3
    ) -> None:
        super().__init__()
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.eta = eta
        self.tau = tau
        self.m: Weights = {}
        self.v: Weights = {}

    def do(self, base_weights: Mapping[str, Any], mean_delta: Mapping[str, Any]) -> Weights:
        """See `Optimizer.do`; also advances the moments."""
        return {
            name: self._step(name, base, mean_delta[name]) for name, base in base_weights.items()
        }

    @abstractmethod
    def second_moment(self, v: Any, d_squared: Any) -> Any:
        """The next second moment from the previous one and the squared pseudo-gradient."""

    def _step(self, name: str, base: Any, delta: Any) -> Any:
        if not is_float(base):
            return add_tensor(base, delta)
        if name not in self.m:
            self.m[name], self.v[name] = delta * 0, delta * 0 + self.tau**2
        self.m[name] = m = self.beta_1 * self.m[name] + (1 - self.beta_1) * delta
        self.v[name] = v = self.second_moment(self.v[name], delta * delta)
        return add_tensor(base, self.eta * m / (v**0.5 + self.tau))


def sign(tensor: Any) -> Any:
    """The elementwise sign of a torch tensor or NumPy array."""
    return np.sign(tensor) if isinstance(tensor, np.ndarray) else tensor.sign()
