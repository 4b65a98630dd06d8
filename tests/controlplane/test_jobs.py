"""Jobs and their tasks: expansion of the original Flame examples, revisions, run
time default, updates and deletion, validation and isolation between users."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from bson import ObjectId
from google.protobuf import field_mask_pb2

from flame.compute.v1 import compute_pb2
from flame.data.v1 import dataset_pb2
from flame.data.v1 import dataset_service_pb2 as data_pb
from flame.design.v1 import design_service_pb2 as design_pb
from flame.job.v1 import job_pb2, task_pb2
from flame.job.v1 import job_service_pb2 as pb
from tests.controlplane.helpers import (
    Client,
    Code,
    Example,
    check_pagination,
    create_job,
    example_schema,
    expect_foreign_token,
    expect_hidden,
    expect_refusal,
    list_tasks,
    new_design,
    prepare_example,
    role_code,
    unchanged,
    unique,
    upload_code,
    violation_of,
)

pytestmark = pytest.mark.integration

Job = job_pb2.Job
_STATUS_FIELDS = ("state", "reason", "task_counts", "start_time", "update_time", "end_time")


def _get(client: Client, job_id: str) -> Job:
    return client.jobs.GetJob(pb.GetJobRequest(job_id=job_id)).job


def _update(client: Client, job: Job, *paths: str) -> Job:
    mask = field_mask_pb2.FieldMask(paths=list(paths))
    return client.jobs.UpdateJob(pb.UpdateJobRequest(job=job, update_mask=mask)).job


def _spec(job: Job) -> Job:
    """The job without what its lifecycle changes."""
    spec = Job()
    spec.CopyFrom(job)
    for name in _STATUS_FIELDS:
        spec.ClearField(name)  # type: ignore[arg-type]
    return spec


def _roles(tasks: list[task_pb2.Task]) -> Counter[str]:
    return Counter(task.role for task in tasks)


def _dataset_urls(client: Client, ids: list[str]) -> list[str]:
    return [
        client.datasets.GetDataset(data_pb.GetDatasetRequest(dataset_id=item)).dataset.url
        for item in ids
    ]


@pytest.fixture
def mnist(alice: Client) -> Example:
    return prepare_example(alice, "mnist")


@pytest.fixture
def hier(alice: Client) -> Example:
    return prepare_example(alice, "hier_mnist")


# --- the original examples -----------------------------------------------------------


def test_the_mnist_example_expands_into_two_tasks(alice: Client, mnist: Example) -> None:
    sent = Job()
    sent.CopyFrom(mnist.job)
    # Output-only fields are the server's to set.
    sent.id, sent.owner, sent.state, sent.reason = (
        "65a0c0ffee0000000000beef",
        "bob",
        Job.STATE_RUNNING,
        "x",
    )
    sent.task_counts["running"] = 9
    sent.end_time.GetCurrentTime()
    job = create_job(alice, sent)
    assert job.id != sent.id and not job.reason and not job.HasField("end_time")
    assert len(job.id) == 24 and job.owner == alice.user_id and job.design_id == mnist.design_id
    assert job.state == Job.STATE_READY and dict(job.task_counts) == {"ready": 2}
    assert (job.schema_revision, job.code_revision) == (1, 1)
    assert (job.max_run_time_seconds, job.priority, job.backend) == (1800, Job.PRIORITY_LOW, "mqtt")
    assert job.model_spec.hyperparameters["rounds"] == 5
    assert job.create_time.seconds > 0
    assert _get(alice, job.id) == job

    tasks = list_tasks(alice, job.id)
    assert [task.role for task in tasks] == ["aggregator", "trainer"]
    (trainer_dataset,) = mnist.datasets.values()
    assert [task.dataset_url for task in tasks] == ["", *_dataset_urls(alice, [trainer_dataset])]
    for task in tasks:
        assert task.job_id == job.id and len(task.task_id) == 40
        assert task.state == task_pb2.Task.STATE_READY and task.compute_id == "default"
        assert dict(task.group_association) == {"param-channel": "us"}
        config = json.loads(task.config_json)
        assert config["job"] == {"id": job.id, "name": mnist.design_id}
        assert (config["role"], config["backend"], config["maxRunTime"]) == (
            task.role,
            "mqtt",
            1800,
        )
        assert config["hyperparameters"] == {"rounds": 5, "batchSize": 32, "learningRate": 0.01}
        fetched = alice.jobs.GetTask(pb.GetTaskRequest(job_id=job.id, task_id=task.task_id)).task
        assert fetched == task
    expect_refusal(
        lambda: alice.jobs.GetTask(pb.GetTaskRequest(job_id=job.id, task_id="0" * 40)),
        Code.NOT_FOUND,
        "TASK_NOT_FOUND",
    )


def test_the_hierarchical_example_expands_into_seven_tasks(alice: Client, hier: Example) -> None:
    job = create_job(alice, hier.job)
    assert dict(job.task_counts) == {"ready": 7}
    tasks = list_tasks(alice, job.id)
    assert _roles(tasks) == {"top-aggregator": 1, "middle-aggregator": 2, "trainer": 4}
    trainers = [task for task in tasks if task.role == "trainer"]
    groups = {
        group: list(ids.dataset_ids) for group, ids in hier.job.data_spec[0].dataset_groups.items()
    }
    assert [task.dataset_url for task in trainers] == _dataset_urls(
        alice, groups["eu"] + groups["na"]
    )
    assert [task.group_association["param-channel"] for task in trainers] == ["eu"] * 2 + ["na"] * 2
    middles = [dict(task.group_association) for task in tasks if task.role == "middle-aggregator"]
    assert middles == [
        {"param-channel": "eu", "global-channel": "default"},
        {"param-channel": "na", "global-channel": "default"},
    ]

    request = pb.ListTasksRequest(job_id=job.id)
    token = check_pagination(
        alice.jobs.ListTasks, request, "tasks", lambda t: t.task_id, [t.task_id for t in tasks]
    )
    other = create_job(alice, hier.job)
    expect_foreign_token(alice.jobs.ListTasks, pb.ListTasksRequest(job_id=other.id), token)


def test_revisions_default_to_the_latest_and_an_older_one_is_honoured(alice: Client) -> None:
    two_tier = example_schema("mnist")
    two_aggregators = example_schema("mnist")
    two_aggregators.roles[1].replica = 2
    design_id = new_design(alice, schema=two_tier, code=role_code("trainer", "aggregator"))
    alice.designs.CreateSchema(
        design_pb.CreateSchemaRequest(design_id=design_id, schema=two_aggregators)
    )
    upload_code(alice, design_id, role_code("trainer", "aggregator", version=2))
    example = prepare_example(alice, "mnist")
    spec = Job()
    spec.CopyFrom(example.job)
    spec.design_id = design_id

    spec.schema_revision = spec.code_revision = 0
    latest = create_job(alice, spec)
    assert (latest.schema_revision, latest.code_revision) == (2, 2)
    assert _roles(list_tasks(alice, latest.id)) == {"aggregator": 2, "trainer": 1}

    spec.schema_revision = spec.code_revision = 1
    older = create_job(alice, spec)
    assert (older.schema_revision, older.code_revision) == (1, 1)
    assert _roles(list_tasks(alice, older.id)) == {"aggregator": 1, "trainer": 1}

    with unchanged(alice):
        spec.schema_revision = 3
        expect_refusal(lambda: create_job(alice, spec), Code.NOT_FOUND, "SCHEMA_NOT_FOUND")
        spec.schema_revision, spec.code_revision = 1, 3
        expect_refusal(lambda: create_job(alice, spec), Code.NOT_FOUND, "CODE_NOT_FOUND")


def test_a_code_revision_must_hold_every_role(alice: Client, mnist: Example) -> None:
    upload_code(alice, mnist.design_id, role_code("trainer"))
    mnist.job.code_revision = 2
    with unchanged(alice):
        details = expect_refusal(
            lambda: create_job(alice, mnist.job),
            Code.INVALID_ARGUMENT,
            "CODE_ROLE_MISSING",
            'code["aggregator/main.py"]',
        )
    assert "aggregator" in details.message


def test_max_run_time_defaults_to_600_seconds(alice: Client, mnist: Example) -> None:
    mnist.job.max_run_time_seconds = 0
    job = create_job(alice, mnist.job)
    assert job.max_run_time_seconds == 600
    assert all(json.loads(t.config_json)["maxRunTime"] == 600 for t in list_tasks(alice, job.id))


# --- updates and deletion ------------------------------------------------------------


def test_update_job_follows_the_mask_and_expands_again(alice: Client, hier: Example) -> None:
    job = create_job(alice, hier.job)
    tasks = list_tasks(alice, job.id)

    renamed = _update(alice, Job(id=job.id, name="renamed", backend="p2p"), "name")
    assert renamed.name == "renamed" and renamed.backend == "mqtt"
    expected = _spec(job)
    expected.name = "renamed"
    assert _spec(renamed) == expected
    assert [t.task_id for t in list_tasks(alice, job.id)] == [t.task_id for t in tasks]

    fewer = Job(id=job.id)
    fewer.data_spec.extend(hier.job.data_spec)
    del fewer.data_spec[0].dataset_groups["na"].dataset_ids[1]
    shrunk = _update(alice, fewer, "data_spec")
    assert dict(shrunk.task_counts) == {"ready": 6}
    assert _roles(list_tasks(alice, job.id)) == {
        "top-aggregator": 1,
        "middle-aggregator": 2,
        "trainer": 3,
    }

    # Read, changed and written back whole (no mask): the spec is taken as sent.
    current = _get(alice, job.id)
    current.max_run_time_seconds = 0
    rewritten = _update(alice, current)
    assert rewritten.max_run_time_seconds == 600 and rewritten.name == "renamed"
    assert dict(rewritten.task_counts) == {"ready": 6}


def test_update_job_refusals_change_nothing(alice: Client, mnist: Example) -> None:
    job = create_job(alice, mnist.job)
    with unchanged(alice):
        expect_refusal(
            lambda: _update(alice, Job(id=job.id, owner="bob"), "owner"),
            Code.INVALID_ARGUMENT,
            "INVALID_UPDATE_MASK",
            "update_mask.paths[0]",
        )
        expect_refusal(
            lambda: _update(alice, Job(id=job.id, backend="zmq"), "backend"),
            Code.INVALID_ARGUMENT,
            "JOB_INVALID",
            "job.backend",
        )
        expect_refusal(
            lambda: _update(alice, Job(id=job.id), "data_spec"),
            Code.INVALID_ARGUMENT,
            "JOB_INVALID",
            "job.data_spec",
        )
        expect_refusal(
            lambda: _update(alice, Job(id=job.id, schema_revision=7), "schema_revision"),
            Code.NOT_FOUND,
            "SCHEMA_NOT_FOUND",
        )
        expect_refusal(
            lambda: _update(alice, Job(id=str(ObjectId()), name="x"), "name"),
            Code.NOT_FOUND,
            "JOB_NOT_FOUND",
        )


def test_an_active_job_can_be_neither_updated_nor_deleted(alice: Client, mnist: Example) -> None:
    job = create_job(alice, mnist.job)
    before = _spec(alice.jobs.StartJob(pb.StartJobRequest(job_id=job.id)).job)
    tasks = [(t.task_id, t.config_json) for t in list_tasks(alice, job.id)]
    try:
        for call in (
            lambda: _update(alice, Job(id=job.id, name="renamed"), "name"),
            lambda: alice.jobs.DeleteJob(pb.DeleteJobRequest(job_id=job.id)),
        ):
            details = expect_refusal(call, Code.FAILED_PRECONDITION, "ILLEGAL_STATE_TRANSITION")
            assert details.metadata["state"] in {
                "STATE_STARTING",
                "STATE_DEPLOYING",
                "STATE_RUNNING",
                "STATE_STOPPING",
            }
        assert _spec(_get(alice, job.id)) == before
        assert [(t.task_id, t.config_json) for t in list_tasks(alice, job.id)] == tasks
    finally:
        alice.jobs.StopJob(pb.StopJobRequest(job_id=job.id))
    # WatchJob streams until the job ends; with no agent running, the stop is quick.
    watched = list(alice.jobs.WatchJob(pb.WatchJobRequest(job_id=job.id), timeout=15))
    assert watched[-1].job.state == Job.STATE_TERMINATED
    renamed = _update(alice, Job(id=job.id, name="renamed"), "name")
    assert renamed.name == "renamed" and renamed.state == Job.STATE_READY
    alice.jobs.DeleteJob(pb.DeleteJobRequest(job_id=job.id))


def test_delete_job_removes_its_tasks(alice: Client, mnist: Example, plane_db: Any) -> None:
    job = create_job(alice, mnist.job)
    kept = create_job(alice, mnist.job)
    assert plane_db["tasks"].count_documents({"job_id": job.id}) == 2
    alice.jobs.DeleteJob(pb.DeleteJobRequest(job_id=job.id))
    for call in (
        lambda: _get(alice, job.id),
        lambda: alice.jobs.ListTasks(pb.ListTasksRequest(job_id=job.id)),
        lambda: alice.jobs.DeleteJob(pb.DeleteJobRequest(job_id=job.id)),
    ):
        expect_refusal(call, Code.NOT_FOUND, "JOB_NOT_FOUND")
    assert plane_db["tasks"].count_documents({"job_id": job.id}) == 0
    assert len(list_tasks(alice, kept.id)) == 2


def test_list_jobs_pages_newest_first(alice: Client, bob: Client, mnist: Example) -> None:
    ids = [create_job(alice, mnist.job).id for _ in range(5)]
    token = check_pagination(
        alice.jobs.ListJobs, pb.ListJobsRequest(), "jobs", lambda j: j.id, ids[::-1]
    )
    expect_foreign_token(bob.jobs.ListJobs, pb.ListJobsRequest(), token)
    expect_foreign_token(alice.designs.ListDesigns, design_pb.ListDesignsRequest(), token)


# --- validation ----------------------------------------------------------------------


def _private_dataset(owner: Client, site: compute_pb2.Compute) -> str:
    dataset = dataset_pb2.Dataset(
        url=f"s3://bucket/{unique('private')}", data_format="npz", realm=site.id
    )
    return owner.datasets.CreateDataset(data_pb.CreateDatasetRequest(dataset=dataset)).dataset.id


def _use_dataset(job: Job, dataset_id: str) -> None:
    job.data_spec[0].dataset_groups["us"].dataset_ids[:] = [dataset_id]


def test_invalid_jobs_are_refused_and_change_nothing(
    alice: Client, bob: Client, mnist: Example, site: compute_pb2.Compute
) -> None:
    no_schema = new_design(alice, code=role_code("trainer", "aggregator"))
    no_code = new_design(alice, schema=example_schema("mnist"))
    bobs_private = _private_dataset(bob, site)
    dataset_field = 'job.data_spec[0].dataset_groups["us"].dataset_ids[0]'

    def aggregator_with_data(job: Job) -> None:
        job.data_spec.add(role="aggregator").dataset_groups["us"].dataset_ids.extend(
            list(mnist.datasets.values())
        )

    cases: list[tuple[Callable[[Job], None], Code, str, str, str]] = [
        (
            lambda j: setattr(j, "design_id", unique("absent")),
            Code.NOT_FOUND,
            "DESIGN_NOT_FOUND",
            "",
            "",
        ),
        (lambda j: setattr(j, "design_id", no_schema), Code.NOT_FOUND, "SCHEMA_NOT_FOUND", "", ""),
        (lambda j: setattr(j, "design_id", no_code), Code.NOT_FOUND, "CODE_NOT_FOUND", "", ""),
        (
            aggregator_with_data,
            Code.INVALID_ARGUMENT,
            "JOB_INVALID",
            "job.data_spec[1].role",
            "data consumer",
        ),
        (
            lambda j: _use_dataset(j, bobs_private),
            Code.INVALID_ARGUMENT,
            "JOB_INVALID",
            dataset_field,
            bobs_private,
        ),
        (
            lambda j: _use_dataset(j, str(ObjectId())),
            Code.INVALID_ARGUMENT,
            "JOB_INVALID",
            dataset_field,
            "not found",
        ),
        (
            lambda j: setattr(j, "backend", "zmq"),
            Code.INVALID_ARGUMENT,
            "JOB_INVALID",
            "job.backend",
            "zmq",
        ),
        (
            lambda j: setattr(j, "backend", ""),
            Code.INVALID_ARGUMENT,
            "JOB_INVALID",
            "job.backend",
            "required",
        ),
        (
            lambda j: setattr(j, "max_run_time_seconds", -1),
            Code.INVALID_ARGUMENT,
            "JOB_INVALID",
            "job.max_run_time_seconds",
            "",
        ),
        (
            lambda j: setattr(j, "priority", 42),
            Code.INVALID_ARGUMENT,
            "JOB_INVALID",
            "job.priority",
            "42",
        ),
    ]
    with unchanged(alice, bob):
        for mutate, code, reason, field, words in cases:
            job = Job()
            job.CopyFrom(mnist.job)
            mutate(job)
            fields = (field,) if field else ()
            details = expect_refusal(lambda job=job: create_job(alice, job), code, reason, *fields)
            if field:
                assert words in violation_of(details, field)
            assert bob.user_id not in details.message


def test_a_public_dataset_of_another_user_can_be_used(alice: Client, bob: Client) -> None:
    bobs = prepare_example(bob, "mnist")
    example = prepare_example(alice, "mnist")
    (bobs_public,) = bobs.datasets.values()
    _use_dataset(example.job, bobs_public)
    job = create_job(alice, example.job)
    trainer = next(task for task in list_tasks(alice, job.id) if task.role == "trainer")
    assert trainer.dataset_url == _dataset_urls(bob, [bobs_public])[0]


# --- isolation -----------------------------------------------------------------------


def test_another_users_job_is_invisible(alice: Client, bob: Client, mnist: Example) -> None:
    job = create_job(alice, mnist.job)
    task_id = list_tasks(alice, job.id)[0].task_id
    calls = [
        lambda: _get(bob, job.id),
        lambda: _update(bob, Job(id=job.id, name="mine"), "name"),
        lambda: bob.jobs.DeleteJob(pb.DeleteJobRequest(job_id=job.id)),
        lambda: bob.jobs.StartJob(pb.StartJobRequest(job_id=job.id)),
        lambda: bob.jobs.StopJob(pb.StopJobRequest(job_id=job.id)),
        lambda: bob.jobs.WatchJob(pb.WatchJobRequest(job_id=job.id)),
        lambda: bob.jobs.ListTasks(pb.ListTasksRequest(job_id=job.id)),
        lambda: bob.jobs.GetTask(pb.GetTaskRequest(job_id=job.id, task_id=task_id)),
        lambda: bob.jobs.ReadTaskLogs(pb.ReadTaskLogsRequest(job_id=job.id, task_id=task_id)),
    ]
    with unchanged(alice):
        for call in calls:
            details = expect_hidden(call, "JOB_NOT_FOUND", alice.user_id)
            assert details.metadata == {"job": job.id}
        assert job.id not in [j.id for j in bob.jobs.ListJobs(pb.ListJobsRequest()).jobs]
        # Nor can bob run alice's design or code.
        stolen = Job()
        stolen.CopyFrom(mnist.job)
        expect_hidden(lambda: create_job(bob, stolen), "DESIGN_NOT_FOUND", alice.user_id)
