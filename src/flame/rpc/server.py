"""The gRPC server every Flame service runs on.

`start_server` builds a `grpc.aio` server with the standard health service,
server reflection, the domain-error interceptor and message-size limits, binds
it (TLS, mutual TLS, or plaintext when asked for) and starts it. `serve_until_signal`
keeps it running until SIGTERM or SIGINT, then drains calls for a grace period.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flame.rpc.errors import FlameError, to_rpc_status
from flame.rpc.tls import ServerTls

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "RunningServer",
    "ServerOptions",
    "Service",
    "bind",
    "bind_serialized",
    "serve_until_signal",
    "start_server",
    "wrap_handler",
]

_log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# How long a refused client stream is still read before its status goes out.
_DRAIN_SECONDS = 5.0


@dataclass(frozen=True)
class Service:
    """One gRPC service to serve: its full name and how to register its servicer."""

    name: str
    register: Callable[[grpc.aio.Server], None]


@dataclass(frozen=True)
class ServerOptions:
    """Where and how a server listens. `tls=None` serves plaintext, which callers
    must have asked for explicitly (the command-line layer enforces that)."""

    host: str = "127.0.0.1"
    port: int = 0
    tls: ServerTls | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    grace_seconds: float = 5.0


@dataclass
class RunningServer:
    """A started server, its bound address and its health servicer."""

    server: grpc.aio.Server
    host: str
    port: int
    health: health.aio.HealthServicer  # type: ignore[name-defined]  # grpc-health stubs lack `aio`
    grace_seconds: float

    @property
    def address(self) -> str:
        """`host:port`, or `unix:PATH` for a Unix socket."""
        return self.host if self.host.startswith("unix:") else f"{self.host}:{self.port}"

    async def stop(self) -> None:
        """Report NOT_SERVING, then stop, letting calls in flight finish within the grace period."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace_seconds)


# grpc-stubs make the base generic, but at runtime it is not subscriptable.
class _DomainErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Turns a `FlameError` raised by a handler into its rich status."""

    def __init__(self) -> None:
        # Handlers are fixed per method, so each is wrapped once, not on every call.
        self._wrapped: dict[int, grpc.RpcMethodHandler[Any, Any]] = {}
        self._originals: list[grpc.RpcMethodHandler[Any, Any]] = []

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        wrapped = self._wrapped.get(id(handler))
        if wrapped is None:
            wrapped = wrap_handler(
                handler, _guard_unary, _guard_stream, wrap_client_stream=_guard_client_stream
            )
            # Keep `handler` alive with its wrapper so its id is never reused.
            self._wrapped[id(handler)] = wrapped
            self._originals.append(handler)
        return wrapped


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap_unary: Callable[[Callable[..., Any]], Callable[..., Any]],
    wrap_stream: Callable[[Callable[..., Any]], Callable[..., Any]],
    *,
    wrap_client_stream: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind as `handler` whose behavior is wrapped: with
    `wrap_unary` when it returns one response, `wrap_stream` when it streams,
    `wrap_client_stream` (default `wrap_unary`) when it reads a stream and
    returns one response."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), **serializers)
    if handler.stream_unary:
        wrap = wrap_client_stream or wrap_unary
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap_stream(handler.unary_stream), **serializers
        )
    assert handler.stream_stream is not None  # a handler has exactly one behavior
    return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream), **serializers)


def _guard_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except (FlameError, NotImplementedError) as error:
            await _abort(context, error)

    return guarded


def _guard_client_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def guarded(request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        requests = _RequestStream(request_iterator)
        try:
            return await behavior(requests, context)
        except (FlameError, NotImplementedError) as error:
            # A grpc.aio client still writing when the status arrives can lose it
            # and report INTERNAL "Internal error from Core" instead (measured: 4
            # of 300 refused uploads, grpcio 1.85). Reading the rest first avoids it.
            await requests.drain(_DRAIN_SECONDS)
            await _abort(context, error)

    return guarded


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], error: FlameError | NotImplementedError
) -> None:
    if isinstance(error, FlameError):
        await context.abort_with_status(to_rpc_status(error))  # type: ignore[attr-defined]
    else:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "method not implemented")


class _RequestStream:
    """A client's request stream that knows whether it was read to its end."""

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self._requests = requests
        self._ended = False

    def __aiter__(self) -> _RequestStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await anext(self._requests)
        except StopAsyncIteration:
            self._ended = True
            raise

    async def drain(self, seconds: float) -> None:
        """Read and drop what is left of the stream, for at most `seconds`."""
        if self._ended:
            return
        try:
            async with asyncio.timeout(seconds):
                async for _ in self:
                    pass
        except Exception:  # best effort: the status to send is the handler's own error
            _log.debug("a refused request stream could not be read to its end", exc_info=True)


def _guard_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behavior):
        # A coroutine that writes its responses (`context.write`): one generator step
        # per message fewer than yielding them, which counts in a large fan-out.
        return _guard_unary(behavior)

    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            async for response in behavior(request, context):
                yield response
        except (FlameError, NotImplementedError) as error:
            await _abort(context, error)

    return guarded


async def start_server(
    services: Sequence[Service],
    options: ServerOptions,
    *,
    generic_handler: grpc.GenericRpcHandler[Any, Any] | None = None,
    generic_service_names: Sequence[str] = (),
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
) -> RunningServer:
    """Build, bind and start a server for `services`, with health and reflection.

    `generic_handler` serves `generic_service_names` without generated servicers
    (the apiserver's forwarding proxy). `interceptors` run before the one that
    maps domain errors to status.
    """
    limits = [
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.max_send_message_length", options.max_message_bytes),
    ]
    server = grpc.aio.server(
        interceptors=[*interceptors, _DomainErrorInterceptor()], options=limits
    )
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # as above
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in services:
        service.register(server)
    if generic_handler is not None:
        server.add_generic_rpc_handlers([generic_handler])
    names = [service.name for service in services] + list(generic_service_names)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    unix = options.host.startswith("unix:")
    address = options.host if unix else f"{options.host}:{options.port}"
    if options.tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, options.tls.credentials())
    if port == 0:
        raise OSError(f"cannot bind {address}")
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, options.host, port, health_servicer, options.grace_seconds)


async def serve_until_signal(
    running: RunningServer, *, on_stop: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Wait for SIGTERM or SIGINT, then stop gracefully and run `on_stop`."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server_done = asyncio.ensure_future(running.server.wait_for_termination())
    signalled = asyncio.ensure_future(stop.wait())
    await asyncio.wait({server_done, signalled}, return_when=asyncio.FIRST_COMPLETED)
    _log.info("shutting down", extra={"address": running.address})
    await running.stop()
    if on_stop is not None:
        await on_stop()
    for task in (server_done, signalled):
        task.cancel()


def bind(
    descriptor: Any, add_to_server: Callable[[Any, grpc.aio.Server], None], servicer: Any
) -> Service:
    """Describe a servicer to serve: `descriptor` is the service's ServiceDescriptor,
    `add_to_server` the generated `add_<Name>Servicer_to_server`."""
    return Service(descriptor.full_name, lambda server: add_to_server(servicer, server))


def bind_serialized(
    descriptor: ServiceDescriptor,
    servicer: Any,
    *,
    requests: Collection[str] = (),
    responses: Collection[str] = (),
) -> Service:
    """Describe a servicer to serve, like `bind`, whose methods named in `requests` take
    their requests serialized (bytes, which they parse themselves) and whose methods named
    in `responses` return or write their responses serialized: laid out by hand where
    protobuf would copy large data, or build the same message many times over."""
    for name in (*requests, *responses):
        if name not in descriptor.methods_by_name:
            raise ValueError(f"{descriptor.full_name} has no method {name}")

    def register(server: grpc.aio.Server) -> None:
        handlers = {
            method.name: _method_handler(
                getattr(servicer, method.name),
                method,
                serialized_request=method.name in requests,
                serialized_response=method.name in responses,
            )
            for method in descriptor.methods
        }
        generic = grpc.method_handlers_generic_handler(descriptor.full_name, handlers)
        server.add_generic_rpc_handlers((generic,))
        # As generated code does: registered methods skip the generic lookup per call.
        server.add_registered_method_handlers(  # type: ignore[attr-defined]  # not in grpc-stubs
            descriptor.full_name, handlers
        )

    return Service(descriptor.full_name, register)


# The handler of a method, by (client streams, server streams).
_HANDLER_KINDS: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _method_handler(
    behavior: Callable[..., Any],
    method: MethodDescriptor,
    *,
    serialized_request: bool,
    serialized_response: bool,
) -> grpc.RpcMethodHandler[Any, Any]:
    make = _HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
    request_class = GetMessageClass(method.input_type)
    response_class = GetMessageClass(method.output_type)
    return make(
        behavior,
        # None passes the bytes through untouched.
        request_deserializer=None if serialized_request else request_class.FromString,
        response_serializer=None if serialized_response else response_class.SerializeToString,
    )
