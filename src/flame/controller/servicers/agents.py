"""AgentService: what task agents (flamelets) call, authenticated by task key."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from flame.agent.v1 import agent_pb2, agent_service_pb2_grpc
from flame.agent.v1 import agent_service_pb2 as pb
from flame.controller.caller import metadata_value
from flame.controller.lifecycle import JobManager
from flame.controller.store.designs import DesignStore
from flame.controller.store.jobs import ACTIVE_STATES, JobStore
from flame.controller.store.peers import PeerStore
from flame.controller.taskkeys import TaskKeys
from flame.controller.validation import role_bundle
from flame.controlplane import metadata as md
from flame.job.v1 import job_pb2, task_pb2
from flame.rpc.errors import FailedPrecondition, FieldViolation, InvalidArgument, Unauthenticated

__all__ = ["AgentServicer"]

Context = Any
_CHUNK_BYTES = 1024 * 1024
_REPORTABLE = (
    task_pb2.Task.STATE_RUNNING,
    task_pb2.Task.STATE_COMPLETED,
    task_pb2.Task.STATE_FAILED,
    task_pb2.Task.STATE_TERMINATED,
)
_CACHED_BUNDLES = 64


class AgentServicer(agent_service_pb2_grpc.AgentServiceServicer):
    """Manifests, code, status and logs of tasks, for their own agents only."""

    def __init__(
        self,
        jobs: JobStore,
        designs: DesignStore,
        peers: PeerStore,
        manager: JobManager,
        keys: TaskKeys,
    ) -> None:
        self._keys = keys
        self._jobs = jobs
        self._designs = designs
        self._peers = peers
        self._manager = manager
        # Role bundles are cut from the design's zip once and shared by the role's tasks.
        self._bundles: OrderedDict[tuple[str, str, int, str], bytes] = OrderedDict()

    async def GetTaskManifest(
        self, request: pb.GetTaskManifestRequest, context: Context
    ) -> pb.GetTaskManifestResponse:
        job, task = await self._authenticate(context, request.job_id, request.task_id)
        bundle = await self._role_bundle(job, task.role)
        config = json.loads(task.config_json)
        config["taskid"] = task.task_id
        manifest = agent_pb2.TaskManifest(
            job_id=job.id,
            task_id=task.task_id,
            role=task.role,
            config_json=json.dumps(config, sort_keys=True),
            code_size_bytes=len(bundle),
            code_sha256=hashlib.sha256(bundle).hexdigest(),
            max_run_time_seconds=job.max_run_time_seconds,
        )
        return pb.GetTaskManifestResponse(manifest=manifest)

    async def DownloadTaskCode(
        self, request: pb.DownloadTaskCodeRequest, context: Context
    ) -> AsyncIterator[pb.DownloadTaskCodeResponse]:
        job, task = await self._authenticate(context, request.job_id, request.task_id)
        bundle = await self._role_bundle(job, task.role)
        for start in range(0, len(bundle), _CHUNK_BYTES):
            yield pb.DownloadTaskCodeResponse(chunk=bundle[start : start + _CHUNK_BYTES])

    async def UpdateTaskStatus(
        self, request: pb.UpdateTaskStatusRequest, context: Context
    ) -> pb.UpdateTaskStatusResponse:
        await self._authenticate(context, request.job_id, request.task_id, active_only=False)
        if request.state not in _REPORTABLE:
            raise InvalidArgument(
                "TASK_STATE_INVALID",
                "an agent reports RUNNING, COMPLETED, FAILED or TERMINATED",
                violations=[FieldViolation("state", "not a state an agent may report")],
            )
        applied = await self._jobs.report_task(
            request.job_id,
            request.task_id,
            request.state,
            exit_code=request.exit_code,
            reason=request.reason,
            log_tail=request.log_tail,
        )
        if applied:
            self._manager.wake()
        return pb.UpdateTaskStatusResponse()

    async def AppendTaskLogs(
        self, request_iterator: AsyncIterator[pb.AppendTaskLogsRequest], context: Context
    ) -> pb.AppendTaskLogsResponse:
        identity: tuple[str, str] | None = None
        size = 0
        async for message in request_iterator:
            if identity is None:
                await self._authenticate(
                    context, message.job_id, message.task_id, active_only=False
                )
                identity = (message.job_id, message.task_id)
            elif (message.job_id, message.task_id) != identity:
                raise InvalidArgument("LOG_STREAM_INVALID", "one log stream carries one task's log")
            size = await self._jobs.append_log(*identity, message.data)
        return pb.AppendTaskLogsResponse(size_bytes=size)

    async def RegisterPeer(
        self, request: pb.RegisterPeerRequest, context: Context
    ) -> pb.RegisterPeerResponse:
        await self._authenticate(context, request.job_id, request.endpoint.task_id)
        await self._peers.register(request.job_id, request.endpoint)
        peers = await self._peers.list_peers(
            request.job_id, request.endpoint.channel, request.endpoint.group, request.other_role
        )
        return pb.RegisterPeerResponse(peers=peers)

    async def ListPeers(
        self, request: pb.ListPeersRequest, context: Context
    ) -> pb.ListPeersResponse:
        await self._authenticate(context, request.job_id, request.task_id)
        peers = await self._peers.list_peers(
            request.job_id, request.channel, request.group, request.role
        )
        return pb.ListPeersResponse(peers=peers)

    async def _authenticate(
        self, context: Context, job_id: str, task_id: str, *, active_only: bool = True
    ) -> tuple[job_pb2.Job, task_pb2.Task]:
        """The job and task a call is about, if the caller holds that task's key."""
        key = metadata_value(context, md.TASK_KEY) or ""
        run_id = (await self._jobs.flags(job_id)).get("run_id", "")
        if not self._keys.matches(job_id, task_id, run_id, key):
            raise Unauthenticated("TASK_KEY_INVALID", "the task key does not match this task")
        job = await self._jobs.get_any(job_id)
        if active_only and job.state not in ACTIVE_STATES:
            raise FailedPrecondition(
                "JOB_NOT_ACTIVE",
                f"job '{job_id}' is not running",
                metadata={"state": job_pb2.Job.State.Name(job.state)},
            )
        return job, await self._jobs.get_task(job_id, task_id)

    async def _role_bundle(self, job: job_pb2.Job, role: str) -> bytes:
        cache_key = (job.owner, job.design_id, job.code_revision, role)
        bundle = self._bundles.get(cache_key)
        if bundle is None:
            _, blob_id = await self._designs.get_code(job.owner, job.design_id, job.code_revision)
            bundle = role_bundle(await self._designs.read_code(blob_id), role)
            self._bundles[cache_key] = bundle
            if len(self._bundles) > _CACHED_BUNDLES:
                self._bundles.popitem(last=False)
        return bundle
