"""The `mlflow` registry (MLflow 3): an experiment per job, a run per task.

* Experiment `<job name>-<job id>`, created by whichever task comes first; run
  `<role>-<task id prefix>`, tagged with the job id, task id and role.
* Metrics with the 0-based round as step; parameters once.
* Models as a `model/<n>/weights.flame` artifact of the run (the n-th model the run
  saved; the pickle-free `flame.wire` codec, not a pickled or torch.save'd model),
  registered as a new version of a registered model; `load_model` downloads it back.

A `sqlite:///path.db` tracking URI needs no server; its artifacts then go to
`artifact_location` (MLflow would otherwise use `./mlruns` of the current folder).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from flame.mode.weights import Weights
from flame.registry.registry import (
    WEIGHTS_FILE,
    RegistryClient,
    RegistryError,
    RunInfo,
    param_value,
    read_weights,
    write_weights,
)

__all__ = ["MODEL_ARTIFACT_PATH", "MlflowRegistry"]

# The run's artifact folder that holds the saved models, one subfolder each.
MODEL_ARTIFACT_PATH = "model"


class MlflowRegistry(RegistryClient):
    """Logs to an MLflow tracking server or a `sqlite:///` database.

    Uses an `MlflowClient` bound to `uri`, never MLflow's process-wide tracking URI or
    active run, so several roles in one process (or a user's own MLflow use) do not mix.

    Args:
        uri: The tracking (and model registry) URI.
        run: The job and task that log.
        artifact_location: Where a new experiment keeps its artifacts; None lets the
            tracking server decide.
    """

    def __init__(self, *, uri: str, run: RunInfo, artifact_location: str | None = None) -> None:
        self.uri = uri
        self.run = run
        self.artifact_location = artifact_location
        self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self._run_id: str | None = None
        self._artifact_uri = ""
        self._saved_models = 0

    def setup_run(self) -> None:
        """Create the job's experiment if needed, and this task's run."""
        tags = {
            "flame.job_id": self.run.job_id,
            "flame.task_id": self.run.task_id,
            "flame.role": self.run.role,
        }
        created = self._client.create_run(
            self._experiment_id(), run_name=self.run.run_name, tags=tags
        )
        self._run_id = created.info.run_id
        self._artifact_uri = created.info.artifact_uri or ""

    def save_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log the metrics at `step`."""
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self._client.log_batch(self._require_run(), metrics=batch)

    def save_params(self, params: Mapping[str, Any]) -> None:
        """Log the parameters, leaving out None values."""
        batch = [
            Param(key, param_value(value)) for key, value in params.items() if value is not None
        ]
        self._client.log_batch(self._require_run(), params=batch)

    def save_model(self, name: str, weights: Mapping[str, Any]) -> int:
        """Log the weights as the run's `model/<n>/weights.flame` and register them as the
        next version of model `name`; return the version."""
        run_id = self._require_run()
        # Each save gets its own folder: a registered version must never change.
        self._saved_models += 1
        artifact_path = f"{MODEL_ARTIFACT_PATH}/{self._saved_models}"
        with tempfile.TemporaryDirectory(prefix="flame-model-") as folder:
            path = Path(folder) / WEIGHTS_FILE
            write_weights(path, weights)
            self._client.log_artifact(run_id, str(path), artifact_path)
        self._ensure_registered_model(name)
        # A plain artifact source: MLflow 3 wants a model_id only for `models:/` sources.
        source = f"{self._artifact_uri}/{artifact_path}"
        version = self._client.create_model_version(name, source=source, run_id=run_id)
        return int(version.version)

    def load_model(self, name: str, version: int) -> Weights:
        """Download and read version `version` of model `name`.

        Raises:
            RegistryError: There is no such model version, or it holds no weights file.
        """
        try:
            source = self._client.get_model_version(name, str(version)).source
            with tempfile.TemporaryDirectory(prefix="flame-model-") as folder:
                path = download_artifacts(
                    artifact_uri=f"{source}/{WEIGHTS_FILE}",
                    dst_path=folder,
                    tracking_uri=self.uri,
                    registry_uri=self.uri,
                )
                return read_weights(Path(path))
        except MlflowException as exc:
            raise RegistryError(f"cannot load model {name!r} version {version}: {exc}") from exc

    def cleanup(self, *, failed: bool = False) -> None:
        """Mark the run FINISHED, or FAILED."""
        if self._run_id is not None:
            self._client.set_terminated(self._run_id, status="FAILED" if failed else "FINISHED")
            self._run_id = None

    def _experiment_id(self) -> str:
        name = self.run.experiment
        experiment = self._client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return self._client.create_experiment(name, artifact_location=self.artifact_location)
        except MlflowException:
            # Another task of the job created it in the meantime.
            experiment = self._client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def _ensure_registered_model(self, name: str) -> None:
        try:
            self._client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def _require_run(self) -> str:
        if self._run_id is None:
            raise RegistryError("call setup_run() before logging")
        return self._run_id
