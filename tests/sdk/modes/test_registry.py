"""Registries: MLflow 3 with a server-less sqlite URI, the local folder, the dummy."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from flame.config import Config
from flame.errors import ConfigError
from flame.registries import create_registry, registry_from_config
from flame.registry import DummyRegistry, LocalRegistry, RegistryError, RunInfo
from flame.registry.mlflow import MlflowRegistry
from tests.sdk.modes.memory_channels import MemoryHub
from tests.sdk.modes.roles import LinearAggregator, channel, task_config

PARAM = channel("param-channel", ("aggregator", "trainer"), ["default"])


def aggregator_config(registry: dict[str, str], **extra: object) -> Config:
    return task_config(
        "0123456789abcdef",
        "aggregator",
        [PARAM],
        {"param-channel": "default"},
        registry=registry,
        hyperparameters={"rounds": 3, "learningRate": 0.1, "minTrainers": 2},
        **extra,
    )


def weights() -> dict[str, torch.Tensor]:
    return {"fc.weight": torch.arange(6.0).reshape(2, 3), "bn.steps": torch.tensor(42)}


def test_mlflow_logs_metrics_and_registers_model_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = registry_from_config(aggregator_config({"sort": "mlflow", "uri": uri}))
    assert isinstance(registry, MlflowRegistry)

    registry.setup_run()
    for step in range(3):
        registry.save_metrics(step, {"test-loss": 1.0 / (step + 1), "aggregated_updates": 3})
    registry.save_params({"rounds": 3, "learning_rate": 0.1, "weight_decay": None})
    first = registry.save_model("linear", weights())
    second = registry.save_model("linear", {**weights(), "bn.steps": torch.tensor(43)})
    registry.cleanup()

    assert (first, second) == (1, 2)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("linear-job-1")
    assert experiment is not None
    assert experiment.artifact_location.startswith(str(tmp_path / "mlartifacts"))
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "aggregator-01234567"
    assert run.info.status == "FINISHED"
    assert run.data.tags["flame.task_id"] == "0123456789abcdef"
    assert run.data.params == {"rounds": "3", "learning_rate": "0.1"}
    history = client.get_metric_history(run.info.run_id, "test-loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    version = client.get_model_version("linear", "2")
    assert version.run_id == run.info.run_id
    # The weights come back from the registry, pickle-free, with their dtypes.
    loaded = registry.load_model("linear", 1)
    assert torch.equal(loaded["fc.weight"], weights()["fc.weight"])
    assert loaded["bn.steps"].dtype == torch.int64 and int(loaded["bn.steps"]) == 42
    assert int(registry.load_model("linear", 2)["bn.steps"]) == 43
    with pytest.raises(RegistryError, match="version 9"):
        registry.load_model("linear", 9)
    assert not (tmp_path / "mlruns").exists()  # nothing landed in the working folder


def test_local_registry_versions_and_records(tmp_path: Path) -> None:
    run = RunInfo(job_id="j", job_name="job", task_id="task-1", role="trainer")
    registry = create_registry("local", root=tmp_path, run=run)
    assert isinstance(registry, LocalRegistry)

    # Loading works before setup_run (the original's local registry failed there).
    with pytest.raises(RegistryError, match="no model 'job' version 1"):
        registry.load_model("job", 1)
    registry.setup_run()
    registry.save_metrics(0, {"loss": 0.5})
    registry.save_metrics(1, {"loss": 0.25})
    registry.save_params({"rounds": 2, "batch_size": None})
    versions = [registry.save_model("job", {"w": np.full(2, v)}) for v in (1.0, 2.0)]

    assert versions == [1, 2]
    np.testing.assert_array_equal(registry.load_model("job", 2)["w"], [2.0, 2.0])
    run_dir = tmp_path / "job-j" / "task-1"
    with (run_dir / "metrics.csv").open() as file:
        rows = [(r["step"], r["key"], r["value"]) for r in csv.DictReader(file)]
    assert rows == [("0", "loss", "0.5"), ("1", "loss", "0.25")]
    assert (run_dir / "params.json").read_text().strip() == '{\n  "rounds": "2"\n}'
    with pytest.raises(RegistryError, match="not a valid model name"):
        registry.save_model("../escape", {"w": np.zeros(1)})


def test_the_aggregator_starts_from_the_base_model(tmp_path: Path) -> None:
    run = RunInfo(job_id="old", job_name="linear", task_id="agg", role="aggregator")
    LocalRegistry(root=tmp_path, run=run).save_model(
        "linear", {"weight": torch.full((1, 3), 7.0), "bias": torch.tensor([7.0])}
    )
    config = aggregator_config(
        {"sort": "local", "uri": str(tmp_path)}, baseModel={"name": "linear", "version": 1}
    )
    aggregator = LinearAggregator(config)
    aggregator.cm = MemoryHub().manager(config)

    aggregator.internal_init()
    aggregator.initialize()
    aggregator.load_base_model()

    assert aggregator.model.weight.tolist() == [[7.0, 7.0, 7.0]]
    assert aggregator.settings.min_trainers == 2


def test_registry_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"registry\.uri"):
        registry_from_config(aggregator_config({"sort": "mlflow", "uri": ""}))
    with pytest.raises(ConfigError, match=r"registry\.sort"):
        registry_from_config(aggregator_config({"sort": "wandb"}))
    assert isinstance(registry_from_config(aggregator_config({"sort": "dummy"})), DummyRegistry)
    with pytest.raises(RegistryError, match="dummy registry holds no model"):
        DummyRegistry().load_model("linear", 1)
