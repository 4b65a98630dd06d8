"""FedProx (Li et al. 2020): FedAvg on the server, a proximal term on the trainers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flame.optimizer.fedavg import FedAvg
from flame.optimizer.optimizer import Regularizer

__all__ = ["FedProx", "FedProxRegularizer"]


class FedProxRegularizer(Regularizer):
    """`(mu / 2) ||w - w_t||^2`, keeping local training near the round's global model.

    `w_t` is captured (detached) the first time `get_term` is called in a round and kept
    until `update()`, so the training loop may pass it every batch at no cost.

    Args:
        mu: Strength of the proximal term.
    """

    def __init__(self, mu: float) -> None:
        self.mu = mu
        self._w_t: list[Any] | None = None

    def get_term(self, *, w: Iterable[Any], w_t: Iterable[Any] | None = None) -> Any:
        """The proximal term, differentiable in `w`.

        Args:
            w: The model's current parameters (torch tensors).
            w_t: The global parameters this round started from; needed on the first call
                of each round.

        Raises:
            ValueError: `w_t` was not given yet in this round, or the parameter counts differ.
        """
        if self._w_t is None:
            if w_t is None:
                raise ValueError("pass w_t, the round's global parameters, on the first call")
            self._w_t = [tensor.detach().clone() for tensor in w_t]
        params = list(w)
        if len(params) != len(self._w_t):
            raise ValueError(f"w has {len(params)} tensors, w_t has {len(self._w_t)}")
        squared = sum(((p - q) ** 2).sum() for p, q in zip(params, self._w_t, strict=True))
        return (self.mu / 2) * squared

    def update(self) -> None:
        """Forget this round's global parameters."""
        self._w_t = None


class FedProx(FedAvg):
    """FedAvg whose trainers add `FedProxRegularizer(mu)` to their loss.

    Args:
        mu: Strength of the proximal term.
    """

    def __init__(self, *, mu: float) -> None:
        super().__init__()
        self.regularizer = FedProxRegularizer(mu)
