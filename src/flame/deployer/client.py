"""The ComputeService calls of one compute's deployer, with deadlines and retries.

Every attempt has a deadline, and an attempt that failed for a transient reason
(the server unreachable or too slow) is repeated after a jittered backoff until
the operation's own deadline. Failures come out as `ControlPlaneError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import grpc

from flame.compute.v1 import compute_pb2, compute_service_pb2
from flame.controlplane import metadata as md
from flame.deployer.deployer import ControlPlaneError
from flame.notifier.client import backoff_delay
from flame.rpc.errors import error_details

if TYPE_CHECKING:  # the async stub type exists only in the generated stubs (.pyi)
    from flame.compute.v1.compute_service_pb2_grpc import ComputeServiceAsyncStub

__all__ = ["ComputeClient"]

T = TypeVar("T")

PLATFORM = "local"

# Codes that say nothing about the request itself: the same call may succeed later.
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# The shortest deadline an attempt gets, even when the operation's is nearly over.
_MIN_ATTEMPT_SECONDS = 0.1


class ComputeClient:
    """Registers a compute and makes its deployer's calls, authenticated by its api key."""

    def __init__(
        self,
        stub: ComputeServiceAsyncStub,
        compute_id: str,
        compute_key: str,
        *,
        call_timeout: float = 10.0,
        retry_seconds: float = 30.0,
    ) -> None:
        """Call through `stub` as compute `compute_id`.

        Args:
            stub: A ComputeService stub on an aio channel to the apiserver.
            compute_id: The compute's id.
            compute_key: The compute's api key (at least 16 characters).
            call_timeout: Deadline of one attempt, in seconds.
            retry_seconds: How long `deployment_config` and `report` keep retrying.
        """
        self._stub = stub
        self._compute_id = compute_id
        self._key_metadata = ((md.COMPUTE_KEY, compute_key),)
        self._compute_key = compute_key
        self._call_timeout = call_timeout
        self._retry_seconds = retry_seconds

    async def register(self, region: str, admin_token: str, *, within: float = 60.0) -> bool:
        """Register the compute with its api key, retrying transient failures for `within` s.

        Returns:
            True if the compute is new, False if it was registered with the same key.

        Raises:
            ControlPlaneError: Refused (reason `COMPUTE_ALREADY_EXISTS`: registered
                with another key), or the apiserver stayed unreachable.
        """
        request = compute_service_pb2.RegisterComputeRequest(
            compute=compute_pb2.Compute(id=self._compute_id, region=region, platform=PLATFORM),
            api_key=self._compute_key,
        )
        metadata = ((md.AUTHORIZATION, f"Bearer {admin_token}"),)
        response = await self._retried(
            "RegisterCompute",
            lambda timeout: self._stub.RegisterCompute(request, metadata=metadata, timeout=timeout),
            within,
        )
        return response.created

    async def deployment_config(self, job_id: str) -> compute_pb2.DeploymentConfig:
        """The job's tasks placed on this compute, with freshly minted task keys."""
        request = compute_service_pb2.GetDeploymentConfigRequest(
            compute_id=self._compute_id, job_id=job_id
        )
        response = await self._retried(
            "GetDeploymentConfig",
            lambda timeout: self._stub.GetDeploymentConfig(
                request, metadata=self._key_metadata, timeout=timeout
            ),
            self._retry_seconds,
        )
        return response.config

    async def report(self, job_id: str, statuses: Sequence[compute_pb2.AgentStatus]) -> None:
        """Report what happened to some of the job's agents."""
        request = compute_service_pb2.UpdateDeploymentStatusRequest(
            compute_id=self._compute_id, job_id=job_id, statuses=statuses
        )
        await self._retried(
            "UpdateDeploymentStatus",
            lambda timeout: self._stub.UpdateDeploymentStatus(
                request, metadata=self._key_metadata, timeout=timeout
            ),
            self._retry_seconds,
        )

    async def _retried(
        self, name: str, attempt: Callable[[float], Awaitable[T]], within: float
    ) -> T:
        """Run `attempt(timeout)` until it succeeds, fails for good, or `within` s are over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        failures = 0
        while True:
            timeout = max(_MIN_ATTEMPT_SECONDS, min(self._call_timeout, deadline - loop.time()))
            try:
                return await attempt(timeout)
            except grpc.aio.AioRpcError as error:
                retryable = error.code() in _TRANSIENT
                remaining = deadline - loop.time()
                if not retryable or remaining <= 0:
                    raise _failure(name, error, retryable, within) from None
            # The last wait is cut short so that one more attempt ends at the deadline.
            await asyncio.sleep(min(backoff_delay(failures), remaining))
            failures += 1


def _failure(
    name: str, error: grpc.aio.AioRpcError, retryable: bool, within: float
) -> ControlPlaneError:
    details = error_details(error)
    reason = f" {details.reason}" if details.reason else ""
    cause = f"{details.code.name}{reason}: {details.message}"
    if retryable:
        message = f"{name} did not succeed within {within:.0f} s ({cause})"
    else:
        message = f"{name} refused ({cause})"
    return ControlPlaneError(message, reason=details.reason, retryable=retryable)
