"""Commands on jobs and their tasks."""

from __future__ import annotations

from pathlib import Path

import click
from google.protobuf import field_mask_pb2

from flame.cli import files
from flame.cli.connection import connect, list_all
from flame.cli.output import (
    Column,
    enum_label,
    format_time,
    limit_option,
    mapping_label,
    message_to_dict,
    output_option,
    show_list,
    show_one,
)
from flame.job.v1 import job_pb2, task_pb2
from flame.job.v1 import job_service_pb2 as pb

__all__ = [
    "create_job",
    "get_job",
    "get_jobs",
    "get_task",
    "get_tasks",
    "remove_job",
    "start_job",
    "stop_job",
    "update_job",
]

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_ENDED_TASK_STATES = frozenset(
    {task_pb2.Task.STATE_COMPLETED, task_pb2.Task.STATE_FAILED, task_pb2.Task.STATE_TERMINATED}
)


def _job_state(job: job_pb2.Job) -> str:
    return enum_label(job_pb2.Job.State.Name(job.state))


def _task_state(task: task_pb2.Task) -> str:
    return enum_label(task_pb2.Task.State.Name(task.state))


_JOB_COLUMNS: list[Column[job_pb2.Job]] = [
    Column("ID", lambda j: j.id),
    Column("NAME", lambda j: j.name),
    Column("DESIGN", lambda j: j.design_id),
    Column("STATE", _job_state),
    Column("CREATED", lambda j: format_time(j.create_time)),
    Column("STARTED", lambda j: format_time(j.start_time)),
    Column("ENDED", lambda j: format_time(j.end_time)),
]

_TASK_COLUMNS: list[Column[task_pb2.Task]] = [
    Column("TASK", lambda t: t.task_id),
    Column("ROLE", lambda t: t.role),
    Column("STATE", _task_state),
    Column("COMPUTE", lambda t: t.compute_id),
    Column("GROUPS", lambda t: mapping_label(t.group_association)),
]


@click.command("job")
@click.argument("file", metavar="FILE", type=_FILE)
def create_job(file: Path) -> None:
    """Create a job from a job.json file; prints its id.

    The data spec and model spec files that job.json names (dataSpecPath,
    modelSpecPath, relative to job.json) are read and sent with it.
    """
    job = files.load_job(file).message
    with connect(design=job.design_id) as api:
        created = api.jobs.CreateJob(pb.CreateJobRequest(job=job)).job
    click.echo(created.id)


@click.command("jobs")
@limit_option
@output_option
def get_jobs(limit: int | None, output_format: str) -> None:
    """List your jobs, newest first."""
    with connect() as api:
        jobs = list_all(api.jobs.ListJobs, pb.ListJobsRequest(), lambda r: r.jobs, limit=limit)
    show_list(jobs, _JOB_COLUMNS, output_format, message_to_dict)


@click.command("job")
@click.argument("job_id", metavar="ID")
@output_option
def get_job(job_id: str, output_format: str) -> None:
    """Show a job with its state and task counts."""
    with connect(job=job_id) as api:
        job = api.jobs.GetJob(pb.GetJobRequest(job_id=job_id)).job
    show_one(job, _job_fields, output_format, message_to_dict)


def _job_fields(job: job_pb2.Job) -> list[tuple[str, str]]:
    return [
        ("ID", job.id),
        ("NAME", job.name),
        ("DESIGN", job.design_id),
        ("SCHEMA-REV", str(job.schema_revision)),
        ("CODE-REV", str(job.code_revision)),
        ("BACKEND", job.backend),
        ("PRIORITY", enum_label(job_pb2.Job.Priority.Name(job.priority))),
        ("MAX-RUN-TIME", f"{job.max_run_time_seconds} s"),
        ("STATE", _job_state(job)),
        ("REASON", job.reason),
        ("CREATED", format_time(job.create_time)),
        ("STARTED", format_time(job.start_time)),
        ("UPDATED", format_time(job.update_time)),
        ("ENDED", format_time(job.end_time)),
        ("TASKS", mapping_label(job.task_counts)),
    ]


@click.command("job")
@click.argument("job_id", metavar="ID")
@click.argument("file", metavar="FILE", type=_FILE)
def update_job(job_id: str, file: Path) -> None:
    """Change a job that is not active from a job.json file.

    The fields the file sets are updated; the others keep their values.
    """
    job, fields = files.load_job(file)
    job.id = job_id
    mask = field_mask_pb2.FieldMask(paths=[field for field in fields if field != "design_id"])
    if not mask.paths:
        raise click.UsageError(f"{file} sets no field to update")
    with connect(job=job_id, design=job.design_id, action="update") as api:
        if job.design_id:
            _check_same_design(job, api.jobs.GetJob(pb.GetJobRequest(job_id=job_id)).job)
        api.jobs.UpdateJob(pb.UpdateJobRequest(job=job, update_mask=mask))
    click.echo(f"job '{job_id}' updated")


def _check_same_design(wanted: job_pb2.Job, stored: job_pb2.Job) -> None:
    # A job's design is fixed at creation; job.json names it anyway, so accept
    # the same design and refuse a different one rather than ignore it.
    if wanted.design_id != stored.design_id:
        raise click.UsageError(
            f"job '{stored.id}' runs design '{stored.design_id}', not '{wanted.design_id}': "
            "a job's design cannot change; create a new job"
        )


@click.command("job")
@click.argument("job_id", metavar="ID")
def remove_job(job_id: str) -> None:
    """Delete a job that is not active, with its tasks."""
    with connect(job=job_id, action="remove") as api:
        api.jobs.DeleteJob(pb.DeleteJobRequest(job_id=job_id))
    click.echo(f"job '{job_id}' removed")


@click.command("job")
@click.argument("job_id", metavar="ID")
def start_job(job_id: str) -> None:
    """Start a job (in state ready, completed, failed or terminated)."""
    with connect(job=job_id, action="start") as api:
        job = api.jobs.StartJob(pb.StartJobRequest(job_id=job_id)).job
    click.echo(f"job '{job_id}' is {_job_state(job)}")


@click.command("job")
@click.argument("job_id", metavar="ID")
def stop_job(job_id: str) -> None:
    """Stop a job (in state starting, deploying or running)."""
    with connect(job=job_id, action="stop") as api:
        job = api.jobs.StopJob(pb.StopJobRequest(job_id=job_id)).job
    click.echo(f"job '{job_id}' is {_job_state(job)}")


@click.command("tasks")
@click.argument("job_id", metavar="JOB")
@limit_option
@output_option
def get_tasks(job_id: str, limit: int | None, output_format: str) -> None:
    """List the tasks of a job, in expansion order."""
    request = pb.ListTasksRequest(job_id=job_id)
    with connect(job=job_id) as api:
        tasks = list_all(api.jobs.ListTasks, request, lambda r: r.tasks, limit=limit)
    show_list(tasks, _TASK_COLUMNS, output_format, message_to_dict)


@click.command("task")
@click.argument("job_id", metavar="JOB")
@click.argument("task_id", metavar="TASK")
@output_option
def get_task(job_id: str, task_id: str, output_format: str) -> None:
    """Show one task of a job.

    JSON and YAML also show the task's config and the tail of its log.
    """
    with connect(job=job_id, task=task_id) as api:
        task = api.jobs.GetTask(pb.GetTaskRequest(job_id=job_id, task_id=task_id)).task
    show_one(task, _task_fields, output_format, message_to_dict)


def _task_fields(task: task_pb2.Task) -> list[tuple[str, str]]:
    return [
        ("TASK", task.task_id),
        ("JOB", task.job_id),
        ("ROLE", task.role),
        ("STATE", _task_state(task)),
        ("REASON", task.reason),
        ("COMPUTE", task.compute_id),
        ("GROUPS", mapping_label(task.group_association)),
        ("DATASET", task.dataset_url),
        ("EXIT-CODE", str(task.exit_code) if task.state in _ENDED_TASK_STATES else ""),
        ("UPDATED", format_time(task.update_time)),
    ]
