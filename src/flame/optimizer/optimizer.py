"""The server-side optimizer interface and the trainer-side regularizer it comes with."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

from flame.mode.weights import Weights

__all__ = ["Optimizer", "Regularizer"]


class Regularizer:
    """A term trainers add to their loss; this default one adds nothing.

    User training code calls `self.regularizer.get_term(w=..., w_t=...)` whatever the
    optimizer, so that switching to FedProx is a configuration change.
    """

    def get_term(self, *, w: Iterable[Any], w_t: Iterable[Any] | None = None) -> Any:
        """The regularization term for the current parameters.

        Args:
            w: The model's current parameters (`model.parameters()`).
            w_t: The parameters of the global model the round started from.

        Returns:
            0.0 here; a scalar tensor in regularizers that do something.
        """
        return 0.0

    def update(self) -> None:
        """Forget per-round state; the trainer calls it when it uploads."""


class Optimizer(ABC):
    """Turns the weighted mean of the trainers' deltas into the next global weights.

    The aggregator receives each trainer's delta (local minus global weights) with its
    sample count, folds it into a running weighted mean, and calls `do` once per round.

    Attributes:
        regularizer: What trainers of this algorithm add to their loss.
    """

    def __init__(self) -> None:
        self.regularizer = Regularizer()

    @abstractmethod
    def do(self, base_weights: Mapping[str, Any], mean_delta: Mapping[str, Any]) -> Weights:
        """Compute the next global weights.

        Args:
            base_weights: The current global weights, the base every delta was taken from.
            mean_delta: The sample-weighted mean of this round's deltas, same tensor names.

        Returns:
            New weights; the inputs are not modified.
        """
