"""Following jobs as they run: `flamectl watch job` and `flamectl logs`."""

from __future__ import annotations

import sys

import click

from flame.cli.connection import connect
from flame.cli.errors import CliError
from flame.cli.output import enum_label
from flame.job.v1 import job_pb2
from flame.job.v1 import job_service_pb2 as pb

__all__ = ["logs", "watch_job"]

# Streams that follow a run have no short deadline: a job may run for hours.
_FOLLOW_SECONDS = 7 * 24 * 3600.0
_SUCCESS = job_pb2.Job.STATE_COMPLETED
_TERMINAL = frozenset(
    {job_pb2.Job.STATE_COMPLETED, job_pb2.Job.STATE_FAILED, job_pb2.Job.STATE_TERMINATED}
)
_BAR_WIDTH = 30


@click.command("job")
@click.argument("job_id", metavar="ID")
def watch_job(job_id: str) -> None:
    """Show a job's progress live until it ends; exit 1 unless it completed."""
    interactive = sys.stdout.isatty()
    last: job_pb2.Job | None = None
    with connect(job=job_id) as api:
        for update in api.jobs.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=_FOLLOW_SECONDS):
            last = update.job
            line = progress_line(last)
            click.echo(f"\r\033[K{line}" if interactive else line, nl=not interactive)
    if interactive:
        click.echo()
    if last is None or last.state not in _TERMINAL:
        raise CliError(f"the watch of job '{job_id}' ended before the job did")
    if last.state != _SUCCESS:
        outcome = enum_label(job_pb2.Job.State.Name(last.state))
        raise CliError(f"job '{job_id}' {outcome}: {last.reason}")


def progress_line(job: job_pb2.Job) -> str:
    """One line: state, a bar of finished tasks, and the count of tasks per state."""
    counts = dict(job.task_counts)
    total = sum(counts.values())
    finished = sum(counts.get(state, 0) for state in ("completed", "failed", "terminated"))
    filled = _BAR_WIDTH * finished // total if total else 0
    bar = "#" * filled + "." * (_BAR_WIDTH - filled)
    details = " ".join(f"{state} {count}" for state, count in sorted(counts.items()))
    state = enum_label(job_pb2.Job.State.Name(job.state))
    return f"{state:<10} [{bar}] {finished}/{total}  {details}"


@click.command("logs")
@click.argument("job_id", metavar="JOB")
@click.argument("task_id", metavar="TASK")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the task ends.")
def logs(job_id: str, task_id: str, follow: bool) -> None:
    """Print a task's log (what its role code wrote to stdout and stderr)."""
    request = pb.ReadTaskLogsRequest(job_id=job_id, task_id=task_id, follow=follow)
    timeout = _FOLLOW_SECONDS if follow else None
    with connect(job=job_id, task=task_id) as api:
        for piece in api.jobs.ReadTaskLogs(request, timeout=timeout):
            sys.stdout.buffer.write(piece.data)
            sys.stdout.flush()
