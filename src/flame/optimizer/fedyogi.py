"""FedYogi: FedOpt with `v <- v - (1 - beta_2) d^2 sign(v - d^2)`."""

from __future__ import annotations

from typing import Any

from flame.optimizer.fedopt import FedOpt, sign

__all__ = ["FedYogi"]


class FedYogi(FedOpt):
    """FedOpt with Yogi's additive second moment, which grows or shrinks towards `d^2`."""

    def second_moment(self, v: Any, d_squared: Any) -> Any:
        """`v - (1 - beta_2) d^2 sign(v - d^2)`."""
        return v - (1 - self.beta_2) * d_squared * sign(v - d_squared)
