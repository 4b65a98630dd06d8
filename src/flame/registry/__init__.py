"""Registries where roles log metrics, parameters and models: `dummy`, `local`, `mlflow`.

Build one from the configuration with `flame.registries.registry_from_config(config)`.
`flame.registry.mlflow` imports MLflow, so it is imported only when used.
"""

from __future__ import annotations

from flame.registry.dummy import DummyRegistry
from flame.registry.local import LocalRegistry
from flame.registry.registry import (
    WEIGHTS_FILE,
    RegistryClient,
    RegistryError,
    RunInfo,
    read_weights,
    write_weights,
)

__all__ = [
    "WEIGHTS_FILE",
    "DummyRegistry",
    "LocalRegistry",
    "RegistryClient",
    "RegistryError",
    "RunInfo",
    "read_weights",
    "write_weights",
]
