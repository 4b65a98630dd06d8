"""Domain errors and their mapping to gRPC status with `google.rpc.ErrorInfo`.

Hierarchy::

    FlameError                      (code, reason, message, metadata)
    ├── InvalidArgument             INVALID_ARGUMENT, may carry field violations
    ├── NotFound                    NOT_FOUND
    ├── AlreadyExists               ALREADY_EXISTS
    ├── FailedPrecondition          FAILED_PRECONDITION
    ├── PermissionDenied            PERMISSION_DENIED
    ├── Unauthenticated             UNAUTHENTICATED
    ├── ResourceExhausted           RESOURCE_EXHAUSTED
    └── Unavailable                 UNAVAILABLE

Servers raise these from servicer code; the interceptor in `flame.rpc.server`
turns them into a rich status. Clients read the reason back with `error_details`
and branch on it, never on message text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "DOMAIN",
    "Aborted",
    "AlreadyExists",
    "ErrorDetails",
    "FailedPrecondition",
    "FieldViolation",
    "FlameError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "error_details",
    "to_rpc_status",
]

DOMAIN = "flame.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One offending request field: its path (e.g. `schema.roles[1].name`) and why."""

    field: str
    description: str


class FlameError(Exception):
    """An error with a canonical status code and a stable machine-readable reason."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        metadata: dict[str, str] | None = None,
        violations: list[FieldViolation] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})
        self.violations = list(violations or [])


class InvalidArgument(FlameError):
    """The request is malformed; `violations` name the fields."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(FlameError):
    """The resource does not exist, or belongs to someone else."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(FlameError):
    """A resource with the same identity exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(FlameError):
    """The resource is not in a state that allows the request."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(FlameError):
    """The request lost a race with a concurrent change; it may be retried."""

    code = grpc.StatusCode.ABORTED


class PermissionDenied(FlameError):
    """The caller is known but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(FlameError):
    """The caller presented no valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(FlameError):
    """A size or count limit was exceeded."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(FlameError):
    """A transient failure; the call may be retried."""

    code = grpc.StatusCode.UNAVAILABLE


def to_rpc_status(error: FlameError) -> grpc.Status:
    """Build the rich status (ErrorInfo, plus BadRequest for field violations)."""
    details = []
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    )
    details.append(info)
    if error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.name), message=error.message, details=details
    )
    return rpc_status.to_status(status)


@dataclass(frozen=True)
class ErrorDetails:
    """What a client learns from a failed call."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[FieldViolation] = field(default_factory=list)


def error_details(error: grpc.RpcError) -> ErrorDetails:
    """Read code, message, ErrorInfo reason and field violations from a failed call."""
    # Both grpc.aio.AioRpcError and sync call errors offer these three methods.
    if not all(hasattr(error, name) for name in ("code", "details", "trailing_metadata")):
        return ErrorDetails(code=grpc.StatusCode.UNKNOWN, message=str(error))
    call: Any = error
    code, message = call.code(), call.details()
    status = rpc_status.from_call(call)
    if status is None:
        return ErrorDetails(code=code, message=message or "")
    reason, metadata, violations = "", {}, []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Unpack(bad_request):
            violations = [
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            ]
    return ErrorDetails(code, status.message, reason, metadata, violations)
