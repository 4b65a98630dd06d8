"""The shared server runtime: health, reflection, domain errors, TLS and mutual TLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flame.design.v1 import design_service_pb2, design_service_pb2_grpc
from flame.notify.v1 import notify_service_pb2, notify_service_pb2_grpc
from flame.rpc import server as rpc_server
from flame.rpc.certs import CertificateAuthority
from flame.rpc.client import open_channel
from flame.rpc.errors import FieldViolation, InvalidArgument, NotFound, error_details
from flame.rpc.server import RunningServer, ServerOptions, bind, bind_serialized, start_server
from flame.rpc.tls import ClientTls, ServerTls

NOTIFY = notify_service_pb2.DESCRIPTOR.services_by_name["NotifyService"]
DESIGNS = design_service_pb2.DESCRIPTOR.services_by_name["DesignService"]


class FailingNotifier(notify_service_pb2_grpc.NotifyServiceServicer):
    """Raises domain errors so the test sees how they reach clients."""

    async def AckEvents(self, request: Any, context: Any) -> Any:
        raise InvalidArgument(
            "CURSOR_INVALID",
            "cursor must be positive",
            metadata={"cursor": str(request.cursor)},
            violations=[FieldViolation("cursor", "must be positive")],
        )

    async def SubscribeEvents(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield notify_service_pb2.SubscribeEventsResponse(
            heartbeat=notify_service_pb2.Heartbeat(last_cursor=7)
        )
        raise NotFound("SUBSCRIBER_UNKNOWN", f"no subscriber {request.subscriber}")


class WritingNotifier(FailingNotifier):
    """Streams with `context.write` instead of yielding."""

    async def SubscribeEvents(self, request: Any, context: Any) -> None:  # type: ignore[override]
        await context.write(
            notify_service_pb2.SubscribeEventsResponse(
                heartbeat=notify_service_pb2.Heartbeat(last_cursor=7)
            )
        )
        raise NotFound("SUBSCRIBER_UNKNOWN", f"no subscriber {request.subscriber}")


async def serve(options: ServerOptions, servicer: FailingNotifier | None = None) -> RunningServer:
    service = bind(
        NOTIFY,
        notify_service_pb2_grpc.add_NotifyServiceServicer_to_server,
        servicer or FailingNotifier(),
    )
    return await start_server([service], options)


@pytest.fixture
async def plaintext_server() -> AsyncIterator[RunningServer]:
    running = await serve(ServerOptions())
    yield running
    await running.stop()


async def test_health_reports_serving_for_the_server_and_each_service(
    plaintext_server: RunningServer,
) -> None:
    async with open_channel(plaintext_server.address, tls=None) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", NOTIFY.full_name):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(plaintext_server: RunningServer) -> None:
    async with open_channel(plaintext_server.address, tls=None) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in stub.ServerReflectionInfo(iter([request]), timeout=5):
            names = {service.name for service in reply.list_services_response.service}
            break
    assert names == {
        NOTIFY.full_name,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_domain_error_reaches_the_client_with_reason_and_violations(
    plaintext_server: RunningServer,
) -> None:
    async with open_channel(plaintext_server.address, tls=None) as channel:
        stub = notify_service_pb2_grpc.NotifyServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.AckEvents(notify_service_pb2.AckEventsRequest(cursor=-1), timeout=5)
    details = error_details(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "CURSOR_INVALID"
    assert details.metadata == {"cursor": "-1"}
    assert details.violations == [FieldViolation("cursor", "must be positive")]


@pytest.mark.parametrize("servicer", [FailingNotifier, WritingNotifier])
async def test_domain_error_ends_a_server_stream_after_its_messages(
    servicer: type[FailingNotifier],
) -> None:
    running = await serve(ServerOptions(), servicer())
    try:
        await check_stream_ends_with_domain_error(running)
    finally:
        await running.stop()


async def check_stream_ends_with_domain_error(server: RunningServer) -> None:
    async with open_channel(server.address, tls=None) as channel:
        stub = notify_service_pb2_grpc.NotifyServiceStub(channel)
        call = stub.SubscribeEvents(
            notify_service_pb2.SubscribeEventsRequest(subscriber="task/x"), timeout=5
        )
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for message in call:
                received.append(message)
    assert [m.heartbeat.last_cursor for m in received] == [7]
    assert error_details(raised.value).reason == "SUBSCRIBER_UNKNOWN"
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unimplemented_rpc_answers_unimplemented(plaintext_server: RunningServer) -> None:
    async with open_channel(plaintext_server.address, tls=None) as channel:
        stub = notify_service_pb2_grpc.NotifyServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.PublishEvent(notify_service_pb2.PublishEventRequest(), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


class RefusingUploads(design_service_pb2_grpc.DesignServiceServicer):
    """Refuses every upload on its first message, before the client has sent the rest."""

    async def UploadCode(self, request_iterator: Any, context: Any) -> Any:
        async for _ in request_iterator:
            raise InvalidArgument("CODE_INVALID", "the stream must open with its metadata")


@pytest.fixture
async def upload_refuser() -> AsyncIterator[RunningServer]:
    service = bind(
        DESIGNS, design_service_pb2_grpc.add_DesignServiceServicer_to_server, RefusingUploads()
    )
    running = await start_server([service], ServerOptions())
    yield running
    await running.stop()


def upload_chunks(count: int) -> list[design_service_pb2.UploadCodeRequest]:
    return [design_service_pb2.UploadCodeRequest(chunk=bytes(1000)) for _ in range(count)]


async def test_a_client_stream_refused_early_keeps_its_status(
    upload_refuser: RunningServer,
) -> None:
    # Without reading the rest of the stream first, a grpc.aio client still writing
    # reports INTERNAL for about one refused call in a hundred.
    codes = []
    async with open_channel(upload_refuser.address, tls=None) as channel:
        stub = design_service_pb2_grpc.DesignServiceStub(channel)
        for _ in range(300):
            try:
                await stub.UploadCode(iter(upload_chunks(5)), timeout=5)
            except grpc.aio.AioRpcError as error:
                codes.append((error.code(), error_details(error).reason))
    assert set(codes) == {(grpc.StatusCode.INVALID_ARGUMENT, "CODE_INVALID")}
    assert len(codes) == 300


async def test_a_refused_client_stream_that_never_ends_gets_its_status_after_a_while(
    upload_refuser: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rpc_server, "_DRAIN_SECONDS", 0.3)
    async with open_channel(upload_refuser.address, tls=None) as channel:
        stub = design_service_pb2_grpc.DesignServiceStub(channel)
        call = stub.UploadCode(timeout=10)
        await call.write(upload_chunks(1)[0])  # the stream stays open for writing
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await asyncio.wait_for(call, timeout=2)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def health_status(address: str, tls: ClientTls) -> int:
    async with open_channel(address, tls=tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(reply.status)


async def test_tls_connection_succeeds_with_the_ca(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    server_cert = ca.issue("server")
    running = await serve(ServerOptions(tls=ServerTls(server_cert.cert_file, server_cert.key_file)))
    try:
        status = await health_status(running.address, ClientTls(ca_file=ca.cert_file))
        assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await running.stop()


async def test_tls_refuses_a_client_that_does_not_trust_the_server(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    stranger = CertificateAuthority(tmp_path / "other")
    server_cert = ca.issue("server")
    running = await serve(ServerOptions(tls=ServerTls(server_cert.cert_file, server_cert.key_file)))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health_status(running.address, ClientTls(ca_file=stranger.cert_file))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop()


async def test_mutual_tls_accepts_a_client_certificate_and_refuses_none(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    server_cert = ca.issue("server")
    client_cert = ca.issue("flamectl", client=True)
    tls = ServerTls(server_cert.cert_file, server_cert.key_file, client_ca_file=ca.cert_file)
    running = await serve(ServerOptions(tls=tls))
    try:
        with_cert = ClientTls(ca.cert_file, client_cert.cert_file, client_cert.key_file)
        assert await health_status(running.address, with_cert) == (
            health_pb2.HealthCheckResponse.SERVING
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health_status(running.address, ClientTls(ca_file=ca.cert_file))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop()


def test_a_serialized_binding_must_name_methods_of_its_service() -> None:
    with pytest.raises(ValueError, match="NotifyService has no method Publish"):
        bind_serialized(NOTIFY, FailingNotifier(), responses={"Publish"})
