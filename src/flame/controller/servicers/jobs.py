"""JobService: job resources and their tasks (the lifecycle calls come with job runs)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import field_mask_pb2

from flame.controller.caller import caller_of
from flame.controller.jobbuilder import (
    DEFAULT_MAX_RUN_TIME_SECONDS,
    PlatformParams,
    TaskPlan,
    config_json,
    expand_job,
)
from flame.controller.lifecycle import JobManager
from flame.controller.masks import mask_paths
from flame.controller.pagination import list_page
from flame.controller.store.datasets import DatasetStore
from flame.controller.store.designs import DesignStore
from flame.controller.store.jobs import ACTIVE_STATES, TERMINAL_TASK_STATES, JobStore
from flame.controller.validation import check_roles_have_code, validate_job_spec
from flame.job.v1 import job_pb2, job_service_pb2_grpc, task_pb2
from flame.job.v1 import job_service_pb2 as pb
from flame.rpc.errors import Aborted, FailedPrecondition

__all__ = ["JobServicer"]

Context = Any
_MUTABLE = (
    "name",
    "schema_revision",
    "code_revision",
    "priority",
    "backend",
    "max_run_time_seconds",
    "data_spec",
    "model_spec",
)
# How often streams re-read state when nothing woke them earlier.
_POLL_SECONDS = 0.5


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    """Jobs of the calling user."""

    def __init__(
        self,
        jobs: JobStore,
        designs: DesignStore,
        datasets: DatasetStore,
        params: PlatformParams,
        manager: JobManager,
    ) -> None:
        self._manager = manager
        self._jobs = jobs
        self._designs = designs
        self._datasets = datasets
        self._params = params

    async def CreateJob(
        self, request: pb.CreateJobRequest, context: Context
    ) -> pb.CreateJobResponse:
        caller = caller_of(context)
        job = job_pb2.Job()
        job.CopyFrom(request.job)
        job.id, job.owner = self._jobs.new_id(), caller.user_id
        tasks = await self._expand(job)
        return pb.CreateJobResponse(job=await self._jobs.create(job, tasks))

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.GetJobResponse:
        caller = caller_of(context)
        return pb.GetJobResponse(job=await self._jobs.get(caller.user_id, request.job_id))

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        caller = caller_of(context)
        page, token = await list_page(
            request,
            ["jobs", caller.user_id],
            lambda before, count: self._jobs.list_jobs(caller.user_id, before=before, limit=count),
            lambda job: job.id,
        )
        return pb.ListJobsResponse(jobs=page, next_page_token=token)

    async def UpdateJob(
        self, request: pb.UpdateJobRequest, context: Context
    ) -> pb.UpdateJobResponse:
        caller = caller_of(context)
        paths = mask_paths(request.update_mask, _MUTABLE)
        job = await self._jobs.get(caller.user_id, request.job.id)
        _require_inactive(job, "updated")
        field_mask_pb2.FieldMask(paths=paths).MergeMessage(
            request.job, job, replace_message_field=True, replace_repeated_field=True
        )
        tasks = await self._expand(job)
        replaced = await self._jobs.replace(job, tasks)
        if replaced is None:  # started meanwhile
            _require_inactive(await self._jobs.get(caller.user_id, job.id), "updated")
            raise _changed_meanwhile(job.id, "updated")
        return pb.UpdateJobResponse(job=replaced)

    async def DeleteJob(
        self, request: pb.DeleteJobRequest, context: Context
    ) -> pb.DeleteJobResponse:
        caller = caller_of(context)
        if not await self._jobs.delete(caller.user_id, request.job_id):
            _require_inactive(await self._jobs.get(caller.user_id, request.job_id), "deleted")
            raise _changed_meanwhile(request.job_id, "deleted")
        return pb.DeleteJobResponse()

    async def StartJob(self, request: pb.StartJobRequest, context: Context) -> pb.StartJobResponse:
        caller = caller_of(context)
        return pb.StartJobResponse(job=await self._manager.start(caller.user_id, request.job_id))

    async def StopJob(self, request: pb.StopJobRequest, context: Context) -> pb.StopJobResponse:
        caller = caller_of(context)
        return pb.StopJobResponse(job=await self._manager.stop(caller.user_id, request.job_id))

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: Context
    ) -> AsyncIterator[pb.WatchJobResponse]:
        caller = caller_of(context)
        last: job_pb2.Job | None = None
        while True:
            job = await self._jobs.get(caller.user_id, request.job_id)
            if last is None or _changed(last, job):
                yield pb.WatchJobResponse(job=job)
                last = job
            if job.state not in ACTIVE_STATES:
                return
            await self._manager.wait_for_change(_POLL_SECONDS)

    async def ReadTaskLogs(
        self, request: pb.ReadTaskLogsRequest, context: Context
    ) -> AsyncIterator[pb.ReadTaskLogsResponse]:
        caller = caller_of(context)
        await self._jobs.get(caller.user_id, request.job_id)
        offset = request.offset
        while True:
            task = await self._jobs.get_task(request.job_id, request.task_id)
            for start, data in await self._jobs.read_log(request.job_id, request.task_id, offset):
                yield pb.ReadTaskLogsResponse(offset=start, data=data)
                offset = start + len(data)
            if not request.follow or task.state in TERMINAL_TASK_STATES:
                return
            await asyncio.sleep(_POLL_SECONDS)

    async def ListTasks(
        self, request: pb.ListTasksRequest, context: Context
    ) -> pb.ListTasksResponse:
        caller = caller_of(context)
        await self._jobs.get(caller.user_id, request.job_id)
        page, token = await list_page(
            request,
            ["tasks", request.job_id],
            lambda after, count: self._jobs.list_tasks(request.job_id, after=after, limit=count),
            lambda item: item[0],
        )
        return pb.ListTasksResponse(tasks=[task for _, task in page], next_page_token=token)

    async def GetTask(self, request: pb.GetTaskRequest, context: Context) -> pb.GetTaskResponse:
        caller = caller_of(context)
        await self._jobs.get(caller.user_id, request.job_id)
        return pb.GetTaskResponse(task=await self._jobs.get_task(request.job_id, request.task_id))

    async def _expand(self, job: job_pb2.Job) -> list[task_pb2.Task]:
        """Resolve the job's revisions and datasets, validate it and expand its tasks."""
        await self._designs.get(job.owner, job.design_id)
        schema = await self._designs.get_schema(job.owner, job.design_id, job.schema_revision)
        code, _ = await self._designs.get_code(job.owner, job.design_id, job.code_revision)
        job.schema_revision, job.code_revision = schema.revision, code.revision
        if not job.max_run_time_seconds:
            job.max_run_time_seconds = DEFAULT_MAX_RUN_TIME_SECONDS
        wanted = [
            dataset_id
            for role in job.data_spec
            for group in role.dataset_groups.values()
            for dataset_id in group.dataset_ids
        ]
        visible = await self._datasets.find_visible(job.owner, wanted)
        validate_job_spec(job, schema, datasets={item: visible.get(item) for item in wanted})
        check_roles_have_code([role.name for role in schema.roles], list(code.roles))
        return [_task(job.id, plan) for plan in expand_job(job, schema, visible, self._params)]


def _task(job_id: str, plan: TaskPlan) -> task_pb2.Task:
    return task_pb2.Task(
        job_id=job_id,
        task_id=plan.task_id,
        role=plan.role,
        state=task_pb2.Task.STATE_READY,
        compute_id=plan.compute_id,
        group_association=plan.group_association,
        dataset_url=plan.dataset_url,
        config_json=config_json(plan.config),
    )


def _changed(before: job_pb2.Job, after: job_pb2.Job) -> bool:
    return (before.state, before.reason, dict(before.task_counts)) != (
        after.state,
        after.reason,
        dict(after.task_counts),
    )


def _changed_meanwhile(job_id: str, action: str) -> Aborted:
    # Active at the write, inactive again at the read after it: a start and a stop in between.
    return Aborted(
        "JOB_CHANGED",
        f"job '{job_id}' was started while it was {action}; try again",
        metadata={"job": job_id},
    )


def _require_inactive(job: job_pb2.Job, action: str) -> None:
    if job.state in ACTIVE_STATES:
        state = job_pb2.Job.State.Name(job.state)
        raise FailedPrecondition(
            "ILLEGAL_STATE_TRANSITION",
            f"job '{job.id}' is {state.removeprefix('STATE_').lower()}; "
            f"stop it before it is {action}",
            metadata={"job": job.id, "state": state},
        )
