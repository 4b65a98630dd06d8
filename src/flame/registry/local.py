"""The `local` registry: the same records as MLflow, as plain files under one folder.

Layout under the root folder::

    <job name>-<job id>/<task id>/run.json       role, task and start time
    <job name>-<job id>/<task id>/metrics.csv    step,timestamp,key,value per metric
    <job name>-<job id>/<task id>/params.json    the parameters, as text
    models/<name>/<version>/weights.flame        model weights (flame.wire codec)
    models/<name>/<version>/source.json          the run that saved them
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flame.mode.weights import Weights
from flame.registry.registry import (
    WEIGHTS_FILE,
    RegistryClient,
    RegistryError,
    RunInfo,
    check_name,
    param_value,
    read_weights,
    write_weights,
)

__all__ = ["LocalRegistry"]


class LocalRegistry(RegistryClient):
    """Logs to files under `root`; see the module docstring for the layout.

    Unlike the original, `setup_run` keeps what an earlier run of the task wrote, and
    `load_model` works before `setup_run`.

    Args:
        root: The registry's folder; created when needed.
        run: The job and task that log.
    """

    def __init__(self, *, root: Path, run: RunInfo) -> None:
        self.root = root
        self.run = run
        self.run_dir = root / run.experiment / run.task_id

    def setup_run(self) -> None:
        """Create the run folder and record who runs."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        info = {"role": self.run.role, "task_id": self.run.task_id, "started": time.time()}
        (self.run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")

    def save_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append one row per metric to `metrics.csv`."""
        path = self.run_dir / "metrics.csv"
        is_new = not path.exists()
        now = time.time()
        with path.open("a", newline="") as file:
            writer = csv.writer(file)
            if is_new:
                writer.writerow(["step", "timestamp", "key", "value"])
            writer.writerows([step, now, key, float(value)] for key, value in metrics.items())

    def save_params(self, params: Mapping[str, Any]) -> None:
        """Write `params.json`, leaving out None values."""
        text = {key: param_value(value) for key, value in params.items() if value is not None}
        (self.run_dir / "params.json").write_text(json.dumps(text, indent=2) + "\n")

    def save_model(self, name: str, weights: Mapping[str, Any]) -> int:
        """Write the next version of model `name`; return its number (1 for the first)."""
        folder = self.root / "models" / check_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        version = 1 + max((int(p.name) for p in folder.iterdir() if p.name.isdigit()), default=0)
        while True:
            try:
                # mkdir is atomic: two tasks saving at once get different versions.
                (folder / str(version)).mkdir()
                break
            except FileExistsError:
                version += 1
        write_weights(folder / str(version) / WEIGHTS_FILE, weights)
        source = {"experiment": self.run.experiment, "task_id": self.run.task_id}
        (folder / str(version) / "source.json").write_text(json.dumps(source) + "\n")
        return version

    def load_model(self, name: str, version: int) -> Weights:
        """Read version `version` of model `name`.

        Raises:
            RegistryError: There is no such model version.
        """
        path = self.root / "models" / check_name(name) / str(version) / WEIGHTS_FILE
        if not path.is_file():
            raise RegistryError(f"no model {name!r} version {version} under {self.root}")
        return read_weights(path)

    def cleanup(self, *, failed: bool = False) -> None:
        """Nothing to end: every record is already written."""
