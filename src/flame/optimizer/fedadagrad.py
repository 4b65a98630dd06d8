"""FedAdaGrad: FedOpt with `v <- v + d^2`."""

from __future__ import annotations

from typing import Any

from flame.optimizer.fedopt import FedOpt

__all__ = ["FedAdaGrad"]


class FedAdaGrad(FedOpt):
    """FedOpt with an accumulating second moment; `beta_2` is unused."""

    def second_moment(self, v: Any, d_squared: Any) -> Any:
        """`v + d^2`."""
        return v + d_squared
