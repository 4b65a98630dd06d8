"""The job builder: TAG expansion against the original Flame's expected tasks, task
identity, config rendering and the errors that replace the original's silent holes."""

from __future__ import annotations

import copy
import json
import re
from collections import defaultdict
from typing import Any

import pytest

from flame.controller.jobbuilder import (
    Broker,
    PlatformParams,
    Registry,
    TaskPlan,
    config_json,
    expand_job,
)
from flame.data.v1 import dataset_pb2
from flame.design.v1 import design_pb2
from flame.job.v1 import job_pb2
from flame.rpc.errors import InvalidArgument
from tests.support.examples import EXAMPLE_DATASETS, EXAMPLES
from tests.support.files import schema_from_dict

PARAMS = PlatformParams(
    brokers=(Broker("mqtt", "localhost"), Broker("p2p", "localhost:10104")),
    registry=Registry(),
)
JOB_ID = "65a0c0ffee0000000000beef"

DATASET_FILES = EXAMPLE_DATASETS

Json = dict[str, Any]

# --- converters from the original (flamectl) JSON to the protos ---------------


def job_from(
    doc: Json, data_spec: list[Json], model_spec: Json | None = None, job_id: str = JOB_ID
) -> job_pb2.Job:
    job = job_pb2.Job(
        id=job_id,
        design_id=doc["designId"],
        backend=doc["backend"],
        max_run_time_seconds=doc.get("maxRunTime", 0),
        data_spec=[
            job_pb2.RoleDatasets(
                role=entry["role"],
                dataset_groups={
                    group: job_pb2.DatasetGroup(dataset_ids=ids)
                    for group, ids in entry["datasetGroups"].items()
                },
            )
            for entry in data_spec
        ],
    )
    if model_spec is not None:
        job.model_spec.CopyFrom(model_spec_from(model_spec))
    return job


def model_spec_from(doc: Json) -> job_pb2.ModelSpec:
    spec = job_pb2.ModelSpec(
        base_model=job_pb2.BaseModel(**doc.get("baseModel", {})),
        dependencies=doc.get("dependencies", []),
    )
    spec.hyperparameters.update(doc.get("hyperparameters", {}))
    for name in ("optimizer", "selector", "privacy", "datasampler"):
        if name in doc:
            plugin = getattr(spec, name)
            plugin.sort = doc[name].get("sort", "")
            plugin.kwargs.update(doc[name].get("kwargs", {}))
    return spec


def dataset_from(doc: Json, dataset_id: str, compute_id: str = "default") -> dataset_pb2.Dataset:
    # The examples' realms (`default/<region>/...`) match no fiab compute region,
    # so registration resolves every one of these public datasets to `default`.
    return dataset_pb2.Dataset(
        id=dataset_id,
        name=doc.get("name", ""),
        description=doc.get("description", ""),
        url=doc["url"],
        data_format=doc["dataFormat"],
        realm=doc["realm"],
        is_public=doc.get("isPublic", False),
        compute_id=compute_id,
    )


# --- example loading -------------------------------------------------------------


def load(example: str, name: str) -> Any:
    return json.loads((EXAMPLES / example / name).read_text())


def example_inputs(
    example: str, *, merge_model_spec: bool = False, job_id: str = JOB_ID
) -> tuple[job_pb2.Job, design_pb2.Schema, dict[str, dataset_pb2.Dataset]]:
    model_spec = load(example, "modelSpec.json") if merge_model_spec else None
    job = job_from(load(example, "job.json"), load(example, "dataSpec.json"), model_spec, job_id)
    datasets = {
        dataset_id: dataset_from(load(example, name), dataset_id)
        for dataset_id, name in DATASET_FILES[example].items()
    }
    return job, schema_from_dict(load(example, "schema.json")), datasets


def expected_configs(example: str) -> list[Json]:
    folder = EXAMPLES / example / "expected_tasks"
    files = sorted(folder.glob("*.json"), key=lambda path: int(path.stem))
    return [json.loads(path.read_text()) for path in files]


def comparable(config: Json) -> str:
    """The config without what the README says is not meaningful: job id, key and channel order."""
    config = copy.deepcopy(config)
    del config["job"]["id"]
    config["channels"].sort(key=lambda channel: channel["name"])
    return config_json(config)


def by_role(configs: list[Json]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for config in configs:
        grouped[config["role"]].append(comparable(config))
    return {role: sorted(items) for role, items in grouped.items()}


# --- small inline topologies -----------------------------------------------------

TWO_TIER: Json = {
    "name": "two tier",
    "roles": [
        {
            "name": "trainer",
            "isDataConsumer": True,
            "groupAssociation": [{"param-channel": "us"}],
        },
        {"name": "aggregator", "replica": 1, "groupAssociation": [{"param-channel": "us"}]},
    ],
    "channels": [
        {
            "name": "param-channel",
            "pair": ["trainer", "aggregator"],
            "groupBy": {"type": "tag", "value": ["us"]},
            "funcTags": {"trainer": ["fetch", "upload"], "aggregator": ["distribute", "aggregate"]},
        }
    ],
}
TWO_TIER_JOB: Json = {"designId": "two-tier", "backend": "mqtt", "maxRunTime": 1800}
TWO_TIER_DATA: list[Json] = [{"role": "trainer", "datasetGroups": {"us": ["d1", "d2"]}}]


def two_tier(
    *,
    schema: Json | None = None,
    data_spec: list[Json] | None = None,
    model_spec: Json | None = None,
    job_id: str = JOB_ID,
) -> tuple[job_pb2.Job, design_pb2.Schema, dict[str, dataset_pb2.Dataset]]:
    job = job_from(
        TWO_TIER_JOB, TWO_TIER_DATA if data_spec is None else data_spec, model_spec, job_id
    )
    datasets = {
        dataset_id: dataset_pb2.Dataset(
            id=dataset_id, url=f"file:///data/{dataset_id}.npz", data_format="npz"
        )
        for dataset_id in ("d1", "d2")
    }
    return job, schema_from_dict(TWO_TIER if schema is None else schema), datasets


def expand(
    inputs: tuple[job_pb2.Job, design_pb2.Schema, dict[str, dataset_pb2.Dataset]],
    params: PlatformParams = PARAMS,
) -> list[TaskPlan]:
    job, schema, datasets = inputs
    return expand_job(job, schema, datasets, params)


def violation_fields(inputs: tuple[job_pb2.Job, design_pb2.Schema, dict[str, Any]]) -> list[str]:
    with pytest.raises(InvalidArgument) as caught:
        expand(inputs)
    assert caught.value.reason == "JOB_INVALID"
    return [violation.field for violation in caught.value.violations]


# --- the original's expected tasks ----------------------------------------------


@pytest.mark.parametrize("example", ["mnist", "hier_mnist"])
def test_matches_the_original_builders_tasks(example: str) -> None:
    plans = expand(example_inputs(example))
    expected = expected_configs(example)

    assert [plan.role for plan in plans] == [config["role"] for config in expected]
    assert by_role([plan.config for plan in plans]) == by_role(expected)


def test_hier_mnist_expands_in_role_then_group_then_dataset_order() -> None:
    plans = expand(example_inputs("hier_mnist"))

    assert [
        (plan.index, plan.role, plan.group_association, plan.dataset_url) for plan in plans
    ] == [
        (0, "middle-aggregator", {"param-channel": "eu", "global-channel": "default"}, ""),
        (1, "middle-aggregator", {"param-channel": "na", "global-channel": "default"}, ""),
        (2, "top-aggregator", {"global-channel": "default"}, ""),
        (3, "trainer", {"param-channel": "eu"}, _mnist_url(1)),
        (4, "trainer", {"param-channel": "eu"}, _mnist_url(2)),
        (5, "trainer", {"param-channel": "na"}, _mnist_url(3)),
        (6, "trainer", {"param-channel": "na"}, _mnist_url(4)),
    ]
    assert [plan.dataset_id for plan in plans[3:]] == list(DATASET_FILES["hier_mnist"])
    assert [plan.compute_id for plan in plans] == ["default"] * 7
    assert [c["name"] for c in plans[0].config["channels"]] == ["global-channel", "param-channel"]


def _mnist_url(n: int) -> str:
    return f"https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist_{n}.npz"


def test_merged_model_spec_keeps_integers_integral() -> None:
    plans = expand(example_inputs("mnist", merge_model_spec=True))
    config = plans[0].config

    assert config["hyperparameters"] == {"rounds": 5, "batchSize": 32, "learningRate": 0.01}
    assert type(config["hyperparameters"]["rounds"]) is int
    assert config["selector"] == {"sort": "random", "kwargs": {"k": 1}}
    assert type(config["selector"]["kwargs"]["k"]) is int
    assert config["baseModel"] == {"version": 1}
    assert config["dependencies"] == ["numpy >= 1.2.0"]
    assert config["optimizer"] == {}
    assert '"hyperparameters":{"batchSize":32,"learningRate":0.01,"rounds":5}' in config_json(
        config
    )
    assert "privacy" not in config and "datasampler" not in config


def test_merged_model_spec_with_empty_kwargs_and_default_base_model() -> None:
    config = expand(example_inputs("hier_mnist", merge_model_spec=True))[0].config

    assert config["selector"] == {"sort": "default", "kwargs": {}}
    assert config["optimizer"] == {"sort": "fedavg", "kwargs": {}}
    assert config["baseModel"] == {}


# --- task identity -----------------------------------------------------------------


def test_task_ids_are_40_hex_unique_and_deterministic() -> None:
    first = expand(two_tier())
    second = expand(two_tier())

    ids = [plan.task_id for plan in first]
    assert all(re.fullmatch(r"[0-9a-f]{40}", task_id) for task_id in ids)
    assert len(set(ids)) == len(ids) == 3
    assert first == second


def test_task_ids_change_with_the_job_id() -> None:
    first = expand(two_tier(job_id="65a0c0ffee0000000000aaaa"))
    second = expand(two_tier(job_id="65a0c0ffee0000000000bbbb"))

    assert not {plan.task_id for plan in first} & {plan.task_id for plan in second}


def test_replicas_get_distinct_ids_despite_equal_configs() -> None:
    schema = copy.deepcopy(TWO_TIER)
    schema["roles"][1]["replica"] = 2
    plans = [plan for plan in expand(two_tier(schema=schema)) if plan.role == "aggregator"]

    assert len(plans) == 2
    assert plans[0].config == plans[1].config
    assert plans[0].task_id != plans[1].task_id


def test_config_json_is_canonical_and_excludes_taskid() -> None:
    plan = expand(two_tier())[0]

    assert config_json({"b": 1, "a": {"d": [2, 1], "c": ""}}) == '{"a":{"c":"","d":[2,1]},"b":1}'
    assert json.loads(config_json(plan.config)) == plan.config
    assert "taskid" not in plan.config


def test_plans_share_no_mutable_config() -> None:
    first, second, _ = expand(two_tier())
    first.config["channels"][0]["pair"].append("x")

    assert second.config["channels"][0]["pair"] == ["trainer", "aggregator"]


# --- expansion -----------------------------------------------------------------------


def test_non_data_roles_run_on_default_and_data_roles_on_their_datasets_compute() -> None:
    job, schema, datasets = two_tier()
    datasets["d1"].compute_id = "eu-1"
    plans = expand_job(job, schema, datasets, PARAMS)

    assert [(plan.role, plan.compute_id, plan.dataset_id) for plan in plans] == [
        ("aggregator", "default", ""),
        ("trainer", "eu-1", "d1"),
        ("trainer", "default", "d2"),  # no compute id resolved: fall back to default
    ]


def test_replica_multiplies_a_non_data_roles_tasks() -> None:
    schema = copy.deepcopy(TWO_TIER)
    schema["roles"][1]["replica"] = 2
    schema["roles"][1]["groupAssociation"] = [{"param-channel": "us"}, {"param-channel": "eu"}]
    schema["channels"][0]["groupBy"]["value"] = ["us", "eu"]
    plans = [plan for plan in expand(two_tier(schema=schema)) if plan.role == "aggregator"]

    assert [plan.group_association["param-channel"] for plan in plans] == ["us", "eu", "us", "eu"]
    assert [plan.index for plan in plans] == [0, 1, 2, 3]


def test_data_role_takes_the_first_association_naming_its_group() -> None:
    schema = copy.deepcopy(TWO_TIER)
    schema["roles"][0]["groupAssociation"] = [
        {"param-channel": "eu"},
        {"param-channel": "us", "other": "x"},
        {"param-channel": "us"},
    ]
    plans = expand(two_tier(schema=schema))

    assert plans[1].group_association == {"param-channel": "us", "other": "x"}


def test_self_loop_channel_appears_once() -> None:
    schema = copy.deepcopy(TWO_TIER)
    schema["channels"].insert(
        0,
        {
            "name": "ring-channel",
            "pair": ["trainer", "trainer"],
            "groupBy": {"type": "tag", "value": ["us"]},
            "funcTags": {"trainer": ["ring_allreduce"]},
            "backend": "p2p",
        },
    )
    schema["roles"][0]["groupAssociation"] = [{"param-channel": "us", "ring-channel": "us"}]
    plans = expand(two_tier(schema=schema))

    trainer_channels = [channel["name"] for channel in plans[1].config["channels"]]
    aggregator_channels = [channel["name"] for channel in plans[0].config["channels"]]
    assert trainer_channels == ["param-channel", "ring-channel"]
    assert aggregator_channels == ["param-channel"]


def test_channel_options_are_rendered_only_when_set() -> None:
    schema = copy.deepcopy(TWO_TIER)
    schema["channels"][0].update(
        {"backend": "p2p", "brokerHost": "meta:10104", "isUnidirectional": True, "groupBy": {}}
    )
    schema["roles"][0]["groupAssociation"] = [{"param-channel": "default"}]
    data_spec = [{"role": "trainer", "datasetGroups": {"default": ["d1"]}}]
    channel = expand(two_tier(schema=schema, data_spec=data_spec))[0].config["channels"][0]
    plain = expand(two_tier())[0].config["channels"][0]

    assert channel["groupBy"] == {"type": "tag", "value": ["default"]}
    assert (channel["backend"], channel["brokerHost"], channel["isUnidirectional"]) == (
        "p2p",
        "meta:10104",
        True,
    )
    assert set(plain) == {"name", "description", "pair", "groupBy", "funcTags"}


def test_job_level_keys() -> None:
    job, schema, datasets = two_tier()
    job.max_run_time_seconds = 0
    params = PlatformParams(brokers=(), registry=Registry("mlflow", "http://mlflow:5000"))
    aggregator, trainer, _ = expand_job(job, schema, datasets, params)

    assert aggregator.config == {
        "backend": "mqtt",
        "registry": {"sort": "mlflow", "uri": "http://mlflow:5000"},
        "job": {"id": JOB_ID, "name": "two-tier"},
        "role": "aggregator",
        "realm": "",
        "channels": aggregator.config["channels"],
        "groupAssociation": {"param-channel": "us"},
        "maxRunTime": 600,
        "baseModel": {},
        "optimizer": {},
        "selector": {},
    }
    assert trainer.config["dataset"] == trainer.dataset_url == "file:///data/d1.npz"


def test_privacy_and_datasampler_appear_when_set() -> None:
    model_spec = {
        "baseModel": {"name": "resnet", "version": 3},
        "privacy": {"sort": "dp", "kwargs": {"clip_norm": 1.5}},
        "datasampler": {"sort": "fedbalancer", "kwargs": {"w": 20, "p": 1.0}},
    }
    config = expand(two_tier(model_spec=model_spec))[0].config

    assert config["baseModel"] == {"name": "resnet", "version": 3}
    assert config["privacy"] == {"sort": "dp", "kwargs": {"clip_norm": 1.5}}
    assert config["datasampler"] == {"sort": "fedbalancer", "kwargs": {"w": 20, "p": 1}}


# --- the original's holes become JOB_INVALID -------------------------------------------


def test_non_data_role_without_group_association() -> None:
    schema = copy.deepcopy(TWO_TIER)
    schema["roles"][1]["groupAssociation"] = []

    assert violation_fields(two_tier(schema=schema)) == ["schema.roles[1].group_association"]


def test_empty_group_association_entry() -> None:
    schema = copy.deepcopy(TWO_TIER)
    schema["roles"][1]["groupAssociation"].append({})

    assert violation_fields(two_tier(schema=schema)) == ["schema.roles[1].group_association[1]"]


def test_data_group_matching_no_association() -> None:
    data_spec = [{"role": "trainer", "datasetGroups": {"us": ["d1"], "eu": ["d2"]}}]

    assert violation_fields(two_tier(data_spec=data_spec)) == [
        'job.data_spec[0].dataset_groups["eu"]'
    ]


def test_data_role_missing_from_data_spec() -> None:
    assert violation_fields(two_tier(data_spec=[])) == ["job.data_spec"]


def test_unknown_dataset_id() -> None:
    data_spec = [{"role": "trainer", "datasetGroups": {"us": ["d1", "nope"]}}]

    assert violation_fields(two_tier(data_spec=data_spec)) == [
        'job.data_spec[0].dataset_groups["us"].dataset_ids[1]'
    ]


@pytest.mark.parametrize(
    ("data_spec", "fields"),
    [
        ([{"role": "trainer", "datasetGroups": {}}], ["job.data_spec[0].dataset_groups"]),
        (
            [{"role": "trainer", "datasetGroups": {"us": []}}],
            ['job.data_spec[0].dataset_groups["us"].dataset_ids'],
        ),
        (
            [*TWO_TIER_DATA, {"role": "aggregator", "datasetGroups": {"us": ["d1"]}}],
            ["job.data_spec[1].role"],
        ),
        ([*TWO_TIER_DATA, *TWO_TIER_DATA], ["job.data_spec[1].role"]),
    ],
    ids=["no-groups", "empty-group", "non-data-role", "repeated-role"],
)
def test_data_spec_that_does_not_fit_the_schema(data_spec: list[Json], fields: list[str]) -> None:
    assert violation_fields(two_tier(data_spec=data_spec)) == fields


def test_every_violation_is_reported_at_once() -> None:
    schema = copy.deepcopy(TWO_TIER)
    schema["roles"][1]["groupAssociation"] = []
    data_spec = [{"role": "trainer", "datasetGroups": {"eu": ["nope"]}}]

    assert violation_fields(two_tier(schema=schema, data_spec=data_spec)) == [
        "schema.roles[1].group_association",
        'job.data_spec[0].dataset_groups["eu"]',
        'job.data_spec[0].dataset_groups["eu"].dataset_ids[0]',
    ]


def test_non_finite_hyperparameter() -> None:
    job, schema, datasets = two_tier()
    job.model_spec.hyperparameters["learningRate"] = float("nan")

    assert violation_fields((job, schema, datasets)) == ["job.model_spec.hyperparameters"]
