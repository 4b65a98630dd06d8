"""FedAdam: FedOpt with `v <- beta_2 v + (1 - beta_2) d^2`."""

from __future__ import annotations

from typing import Any

from flame.optimizer.fedopt import FedOpt

__all__ = ["FedAdam"]


class FedAdam(FedOpt):
    """FedOpt with Adam's exponential moving second moment.

    Example:
        >>> import numpy as np
        >>> adam = FedAdam(beta_1=0.0, beta_2=0.0, eta=1.0, tau=0.0)
        >>> adam.do({"w": np.array([1.0])}, {"w": np.array([-4.0])})  # a sign step
        {'w': array([0.])}
    """

    def second_moment(self, v: Any, d_squared: Any) -> Any:
        """`beta_2 v + (1 - beta_2) d^2`."""
        return self.beta_2 * v + (1 - self.beta_2) * d_squared
