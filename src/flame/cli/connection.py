"""The connection to the apiserver: one channel, the service stubs, and error translation.

Commands open it with `with connect(design=design_id) as api:`. Every call made
through `api` carries the bearer token and a deadline (added by an interceptor,
so no call can forget them), and a failed call leaves the block as a `CliError`
whose message depends on the ErrorInfo reason (see `flame.cli.errors`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import click
import grpc

from flame.cli.config import Config, Settings, load_config
from flame.cli.errors import CallContext, CliError, InputError, describe
from flame.controlplane import metadata as md
from flame.data.v1 import dataset_service_pb2_grpc
from flame.design.v1 import design_service_pb2_grpc
from flame.job.v1 import job_service_pb2_grpc
from flame.rpc.errors import error_details
from flame.user.v1 import user_service_pb2_grpc

__all__ = ["Api", "connect", "list_all"]

# The largest page the services serve (AIP-158 style `page_size` coercion).
_MAX_PAGE_SIZE = 1000
# The servers' message limit (flame.rpc.server.DEFAULT_MAX_MESSAGE_BYTES): a page
# of tasks with their configs can exceed gRPC's default 4 MiB. Not imported, as
# that module loads the whole server runtime, which slows every flamectl start.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Api:
    """The stubs of the public services a user calls."""

    designs: design_service_pb2_grpc.DesignServiceStub
    datasets: dataset_service_pb2_grpc.DatasetServiceStub
    jobs: job_service_pb2_grpc.JobServiceStub
    users: user_service_pb2_grpc.UserServiceStub


@contextmanager
def connect(**subjects: str) -> Iterator[Api]:
    """Open a channel to the configured apiserver for the current command.

    Args:
        **subjects: The resources the command names, by kind (`design="mnist"`),
            and the `action` of a job state change, so that a refusal can name them.

    Yields:
        The service stubs.

    Raises:
        InputError: The configuration is missing or wrong.
        CliError: A call failed; its message is the one for the server's reason.

    Example:
        >>> with connect(design="mnist") as api:
        ...     api.designs.GetDesign(design_service_pb2.GetDesignRequest(design_id="mnist"))
    """
    settings = click.get_current_context().find_object(Settings)
    if settings is None:  # only when a command is invoked outside the `flamectl` group
        raise RuntimeError("flamectl settings are missing from the click context")
    config = load_config(settings.config_path)
    call = CallContext(config.endpoint, settings.timeout, config.path, subjects)
    channel = _open_channel(config)
    try:
        intercepted = grpc.intercept_channel(channel, _CallDefaults(config.token, settings.timeout))
        with _translated(call):
            yield Api(
                designs=design_service_pb2_grpc.DesignServiceStub(intercepted),
                datasets=dataset_service_pb2_grpc.DatasetServiceStub(intercepted),
                jobs=job_service_pb2_grpc.JobServiceStub(intercepted),
                users=user_service_pb2_grpc.UserServiceStub(intercepted),
            )
    finally:
        channel.close()


class _PageRequest(Protocol):
    page_size: int
    page_token: str


class _PageResponse(Protocol):
    next_page_token: str


Request = TypeVar("Request", bound=_PageRequest)
Response = TypeVar("Response", bound=_PageResponse)
Item = TypeVar("Item")


def list_all(
    rpc: Callable[[Request], Response],
    request: Request,
    items: Callable[[Response], Iterable[Item]],
    *,
    limit: int | None = None,
) -> list[Item]:
    """Call a List RPC page after page until the last page, or until `limit` items.

    Args:
        rpc: The List method of a stub.
        request: The first request; its `page_token` is set for the following pages.
        items: Picks the items out of one response.
        limit: Return at most this many items.

    Returns:
        The items of all pages, in order.

    Example:
        >>> list_all(api.jobs.ListJobs, job_service_pb2.ListJobsRequest(), lambda r: r.jobs)
    """
    if limit is not None:
        request.page_size = min(limit, _MAX_PAGE_SIZE)
    found: list[Item] = []
    while limit is None or len(found) < limit:
        response = rpc(request)
        found.extend(items(response))
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    return found[:limit]


def _open_channel(config: Config) -> grpc.Channel:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ]
    if config.tls is None:
        return grpc.insecure_channel(config.endpoint, options=options)
    if config.tls.server_name:
        options.append(("grpc.ssl_target_name_override", config.tls.server_name))
    try:
        credentials = config.tls.credentials()
    except OSError as error:
        raise InputError(f"{config.path}: cannot read the TLS files: {error}") from None
    return grpc.secure_channel(config.endpoint, credentials, options=options)


@contextmanager
def _translated(call: CallContext) -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as error:
        raise CliError(describe(error_details(error), call)) from None


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _CallDefaults(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
):
    """Adds the bearer token and the deadline to every call."""

    def __init__(self, token: str, timeout: float) -> None:
        self._metadata = ((md.AUTHORIZATION, f"Bearer {token}"),)
        self._timeout = timeout

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(
            method=details.method,
            timeout=self._timeout if details.timeout is None else details.timeout,
            metadata=(*(details.metadata or ()), *self._metadata),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
            compression=details.compression,
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, requests: Any
    ) -> Any:
        return continuation(self._details(details), requests)
