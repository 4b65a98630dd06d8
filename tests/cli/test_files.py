"""The original Flame JSON files to protobuf messages and back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flame.cli.errors import InputError
from flame.cli.files import load_dataset, load_job, load_schema, schema_to_dict
from flame.cli.output import message_to_dict
from flame.design.v1 import design_pb2
from flame.job.v1 import job_pb2
from tests.support.examples import EXAMPLES


@pytest.fixture
def examples() -> Path:
    return EXAMPLES


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("example", ["mnist", "hier_mnist"])
def test_example_schemas_round_trip(examples: Path, example: str) -> None:
    path = examples / example / "schema.json"
    assert schema_to_dict(load_schema(path)) == json.loads(path.read_text())


def test_schema_maps_group_associations_and_function_tags(examples: Path) -> None:
    schema = load_schema(examples / "hier_mnist" / "schema.json")
    middle = schema.roles[1]
    assert middle.name == "middle-aggregator"
    assert middle.replica == 1
    assert [dict(a.channel_groups) for a in middle.group_association] == [
        {"param-channel": "eu", "global-channel": "default"},
        {"param-channel": "na", "global-channel": "default"},
    ]
    channel = schema.channels[1]
    assert list(channel.pair) == ["top-aggregator", "middle-aggregator"]
    assert channel.group_by == design_pb2.GroupBy(type="tag", value=["default"])
    assert list(channel.func_tags["middle-aggregator"].tags) == ["fetch", "upload"]


def test_schema_output_carries_the_revision_and_loads_back(tmp_path: Path) -> None:
    schema = design_pb2.Schema(revision=4, name="s", roles=[design_pb2.Role(name="trainer")])
    schema.create_time.FromSeconds(1_700_000_000)
    data = schema_to_dict(schema)
    assert data == {
        "revision": 4,
        "createTime": "2023-11-14T22:13:20Z",
        "name": "s",
        "roles": [{"name": "trainer"}],
    }
    reloaded = load_schema(write(tmp_path / "schema.json", data))
    assert reloaded == design_pb2.Schema(name="s", roles=[design_pb2.Role(name="trainer")])


def test_comment_keys_are_ignored(examples: Path) -> None:
    dataset, fields = load_dataset(examples / "hier_mnist" / "dataset_eu_uk.json")
    assert dataset.realm == "default/eu/uk"
    assert dataset.is_public
    assert "//" not in fields


def test_dataset_fields_become_the_update_mask(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", {"url": "s3://b/k", "isPublic": False, "// note": "x"})
    dataset, fields = load_dataset(path)
    assert dataset.url == "s3://b/k"
    assert fields == ["url", "is_public"]


def test_an_unknown_key_is_rejected_with_its_file_and_path(tmp_path: Path) -> None:
    path = write(tmp_path / "schema.json", {"name": "s", "roles": [{"name": "a", "colour": 1}]})
    with pytest.raises(InputError) as raised:
        load_schema(path)
    assert raised.value.message == f"{path}: unknown key 'roles[0].colour'"
    assert raised.value.exit_code == 2


def test_a_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path / "schema.json", {"roles": [{"name": "a", "replica": "two"}]})
    with pytest.raises(InputError, match=r"roles\[0\]\.replica: expected an integer"):
        load_schema(path)


def test_booleans_are_not_integers(tmp_path: Path) -> None:
    path = write(tmp_path / "job.json", {"designId": "d", "maxRunTime": True})
    with pytest.raises(InputError, match="maxRunTime: expected an integer"):
        load_job(path)


def test_malformed_json_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text('{\n  "name": "x",\n  "url" "y"\n}\n')
    with pytest.raises(InputError, match=rf"^{path}: invalid JSON at line 3, column 9: "):
        load_dataset(path)


def test_job_merges_its_data_spec_and_model_spec(examples: Path) -> None:
    job, fields = load_job(examples / "mnist" / "job.json")
    assert job.design_id == "mnist"
    assert (job.schema_revision, job.code_revision) == (1, 1)
    assert job.priority == job_pb2.Job.PRIORITY_LOW
    assert job.max_run_time_seconds == 1800
    assert job.backend == "mqtt"
    [role] = job.data_spec
    assert role.role == "trainer"
    assert list(role.dataset_groups["us"].dataset_ids) == ["64132c15981345ad7b31da47"]
    spec = message_to_dict(job.model_spec)
    assert spec == {
        "baseModel": {"version": 1},
        "hyperparameters": {"rounds": 5, "batchSize": 32, "learningRate": 0.01},
        "dependencies": ["numpy >= 1.2.0"],
        "selector": {"sort": "random", "kwargs": {"k": 1}},
    }
    assert isinstance(spec["hyperparameters"]["rounds"], int)
    assert "design_id" in fields and "data_spec" in fields and "model_spec" in fields


def test_hierarchical_job_keeps_its_dataset_groups_and_optimizer(examples: Path) -> None:
    job = load_job(examples / "hier_mnist" / "job.json").message
    groups = job.data_spec[0].dataset_groups
    assert sorted(groups) == ["eu", "na"]
    assert len(groups["eu"].dataset_ids) == 2
    assert job.model_spec.optimizer.sort == "fedavg"


def test_revisions_may_be_numbers(tmp_path: Path) -> None:
    job = load_job(write(tmp_path / "job.json", {"schemaVersion": 3, "codeVersion": ""})).message
    assert (job.schema_revision, job.code_revision) == (3, 0)


def test_registry_is_dropped_with_a_warning(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "job"
    shutil.copytree(examples / "mnist", folder)
    spec = json.loads((folder / "modelSpec.json").read_text())
    write(folder / "modelSpec.json", {**spec, "registry": {"sort": "mlflow"}})
    job = load_job(folder / "job.json").message
    assert job.model_spec.selector.sort == "random"
    assert "ignored key 'registry'" in capsys.readouterr().err


def test_an_unknown_model_spec_key_is_rejected(examples: Path, tmp_path: Path) -> None:
    folder = tmp_path / "job"
    shutil.copytree(examples / "mnist", folder)
    write(folder / "modelSpec.json", {"baseModel": {"name": "m", "tag": "x"}})
    with pytest.raises(InputError, match=r"modelSpec\.json: unknown key 'baseModel\.tag'"):
        load_job(folder / "job.json")


def test_a_missing_spec_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "job.json", {"designId": "d", "dataSpecPath": "nope.json"})
    with pytest.raises(InputError, match=r"nope\.json: cannot read the file"):
        load_job(path)


def test_an_unknown_priority_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="priority: expected low, medium or high, not 'urgent'"):
        load_job(write(tmp_path / "job.json", {"priority": "urgent"}))
