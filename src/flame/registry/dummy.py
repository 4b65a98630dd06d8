"""The `dummy` registry: logs nothing, stores nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flame.mode.weights import Weights
from flame.registry.registry import RegistryClient, RegistryError

__all__ = ["DummyRegistry"]


class DummyRegistry(RegistryClient):
    """Accepts everything and keeps nothing."""

    def setup_run(self) -> None:
        """Nothing to start."""

    def save_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Drop the metrics."""

    def save_params(self, params: Mapping[str, Any]) -> None:
        """Drop the parameters."""

    def save_model(self, name: str, weights: Mapping[str, Any]) -> int:
        """Drop the weights; the version is always 0."""
        return 0

    def load_model(self, name: str, version: int) -> Weights:
        """Always fails: nothing is stored.

        Raises:
            RegistryError: Always.
        """
        raise RegistryError(
            f"the dummy registry holds no model {name!r} version {version}: "
            "configure registry.sort `mlflow` or `local` to load a base model"
        )

    def cleanup(self, *, failed: bool = False) -> None:
        """Nothing to end."""
