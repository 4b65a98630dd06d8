"""flamectl against a real control plane (controller + apiserver over SecantusDB).

Each test runs flamectl in-process through click's CliRunner, as users of its
own, with a configuration file written for their token.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result

from flame.cli.main import main
from flame.compute.v1 import compute_pb2, compute_service_pb2, compute_service_pb2_grpc
from tests.support.controlplane import ControlPlane
from tests.support.examples import EXAMPLES

pytestmark = pytest.mark.integration

ROLE_CODE = {
    "trainer/main.py": "print('training')\n",
    "aggregator/main.py": "print('aggregating')\n",
}


@dataclass(frozen=True)
class User:
    """A user of the control plane, driving it through flamectl."""

    name: str
    config: Path

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(main, ["--config", str(self.config), *args])

    def ok(self, *args: str) -> str:
        """Run flamectl, expect success, return stdout."""
        result = self.run(*args)
        assert result.exit_code == 0, f"{args}: {result.stderr}"
        assert result.stderr == ""
        return result.stdout

    def json(self, *args: str) -> Any:
        """Run a read command with `-o json` and parse its output."""
        return json.loads(self.ok(*args, "-o", "json"))

    def refused(self, *args: str) -> str:
        """Run flamectl, expect a server refusal, return stderr."""
        result = self.run(*args)
        assert result.exit_code == 1, f"{args}: {result.stdout}"
        assert result.stderr.startswith("flamectl: ")
        assert result.stdout == ""
        return result.stderr


@pytest.fixture
def make_user(control_plane: ControlPlane, tmp_path: Path) -> Callable[[str], User]:
    def make(prefix: str) -> User:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        token = control_plane.create_user(name)
        return User(name, control_plane.write_config(tmp_path / f"{name}.yaml", token))

    return make


@pytest.fixture
def alice(make_user: Callable[[str], User]) -> User:
    return make_user("alice")


@pytest.fixture
def bob(make_user: Callable[[str], User]) -> User:
    return make_user("bob")


def write_zip(path: Path, entries: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, text in entries.items():
            bundle.writestr(name, text)
    return path


def job_files(tmp_path: Path, dataset_ids: dict[str, str]) -> Path:
    """A copy of the mnist job files whose dataSpec names `dataset_ids` (old id → new)."""
    folder = tmp_path / f"job-{uuid.uuid4().hex[:6]}"
    shutil.copytree(EXAMPLES / "mnist", folder)
    spec = (folder / "dataSpec.json").read_text()
    for old, new in dataset_ids.items():
        spec = spec.replace(old, new)
    (folder / "dataSpec.json").write_text(spec)
    return folder / "job.json"


def dataset_file(tmp_path: Path, **changes: Any) -> Path:
    """The mnist dataset.json with `changes` applied (None removes a key)."""
    data = json.loads((EXAMPLES / "mnist" / "dataset.json").read_text())
    data.update(changes)
    path = tmp_path / f"dataset-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    return path


def register_compute(control_plane: ControlPlane) -> str:
    """Register a compute (admin only; flamectl has no compute commands) and return its id."""
    compute_id = f"site-{uuid.uuid4().hex[:8]}"
    request = compute_service_pb2.RegisterComputeRequest(
        compute=compute_pb2.Compute(id=compute_id, region="default/test", platform="local"),
        api_key=uuid.uuid4().hex,
    )
    with grpc.insecure_channel(control_plane.apiserver_address) as channel:
        compute_service_pb2_grpc.ComputeServiceStub(channel).RegisterCompute(
            request,
            metadata=(("authorization", f"Bearer {control_plane.admin_token}"),),
            timeout=30,
        )
    return compute_id


def create_mnist(user: User, tmp_path: Path) -> tuple[str, str]:
    """Create the mnist design, schema, code, dataset and job; return (dataset id, job id)."""
    example = EXAMPLES / "mnist"
    assert user.ok("create", "design", "mnist", "-d", "MNIST example") == (
        "design 'mnist' created\n"
    )
    assert user.ok("create", "schema", str(example / "schema.json"), "--design", "mnist") == (
        "schema revision 1 stored for design 'mnist'\n"
    )
    bundle = write_zip(tmp_path / "mnist.zip", ROLE_CODE)
    assert user.ok("create", "code", str(bundle), "--design", "mnist") == (
        "code revision 1 stored for design 'mnist' (roles: aggregator, trainer)\n"
    )
    dataset_id = user.ok("create", "dataset", str(example / "dataset.json")).strip()
    assert re.fullmatch(r"[0-9a-f]{24}", dataset_id)
    job_json = job_files(tmp_path, {"64132c15981345ad7b31da47": dataset_id})
    job_id = user.ok("create", "job", str(job_json)).strip()
    assert re.fullmatch(r"[0-9a-f]{24}", job_id)
    return dataset_id, job_id


def table(output: str) -> list[list[str]]:
    """A table's rows, cells split on runs of 3+ spaces (cells may hold single spaces)."""
    return [re.split(r" {3,}", line) for line in output.splitlines()]


def test_the_mnist_example_end_to_end(alice: User, tmp_path: Path) -> None:
    dataset_id, job_id = create_mnist(alice, tmp_path)
    example = EXAMPLES / "mnist"

    [header, row] = table(alice.ok("get", "designs"))
    assert header == ["ID", "NAME", "SCHEMA-REV", "CODE-REV", "CREATED"]
    assert row[:4] == ["mnist", "-", "1", "1"]
    [design] = alice.json("get", "designs")
    assert design["id"] == "mnist"
    assert design["owner"] == alice.name
    assert (design["latestSchemaRevision"], design["latestCodeRevision"]) == (1, 1)

    fields = dict(table(alice.ok("get", "design", "mnist")))
    assert fields["DESCRIPTION"] == "MNIST example"
    assert fields["ROLES"] == "trainer (data), aggregator"
    schema_file = json.loads((example / "schema.json").read_text())
    shown = alice.json("get", "design", "mnist")["schema"]
    assert {k: v for k, v in shown.items() if k not in ("revision", "createTime")} == schema_file

    schema = alice.json("get", "schema", "--design", "mnist")
    assert schema["revision"] == 1
    assert {k: v for k, v in schema.items() if k not in ("revision", "createTime")} == schema_file
    assert (
        dict(table(alice.ok("get", "schema", "--design", "mnist", "--revision", "1")))["REVISION"]
        == "1"
    )
    assert [s["revision"] for s in alice.json("get", "schemas", "--design", "mnist")] == [1]
    assert table(alice.ok("get", "schemas", "--design", "mnist"))[1][0] == "1"

    [code] = alice.json("get", "code-revisions", "--design", "mnist")
    assert (code["revision"], code["roles"]) == (1, ["aggregator", "trainer"])
    assert table(alice.ok("get", "code-revisions", "--design", "mnist"))[1][1] == "mnist.zip"
    download = tmp_path / "downloaded.zip"
    alice.ok("get", "code", "--design", "mnist", "-f", str(download))
    assert download.read_bytes() == (tmp_path / "mnist.zip").read_bytes()

    [dataset] = alice.json("get", "datasets")
    assert dataset["id"] == dataset_id
    assert dataset["url"] == json.loads((example / "dataset.json").read_text())["url"]
    assert alice.json("get", "dataset", dataset_id) == dataset
    assert table(alice.ok("get", "datasets"))[1][0] == dataset_id
    assert dict(table(alice.ok("get", "dataset", dataset_id)))["PUBLIC"] == "yes"

    job = alice.json("get", "job", job_id)
    assert (job["designId"], job["state"]) == ("mnist", "STATE_READY")
    assert job["dataSpec"] == [
        {"role": "trainer", "datasetGroups": {"us": {"datasetIds": [dataset_id]}}}
    ]
    assert job["modelSpec"]["hyperparameters"] == {
        "rounds": 5,
        "batchSize": 32,
        "learningRate": 0.01,
    }
    assert [j["id"] for j in alice.json("get", "jobs")] == [job_id]
    assert table(alice.ok("get", "jobs"))[1][:4] == [job_id, "-", "mnist", "ready"]
    job_table = dict(table(alice.ok("get", "job", job_id)))
    assert job_table["STATE"] == "ready"
    assert job_table["TASKS"] == "ready=2"

    tasks = alice.json("get", "tasks", job_id)
    assert sorted(t["role"] for t in tasks) == ["aggregator", "trainer"]
    assert {t["groupAssociation"]["param-channel"] for t in tasks} == {"us"}
    rows = table(alice.ok("get", "tasks", job_id))
    assert rows[0] == ["TASK", "ROLE", "STATE", "COMPUTE", "GROUPS"]
    assert {row[4] for row in rows[1:]} == {"param-channel=us"}
    task_id = tasks[0]["taskId"]
    assert alice.json("get", "task", job_id, task_id)["taskId"] == task_id
    assert dict(table(alice.ok("get", "task", job_id, task_id)))["STATE"] == "ready"


def test_updates_change_only_what_they_name(alice: User, tmp_path: Path) -> None:
    dataset_id, job_id = create_mnist(alice, tmp_path)
    alice.ok("update", "design", "mnist", "-n", "Digits")
    design = alice.json("get", "design", "mnist")
    assert (design["name"], design["description"]) == ("Digits", "MNIST example")

    assert alice.ok(
        "update", "schema", str(EXAMPLES / "mnist" / "schema.json"), "--design", "mnist"
    ) == ("schema revision 2 stored for design 'mnist'\n")
    assert [s["revision"] for s in alice.json("get", "schemas", "--design", "mnist")] == [2, 1]

    update = tmp_path / "rename.json"
    update.write_text(json.dumps({"name": "renamed", "// why": "a comment"}))
    alice.ok("update", "dataset", dataset_id, str(update))
    dataset = alice.json("get", "dataset", dataset_id)
    assert (dataset["name"], dataset["realm"]) == ("renamed", "default/us/west")

    job_json = job_files(tmp_path, {"64132c15981345ad7b31da47": dataset_id})
    data = json.loads(job_json.read_text())
    job_json.write_text(json.dumps({**data, "name": "second try", "maxRunTime": 60}))
    alice.ok("update", "job", job_id, str(job_json))
    job = alice.json("get", "job", job_id)
    assert (job["name"], job["maxRunTimeSeconds"]) == ("second try", 60)


def test_removing_resources(alice: User, tmp_path: Path) -> None:
    dataset_id, job_id = create_mnist(alice, tmp_path)
    alice.ok("remove", "job", job_id)
    assert alice.refused("get", "job", job_id) == f"flamectl: job '{job_id}' not found\n"
    alice.ok("remove", "code", "--design", "mnist")
    alice.ok("remove", "schema", "--design", "mnist")
    assert alice.refused("get", "schema", "--design", "mnist") == (
        "flamectl: design 'mnist' has no schema\n"
    )
    alice.ok("remove", "design", "mnist")
    assert alice.json("get", "designs") == []
    alice.ok("remove", "dataset", dataset_id)
    assert alice.refused("get", "dataset", dataset_id) == (
        f"flamectl: dataset '{dataset_id}' not found\n"
    )


def test_a_refused_schema_leaves_the_stored_revisions_unchanged(
    alice: User, tmp_path: Path
) -> None:
    alice.ok("create", "design", "mnist")
    alice.ok("create", "schema", str(EXAMPLES / "mnist" / "schema.json"), "--design", "mnist")
    before = alice.json("get", "schemas", "--design", "mnist")
    schema = json.loads((EXAMPLES / "mnist" / "schema.json").read_text())
    schema["channels"][0]["pair"] = ["trainer", "ghost"]
    broken = tmp_path / "schema.json"
    broken.write_text(json.dumps(schema))

    lines = alice.refused("update", "schema", str(broken), "--design", "mnist").splitlines()
    assert lines[0] == "flamectl: invalid schema:"
    assert any(
        line.startswith("  schema.channels[0].pair[1]: ") and "ghost" in line for line in lines[1:]
    ), lines
    assert alice.json("get", "schemas", "--design", "mnist") == before


def test_refused_state_changes_leave_the_job_and_design_unchanged(
    alice: User, tmp_path: Path
) -> None:
    _, job_id = create_mnist(alice, tmp_path)
    job_before = alice.json("get", "job", job_id)
    assert alice.refused("stop", "job", job_id) == (
        f"flamectl: cannot stop job '{job_id}' while it is ready\n"
    )
    assert alice.json("get", "job", job_id) == job_before

    designs_before = alice.json("get", "designs")
    assert alice.refused("remove", "design", "mnist") == (
        "flamectl: design 'mnist' is used by jobs: remove them first, or pass --force\n"
    )
    assert alice.json("get", "designs") == designs_before


def test_a_zip_escaping_its_folder_is_refused(alice: User, tmp_path: Path) -> None:
    alice.ok("create", "design", "mnist")
    evil = write_zip(tmp_path / "evil.zip", {**ROLE_CODE, "../evil.py": "import os\n"})
    stderr = alice.refused("create", "code", str(evil), "--design", "mnist")
    assert stderr.startswith("flamectl: invalid code bundle")
    assert alice.json("get", "code-revisions", "--design", "mnist") == []


def test_a_dataset_without_url_is_refused(alice: User, tmp_path: Path) -> None:
    stderr = alice.refused("create", "dataset", str(dataset_file(tmp_path, url=None)))
    assert stderr.splitlines()[0] == "flamectl: invalid dataset:"
    assert "  dataset.url: url is required" in stderr.splitlines()
    assert alice.json("get", "datasets") == []


def test_another_users_private_dataset_cannot_be_used(
    alice: User, bob: User, control_plane: ControlPlane, tmp_path: Path
) -> None:
    compute_id = register_compute(control_plane)
    private = dataset_file(tmp_path, isPublic=False, realm=compute_id)
    secret_id = alice.ok("create", "dataset", str(private)).strip()

    bob.ok("create", "design", "mnist")
    bob.ok("create", "schema", str(EXAMPLES / "mnist" / "schema.json"), "--design", "mnist")
    bob.ok("create", "code", str(write_zip(tmp_path / "b.zip", ROLE_CODE)), "--design", "mnist")
    job_json = job_files(tmp_path, {"64132c15981345ad7b31da47": secret_id})

    assert "not found" in bob.refused("create", "job", str(job_json))
    assert bob.json("get", "jobs") == []
    assert bob.refused("get", "dataset", secret_id) == (
        f"flamectl: dataset '{secret_id}' not found\n"
    )


def test_users_see_none_of_each_others_resources(alice: User, bob: User, tmp_path: Path) -> None:
    dataset_id, job_id = create_mnist(alice, tmp_path)
    assert bob.json("get", "designs") == []
    assert bob.json("get", "datasets") == []
    assert bob.json("get", "jobs") == []
    assert bob.refused("get", "design", "mnist") == "flamectl: design 'mnist' not found\n"
    assert bob.refused("get", "job", job_id) == f"flamectl: job '{job_id}' not found\n"
    assert bob.refused("get", "tasks", job_id) == f"flamectl: job '{job_id}' not found\n"
    # alice's dataset is public: listed with --all, but never bob's to change.
    assert dataset_id in [d["id"] for d in bob.json("get", "datasets", "--all")]
    assert "not found" in bob.refused("remove", "dataset", dataset_id)


def test_users_and_tokens(alice: User, control_plane: ControlPlane, tmp_path: Path) -> None:
    admin = User(
        "admin", control_plane.write_config(tmp_path / "admin.yaml", control_plane.admin_token)
    )
    name = f"carol-{uuid.uuid4().hex[:8]}"
    token = admin.ok("user", "create", name).strip()
    assert token and "\n" not in token
    assert name in [u["id"] for u in admin.json("user", "list")]
    assert admin.refused("user", "create", name) == f"flamectl: user '{name}' already exists\n"
    assert alice.refused("user", "create", "mallory").startswith("flamectl: permission denied")

    carol = User(name, control_plane.write_config(tmp_path / "carol.yaml", token))
    assert carol.json("user", "whoami")["id"] == name
    assert dict(table(carol.ok("user", "whoami")))["ADMIN"] == "no"
    second = carol.ok("token", "create", "-d", "laptop").strip()
    tokens = carol.json("token", "list")
    assert len(tokens) == 2  # the first token, made with the user, and the laptop's
    laptop = next(t["id"] for t in tokens if t.get("description") == "laptop")
    assert laptop in [row[0] for row in table(carol.ok("token", "list"))]
    carol.ok("token", "delete", laptop)
    assert laptop not in [t["id"] for t in carol.json("token", "list")]

    revoked = User(name, control_plane.write_config(tmp_path / "revoked.yaml", second))
    assert revoked.refused("user", "whoami").startswith("flamectl: not authenticated: ")
