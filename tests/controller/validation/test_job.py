"""validate_job_spec against the original hier_mnist and mnist jobs."""

from __future__ import annotations

import pytest

from flame.controller.validation import JOB_INVALID, validate_job_spec
from flame.data.v1 import dataset_pb2
from flame.job.v1 import job_pb2
from tests.controller.validation.helpers import (
    example_datasets,
    example_job,
    example_schema,
    fields,
    rejected,
)

# hier_mnist: data_spec[0] is role trainer with groups eu (2 datasets) and na (2).
SCHEMA = example_schema("hier_mnist")
EU = 'job.data_spec[0].dataset_groups["eu"]'


def hier_job() -> job_pb2.Job:
    return example_job("hier_mnist")


def job_violations(
    job: job_pb2.Job,
    datasets: dict[str, dataset_pb2.Dataset | None] | None = None,
    supported_backends: tuple[str, ...] = ("mqtt", "p2p"),
) -> list[str]:
    found = example_datasets(job) if datasets is None else datasets
    return fields(
        rejected(
            lambda: validate_job_spec(
                job, SCHEMA, datasets=found, supported_backends=supported_backends
            ),
            JOB_INVALID,
        )
    )


@pytest.mark.parametrize("example", ["mnist", "hier_mnist"])
def test_the_original_example_jobs_are_valid(example: str) -> None:
    job = example_job(example)
    validate_job_spec(job, example_schema(example), datasets=example_datasets(job))


@pytest.mark.parametrize("design_id", ["", "Hier", "hier/mnist"])
def test_design_id_is_a_required_design_identifier(design_id: str) -> None:
    job = hier_job()
    job.design_id = design_id
    assert job_violations(job) == ["job.design_id"]


def test_backend_is_required() -> None:
    job = hier_job()
    job.backend = ""
    assert job_violations(job) == ["job.backend"]


def test_backend_must_be_supported() -> None:
    job = hier_job()
    job.backend = "p2p"
    assert job_violations(job, supported_backends=("mqtt",)) == ["job.backend"]


def test_max_run_time_zero_is_valid() -> None:
    job = hier_job()
    job.max_run_time_seconds = 0
    validate_job_spec(job, SCHEMA, datasets=example_datasets(job))


def test_negative_max_run_time_is_rejected() -> None:
    job = hier_job()
    job.max_run_time_seconds = -1
    assert job_violations(job) == ["job.max_run_time_seconds"]


@pytest.mark.parametrize("priority", job_pb2.Job.Priority.values())
def test_every_priority_is_valid(priority: job_pb2.Job.Priority.ValueType) -> None:
    job = hier_job()
    job.priority = priority
    validate_job_spec(job, SCHEMA, datasets=example_datasets(job))


def test_an_unknown_priority_number_is_rejected() -> None:
    job = hier_job()
    job.priority = 99  # type: ignore[assignment]  # proto3 enums accept unknown numbers
    assert job_violations(job) == ["job.priority"]


@pytest.mark.parametrize("role", ["", "ghost", "top-aggregator"])
def test_data_spec_roles_must_be_data_consumers_of_the_schema(role: str) -> None:
    job = hier_job()
    job.data_spec.add(role=role, dataset_groups={"eu": job_pb2.DatasetGroup(dataset_ids=["extra"])})
    datasets = {**example_datasets(job), "extra": dataset_pb2.Dataset(id="extra")}
    assert job_violations(job, datasets) == ["job.data_spec[1].role"]


def test_a_role_is_listed_once() -> None:
    job = hier_job()
    job.data_spec.append(job.data_spec[0])
    assert job_violations(job) == ["job.data_spec[1].role"]


def test_a_role_needs_dataset_groups() -> None:
    job = hier_job()
    job.data_spec[0].dataset_groups.clear()
    assert job_violations(job) == ["job.data_spec[0].dataset_groups"]


def test_groups_must_be_in_a_group_association_of_the_role() -> None:
    job = hier_job()
    job.data_spec[0].dataset_groups["asia"].dataset_ids.append("asia-1")
    datasets = {**example_datasets(job), "asia-1": dataset_pb2.Dataset(id="asia-1")}
    assert job_violations(job, datasets) == ['job.data_spec[0].dataset_groups["asia"]']


def test_a_group_needs_a_dataset() -> None:
    job = hier_job()
    del job.data_spec[0].dataset_groups["eu"].dataset_ids[:]
    assert job_violations(job) == [f"{EU}.dataset_ids"]


def test_a_dataset_is_listed_once_per_role() -> None:
    job = hier_job()
    na = job.data_spec[0].dataset_groups["na"].dataset_ids
    job.data_spec[0].dataset_groups["eu"].dataset_ids.append(na[0])
    assert job_violations(job) == [f"{EU.replace('eu', 'na')}.dataset_ids[0]"]


def test_an_empty_dataset_id_is_rejected() -> None:
    job = hier_job()
    job.data_spec[0].dataset_groups["eu"].dataset_ids[1] = ""
    assert job_violations(job) == [f"{EU}.dataset_ids[1]"]


@pytest.mark.parametrize("hidden", ["missing", "invisible"])
def test_unknown_or_invisible_datasets_are_not_found(hidden: str) -> None:
    job = hier_job()
    datasets = example_datasets(job)
    dataset_id = job.data_spec[0].dataset_groups["eu"].dataset_ids[1]
    if hidden == "missing":
        del datasets[dataset_id]
    else:
        datasets[dataset_id] = None
    violations = rejected(lambda: validate_job_spec(job, SCHEMA, datasets=datasets), JOB_INVALID)
    assert fields(violations) == [f"{EU}.dataset_ids[1]"]
    assert violations[0].description == f"dataset {dataset_id} not found"


def test_every_data_consumer_role_needs_datasets() -> None:
    job = hier_job()
    del job.data_spec[:]
    assert job_violations(job, {}) == ["job.data_spec"]


def test_every_job_violation_is_reported_at_once() -> None:
    job = hier_job()
    datasets = example_datasets(job)
    job.design_id = ""
    job.backend = "carrier-pigeon"
    job.data_spec[0].dataset_groups["eu"].dataset_ids[0] = "gone"
    assert job_violations(job, datasets) == [
        "job.design_id",
        "job.backend",
        f"{EU}.dataset_ids[0]",
    ]
