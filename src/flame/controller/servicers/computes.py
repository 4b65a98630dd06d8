"""ComputeService: registration and reads (the deployment calls come with job runs)."""

from __future__ import annotations

from typing import Any

from flame.compute.v1 import compute_pb2, compute_service_pb2_grpc
from flame.compute.v1 import compute_service_pb2 as pb
from flame.controller.caller import caller_of, metadata_value, require_admin
from flame.controller.lifecycle import JobManager
from flame.controller.pagination import list_page
from flame.controller.store.computes import ComputeStore
from flame.controller.store.jobs import ACTIVE_STATES, JobStore
from flame.controller.taskkeys import TaskKeys
from flame.controller.validation import validate_identifier
from flame.controlplane import metadata as md
from flame.job.v1 import job_pb2, task_pb2
from flame.rpc.errors import FailedPrecondition, FieldViolation, InvalidArgument, Unauthenticated

__all__ = ["ComputeServicer"]

Context = Any
# Outcomes that mean a task's agent is not running it any more.
_AGENT_GONE = (compute_pb2.AgentStatus.STATE_DEPLOY_FAILED, compute_pb2.AgentStatus.STATE_EXITED)


class ComputeServicer(compute_service_pb2_grpc.ComputeServiceServicer):
    """Computes: admins register and delete them; every user may read them."""

    def __init__(
        self, computes: ComputeStore, jobs: JobStore, manager: JobManager, keys: TaskKeys
    ) -> None:
        self._keys = keys
        self._computes = computes
        self._jobs = jobs
        self._manager = manager

    async def RegisterCompute(
        self, request: pb.RegisterComputeRequest, context: Context
    ) -> pb.RegisterComputeResponse:
        require_admin(context)
        _validate_registration(request)
        compute, created = await self._computes.register(request.compute, request.api_key)
        return pb.RegisterComputeResponse(compute=compute, created=created)

    async def GetCompute(
        self, request: pb.GetComputeRequest, context: Context
    ) -> pb.GetComputeResponse:
        caller_of(context)
        return pb.GetComputeResponse(compute=await self._computes.get(request.compute_id))

    async def ListComputes(
        self, request: pb.ListComputesRequest, context: Context
    ) -> pb.ListComputesResponse:
        caller_of(context)
        page, token = await list_page(
            request,
            "computes",
            lambda after, count: self._computes.list_computes(after=after, limit=count),
            lambda compute: compute.id,
        )
        return pb.ListComputesResponse(computes=page, next_page_token=token)

    async def DeleteCompute(
        self, request: pb.DeleteComputeRequest, context: Context
    ) -> pb.DeleteComputeResponse:
        require_admin(context)
        await self._computes.delete(request.compute_id)
        return pb.DeleteComputeResponse()

    async def GetDeploymentConfig(
        self, request: pb.GetDeploymentConfigRequest, context: Context
    ) -> pb.GetDeploymentConfigResponse:
        await self._authenticate_deployer(context, request.compute_id)
        job = await self._jobs.get_any(request.job_id)
        if job.state not in ACTIVE_STATES:
            raise FailedPrecondition(
                "JOB_NOT_ACTIVE",
                f"job '{job.id}' is not running",
                metadata={"state": job_pb2.Job.State.Name(job.state)},
            )
        run_id = (await self._jobs.flags(request.job_id)).get("run_id", "")
        tasks = await self._jobs.task_ids_on(request.job_id, request.compute_id)
        credentials = [
            compute_pb2.TaskCredential(
                task_id=task, task_key=self._keys.key(request.job_id, task, run_id)
            )
            for task in tasks
        ]
        config = compute_pb2.DeploymentConfig(job_id=request.job_id, tasks=credentials)
        return pb.GetDeploymentConfigResponse(config=config)

    async def UpdateDeploymentStatus(
        self, request: pb.UpdateDeploymentStatusRequest, context: Context
    ) -> pb.UpdateDeploymentStatusResponse:
        await self._authenticate_deployer(context, request.compute_id)
        changed = False
        for status in request.statuses:
            if status.state in _AGENT_GONE:
                reason = (
                    f"agent on compute {request.compute_id} failed: {status.message or 'no detail'}"
                )
                changed |= await self._jobs.report_task(
                    request.job_id, status.task_id, task_pb2.Task.STATE_FAILED, reason=reason
                )
        if changed:
            self._manager.wake()
        return pb.UpdateDeploymentStatusResponse()

    async def _authenticate_deployer(self, context: Context, compute_id: str) -> None:
        """A deployer proves itself with its compute's key; an admin may act for it."""
        key = metadata_value(context, md.COMPUTE_KEY)
        if key is None:
            require_admin(context)
            return
        if not await self._computes.check_key(compute_id, key):
            raise Unauthenticated("COMPUTE_KEY_INVALID", "the compute key does not match")


def _validate_registration(request: pb.RegisterComputeRequest) -> None:
    violations = []
    identifier = validate_identifier(request.compute.id, "compute.id", "compute id")
    if identifier:
        violations.append(identifier)
    if not request.compute.region:
        violations.append(FieldViolation("compute.region", "required, e.g. default/us"))
    if len(request.api_key) < 16:
        violations.append(FieldViolation("api_key", "required, at least 16 characters"))
    if violations:
        raise InvalidArgument("COMPUTE_INVALID", "the compute is not valid", violations=violations)
