"""The README's main job: the digits example (three trainers, one aggregator, FedAvg
over MQTT through the flamelets' data planes) learns, and its model is registered."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flame.embedded.plane import registry_uri
from tests.e2e.conftest import Flame

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"


def code_bundle(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for role in ("trainer", "aggregator"):
            archive.write(EXAMPLE / role / "main.py", f"{role}/main.py")
            archive.write(EXAMPLE / "digits_model.py", f"{role}/digits_model.py")
    return path


def test_the_digits_example_learns_and_registers_its_model(flame: Flame, tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(EXAMPLE / "prepare_data.py"), "--out", str(tmp_path / "data")],
        check=True,
        capture_output=True,
    )
    flame.run("create", "design", "digits", "-d", "the README's main job")
    flame.run("create", "schema", str(EXAMPLE / "schema.json"), "--design", "digits")
    flame.run("create", "code", str(code_bundle(tmp_path / "digits.zip")), "--design", "digits")
    ids = [
        flame.run("create", "dataset", str(path)).stdout.strip()
        for path in sorted((tmp_path / "data").glob("dataset-*.json"))
    ]
    spec = [{"role": "trainer", "datasetGroups": {"default": ids}}]
    (tmp_path / "dataSpec.json").write_text(json.dumps(spec))
    for name in ("job.json", "modelSpec.json"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    job_id = flame.run("create", "job", str(tmp_path / "job.json")).stdout.strip()
    flame.run("start", "job", job_id)
    assert "completed" in flame.run("watch", "job", job_id, timeout=300).stdout
    tasks = flame.json("get", "tasks", job_id)
    assert isinstance(tasks, list)
    aggregator = next(task["taskId"] for task in tasks if task["role"] == "aggregator")
    accuracies = [
        float(line.rsplit(" ", 1)[1])
        for line in flame.run("logs", job_id, aggregator).stdout.splitlines()
        if "test accuracy" in line
    ]
    assert len(accuracies) == 5 and accuracies[-1] > 0.6 and accuracies[-1] > accuracies[0]
    client = MlflowClient(tracking_uri=registry_uri(flame.home))
    versions = client.search_model_versions("name = 'digits'")
    assert len(versions) == 1
