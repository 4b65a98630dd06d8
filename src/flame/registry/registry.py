"""The registry interface: where roles log metrics, parameters and models.

Models are stored as weights (a state dict of tensors) in one file written by the
pickle-free `flame.wire` codec, so loading a model never runs code from the registry.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from flame.errors import FlameSDKError
from flame.mode.weights import Weights
from flame.wire import decode, encode_bytes

__all__ = [
    "WEIGHTS_FILE",
    "RegistryClient",
    "RegistryError",
    "RunInfo",
    "check_name",
    "param_value",
    "read_weights",
    "write_weights",
]

# The file holding a model's weights, in a run's `model/` artifact folder.
WEIGHTS_FILE: Final = "weights.flame"


class RegistryError(FlameSDKError):
    """The registry failed, or has no such model."""


@dataclass(frozen=True)
class RunInfo:
    """Who is logging: one experiment per job, one run per task.

    Attributes:
        job_id: The job's id.
        job_name: The job's name.
        task_id: The task's id.
        role: The task's role.
    """

    job_id: str
    job_name: str
    task_id: str
    role: str

    @property
    def experiment(self) -> str:
        """`<job name>-<job id>`."""
        return f"{self.job_name}-{self.job_id}"

    @property
    def run_name(self) -> str:
        """`<role>-<first 8 characters of the task id>`."""
        return f"{self.role}-{self.task_id[:8]}"


class RegistryClient(ABC):
    """Logs one task's run; `setup_run` first, `cleanup` last."""

    @abstractmethod
    def setup_run(self) -> None:
        """Start the run (create the experiment if needed)."""

    @abstractmethod
    def save_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log numeric metrics at a step (the 0-based round)."""

    @abstractmethod
    def save_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters once; None values are left out."""

    @abstractmethod
    def save_model(self, name: str, weights: Mapping[str, Any]) -> int:
        """Store weights as the next version of model `name`; return that version."""

    @abstractmethod
    def load_model(self, name: str, version: int) -> Weights:
        """The weights of version `version` of model `name`.

        Raises:
            RegistryError: There is no such model version.
        """

    @abstractmethod
    def cleanup(self, *, failed: bool = False) -> None:
        """End the run, marking it failed if the role failed."""


def write_weights(path: Path, weights: Mapping[str, Any]) -> None:
    """Write weights to `path` with the `flame.wire` codec."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_bytes(weights))


def read_weights(path: Path) -> Weights:
    """Read weights written by `write_weights`.

    Raises:
        RegistryError: The file is missing or is not a weights file.
    """
    try:
        # A writable buffer lets the decoded tensors share it instead of copying.
        return decode(bytearray(path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read weights from {path}: {exc}") from exc


def param_value(value: Any) -> str:
    """A parameter as text; mappings and sequences as their repr."""
    return value if isinstance(value, str) else repr(value)


def check_name(name: str) -> str:
    """A model name, refused if it could escape a folder.

    Raises:
        RegistryError: The name is empty or holds characters other than letters,
            digits, `.`, `_` and `-`.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in {".", ".."}:
        raise RegistryError(f"{name!r} is not a valid model name")
    return name
