"""Forwarding of the public services to the controller.

One generic handler serves every method of `PUBLIC_SERVICES` without decoding
messages: request and response bytes pass through untouched, so the apiserver
costs one extra hop and no serialization. Before forwarding it checks the
caller's credential and replaces identity metadata with what it has verified.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from flame.apiserver.auth import TokenResolver
from flame.controlplane import metadata as md
from flame.rpc.errors import Unauthenticated

__all__ = ["ForwardingHandler", "ProxyLimits"]

_log = logging.getLogger(__name__)

# Methods a deployer may call with its compute key instead of a user token.
_COMPUTE_KEY_METHODS = frozenset(
    {
        "/flame.compute.v1.ComputeService/GetDeploymentConfig",
        "/flame.compute.v1.ComputeService/UpdateDeploymentStatus",
    }
)
_AGENT_SERVICE = "flame.agent.v1.AgentService"
# Trailing metadata worth passing back: the rich status (ErrorInfo and friends).
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class ProxyLimits:
    """Deadlines the apiserver puts on forwarded calls."""

    unary_timeout_seconds: float = 30.0
    stream_timeout_seconds: float = 24 * 3600.0


# grpc-stubs make the base generic, but at runtime it is not subscriptable.
class ForwardingHandler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Serves every method of `services` by forwarding it to `controller`."""

    def __init__(
        self,
        services: Sequence[ServiceDescriptor],
        controller: grpc.aio.Channel,
        resolver: TokenResolver,
        *,
        internal_key: str,
        limits: ProxyLimits = ProxyLimits(),
    ) -> None:
        self._controller = controller
        self._resolver = resolver
        self._internal_key = internal_key
        self._limits = limits
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for service in services:
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                self._handlers[path] = self._make_handler(
                    path, method.client_streaming, method.server_streaming
                )

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._handlers.get(handler_call_details.method)

    def _make_handler(
        self, path: str, client_streaming: bool, server_streaming: bool
    ) -> grpc.RpcMethodHandler[Any, Any]:
        timeout = (
            self._limits.stream_timeout_seconds
            if server_streaming or client_streaming
            else self._limits.unary_timeout_seconds
        )
        # No (de)serializers: request and response bytes pass through untouched.
        call: Callable[..., Any]
        stream: Callable[..., Any]
        if not client_streaming and not server_streaming:
            call = self._controller.unary_unary(path, None, None)
            return grpc.unary_unary_rpc_method_handler(self._unary(call, path, timeout))
        if client_streaming and not server_streaming:
            call = self._controller.stream_unary(path, None, None)
            return grpc.stream_unary_rpc_method_handler(self._unary(call, path, timeout))
        if server_streaming and not client_streaming:
            stream = self._controller.unary_stream(path, None, None)
            return grpc.unary_stream_rpc_method_handler(self._streaming(stream, path, timeout))
        stream = self._controller.stream_stream(path, None, None)
        return grpc.stream_stream_rpc_method_handler(self._streaming(stream, path, timeout))

    def _unary(
        self, call: Callable[..., Any], path: str, timeout: float
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]:
        async def forward(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            forwarded = await self._forwarded_metadata(path, context)
            try:
                return await call(request, metadata=forwarded, timeout=_deadline(context, timeout))
            except grpc.aio.AioRpcError as error:
                await _relay_error(context, error)

        return forward

    def _streaming(
        self, call: Callable[..., Any], path: str, timeout: float
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
        async def forward(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            forwarded = await self._forwarded_metadata(path, context)
            upstream = call(request, metadata=forwarded, timeout=_deadline(context, timeout))
            try:
                async for response in upstream:
                    yield response
            except grpc.aio.AioRpcError as error:
                await _relay_error(context, error)
            finally:
                upstream.cancel()

        return forward

    async def _forwarded_metadata(
        self, path: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[tuple[str, str | bytes], ...]:
        incoming = [
            (key, value)
            for key, value in (context.invocation_metadata() or ())
            if key not in md.IDENTITY_KEYS and key != md.AUTHORIZATION
        ]
        keys = {key for key, _ in incoming}
        forwarded = [*incoming, (md.INTERNAL_KEY, self._internal_key)]
        token = _bearer_token(context)
        if token is not None:
            identity = await self._resolver.resolve(token)
            forwarded += [(md.USER, identity.user_id), (md.ADMIN, str(identity.is_admin).lower())]
        elif not _may_skip_token(path, keys):
            raise Unauthenticated(
                "TOKEN_MISSING",
                "this call needs an API token: metadata `authorization: Bearer <token>`",
            )
        return tuple(forwarded)


def _may_skip_token(path: str, metadata_keys: set[str]) -> bool:
    if path.startswith(f"/{_AGENT_SERVICE}/"):
        return md.TASK_KEY in metadata_keys
    return path in _COMPUTE_KEY_METHODS and md.COMPUTE_KEY in metadata_keys


def _bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == md.AUTHORIZATION:
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated(
                    "TOKEN_MALFORMED", "the authorization metadata must be `Bearer <token>`"
                )
            return token.strip()
    return None


def _deadline(context: grpc.aio.ServicerContext[Any, Any], cap: float) -> float:
    remaining = context.time_remaining()
    return cap if remaining is None else min(remaining, cap)


async def _relay_error(
    context: grpc.aio.ServicerContext[Any, Any], error: grpc.aio.AioRpcError
) -> None:
    # grpc-stubs type this as the sync RpcError's tuple of _Metadatum; aio returns
    # Metadata, which iterates (key, value) pairs.
    metadata = cast("Iterable[tuple[str, str | bytes]]", error.trailing_metadata() or ())
    trailing = tuple((key, value) for key, value in metadata if key == _STATUS_DETAILS_KEY)
    await context.abort(error.code(), error.details() or "", trailing)
