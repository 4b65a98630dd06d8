"""Who is calling the controller.

The controller is reached only through the apiserver, which proves itself with
the internal key and names the verified user in metadata. `InternalKeyInterceptor`
refuses every call without that key, so servicers can trust `caller_of`.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from flame.controlplane import metadata as md
from flame.rpc.errors import PermissionDenied, Unauthenticated
from flame.rpc.server import wrap_handler

__all__ = ["Caller", "InternalKeyInterceptor", "caller_of", "metadata_value", "require_admin"]


@dataclass(frozen=True)
class Caller:
    """A user the apiserver has authenticated."""

    user_id: str
    is_admin: bool


def metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    """The value of one invocation metadata key, or None."""
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return str(value)
    return None


def caller_of(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    """The authenticated user of a call; UNAUTHENTICATED when there is none."""
    user = metadata_value(context, md.USER)
    if not user:
        raise Unauthenticated("TOKEN_MISSING", "this call needs a user's API token")
    return Caller(user, metadata_value(context, md.ADMIN) == "true")


def require_admin(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    """The caller, who must be an admin."""
    caller = caller_of(context)
    if not caller.is_admin:
        raise PermissionDenied("PERMISSION_DENIED", "this call needs an admin's API token")
    return caller


# grpc-stubs make the base generic, but at runtime it is not subscriptable.
class InternalKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses calls that do not carry the key shared with the apiserver."""

    def __init__(self, internal_key: str) -> None:
        self._key = internal_key.encode()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        presented = dict(handler_call_details.invocation_metadata or ()).get(md.INTERNAL_KEY, "")
        if handler is None or _is_public(handler_call_details.method):
            return handler
        if hmac.compare_digest(str(presented).encode(), self._key):
            return handler
        return wrap_handler(handler, _refuse_unary, _refuse_stream)


def _is_public(method: str) -> bool:
    # Health and reflection stay open so that operators and probes can inspect the server.
    return method.startswith(("/grpc.health.v1.", "/grpc.reflection."))


_REFUSAL = "the controller is reached through the apiserver"


def _refuse_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSAL)

    return refuse


def _refuse_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def refuse(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSAL)
        yield None  # unreachable: abort raises; makes this an async generator

    return refuse
