"""The AgentService calls of one task: its key on every call, a deadline, retries."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from flame.agent.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc
from flame.controlplane.metadata import TASK_KEY
from flame.flamelet.retry import RetryPolicy, retrying
from flame.job.v1 import task_pb2

__all__ = ["AgentApi", "Download", "Status", "is_key_rejected"]

State = task_pb2.Task.State


@dataclass(frozen=True)
class Status:
    """A task state to report, with what the control plane shows about it."""

    state: State.ValueType
    exit_code: int = 0
    reason: str = ""
    log_tail: str = ""


@dataclass(frozen=True)
class Download:
    """What a code download received: its size (possibly cut short) and SHA-256."""

    size: int
    sha256: str


class AgentApi:
    """AgentService for one task, authenticated with its key."""

    def __init__(
        self,
        stub: agent_service_pb2_grpc.AgentServiceAsyncStub,
        *,
        job_id: str,
        task_id: str,
        task_key: str,
        policy: RetryPolicy,
    ) -> None:
        """Call `stub` for task `task_id` of job `job_id`, presenting `task_key`."""
        self._stub = stub
        self._job_id = job_id
        self._task_id = task_id
        self._metadata = ((TASK_KEY, task_key),)
        self._policy = policy

    async def get_manifest(self) -> agent_pb2.TaskManifest:
        """Fetch the task's manifest."""
        request = agent_service_pb2.GetTaskManifestRequest(
            job_id=self._job_id, task_id=self._task_id
        )

        async def attempt() -> agent_pb2.TaskManifest:
            response = await self._stub.GetTaskManifest(
                request, metadata=self._metadata, timeout=self._policy.call_timeout
            )
            return response.manifest

        return await retrying(attempt, self._policy, "GetTaskManifest")

    async def download_code(self, dest: Path, *, max_bytes: int) -> Download:
        """Download the role's code bundle into `dest`, from scratch on each attempt.

        Reading stops once more than `max_bytes` arrived: the bundle is then not
        the one the manifest describes, and the rest is not worth fetching.
        """
        request = agent_service_pb2.DownloadTaskCodeRequest(
            job_id=self._job_id, task_id=self._task_id
        )

        async def attempt() -> Download:
            digest, size = hashlib.sha256(), 0
            call = self._stub.DownloadTaskCode(
                request, metadata=self._metadata, timeout=self._policy.stream_timeout
            )
            try:
                with dest.open("wb") as out:
                    async for response in call:
                        digest.update(response.chunk)
                        out.write(response.chunk)
                        size += len(response.chunk)
                        if size > max_bytes:
                            break
            finally:
                call.cancel()
            return Download(size, digest.hexdigest())

        return await retrying(attempt, self._policy, "DownloadTaskCode")

    async def report(self, status: Status) -> None:
        """Report the task's state."""
        request = agent_service_pb2.UpdateTaskStatusRequest(
            job_id=self._job_id,
            task_id=self._task_id,
            state=status.state,
            exit_code=status.exit_code,
            reason=status.reason,
            log_tail=status.log_tail,
        )

        async def attempt() -> None:
            await self._stub.UpdateTaskStatus(
                request, metadata=self._metadata, timeout=self._policy.call_timeout
            )

        await retrying(attempt, self._policy, "UpdateTaskStatus")

    async def append_logs(self, chunks: Sequence[bytes]) -> None:
        """Append `chunks` to the task's log in one AppendTaskLogs stream, without retrying.

        Raises:
            grpc.aio.AioRpcError: The chunks may or may not be stored.
        """
        requests = [
            agent_service_pb2.AppendTaskLogsRequest(
                job_id=self._job_id, task_id=self._task_id, data=chunk
            )
            for chunk in chunks
        ]
        await self._stub.AppendTaskLogs(
            iter(requests), metadata=self._metadata, timeout=self._policy.call_timeout
        )


def is_key_rejected(error: grpc.aio.AioRpcError) -> bool:
    """Whether the apiserver refused the task key: nothing the agent does can succeed."""
    return error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
