"""Authentication at the apiserver, and the controller's refusal of calls that
bypass it."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import grpc
import pytest

from flame.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from flame.controlplane import metadata as md
from flame.design.v1 import design_pb2
from flame.design.v1 import design_service_pb2 as design_pb
from flame.user.v1 import user_service_pb2 as user_pb
from tests.controlplane.helpers import (
    Client,
    Code,
    bearer,
    expect_refusal,
    new_design,
    refusal,
    role_code,
    unchanged,
    upload_messages,
)
from tests.support.controlplane import ControlPlane

pytestmark = pytest.mark.integration

LIST_DESIGNS = design_pb.ListDesignsRequest()


def _calls_of_every_kind(client: Client) -> list[object]:
    """A unary, a client-streaming and a server-streaming call: the apiserver
    forwards each kind with its own handler."""
    return [
        lambda: client.designs.ListDesigns(LIST_DESIGNS),
        lambda: client.designs.UploadCode(upload_messages("any", role_code("trainer"))),
        lambda: client.designs.DownloadCode(design_pb.DownloadCodeRequest(design_id="any")),
    ]


def test_a_call_without_a_token_is_refused(api_channel: grpc.Channel) -> None:
    anonymous = Client.over(api_channel, "nobody")
    for call in _calls_of_every_kind(anonymous):
        expect_refusal(call, Code.UNAUTHENTICATED, "TOKEN_MISSING")


def test_an_unknown_token_is_refused(api_channel: grpc.Channel) -> None:
    stranger = Client.with_token(api_channel, "nobody", "flm_not-a-real-token")
    for call in _calls_of_every_kind(stranger):
        expect_refusal(call, Code.UNAUTHENTICATED, "TOKEN_INVALID")


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "flm_token-without-scheme", "Token x"]
)
def test_a_malformed_authorization_header_is_refused(
    api_channel: grpc.Channel, header: str
) -> None:
    client = Client.over(api_channel, "nobody", [("authorization", header)])
    expect_refusal(
        lambda: client.designs.ListDesigns(LIST_DESIGNS), Code.UNAUTHENTICATED, "TOKEN_MALFORMED"
    )


def test_the_bearer_scheme_is_case_insensitive(
    api_channel: grpc.Channel, alice: Client, control_plane: ControlPlane
) -> None:
    token = alice.users.CreateApiToken(user_pb.CreateApiTokenRequest(description="lower")).token
    lower = Client.over(api_channel, alice.user_id, [("authorization", f"bearer {token}")])
    assert lower.users.GetUser(user_pb.GetUserRequest()).user.id == alice.user_id


def test_a_revoked_token_stops_working(api_channel: grpc.Channel, alice: Client) -> None:
    created = alice.users.CreateApiToken(user_pb.CreateApiTokenRequest(description="short-lived"))
    # Revoked before its first use, so the apiserver has never cached it.
    alice.users.DeleteApiToken(user_pb.DeleteApiTokenRequest(api_token_id=created.api_token.id))
    revoked = Client.with_token(api_channel, alice.user_id, created.token)
    expect_refusal(
        lambda: revoked.designs.ListDesigns(LIST_DESIGNS), Code.UNAUTHENTICATED, "TOKEN_INVALID"
    )
    listed = alice.users.ListApiTokens(user_pb.ListApiTokensRequest()).api_tokens
    assert created.api_token.id not in [token.id for token in listed]
    assert alice.users.GetUser(user_pb.GetUserRequest()).user.id == alice.user_id


def test_a_fresh_token_works_at_once(api_channel: grpc.Channel, alice: Client) -> None:
    created = alice.users.CreateApiToken(user_pb.CreateApiTokenRequest(description="laptop"))
    assert created.token and created.token != created.api_token.id
    second = Client.with_token(api_channel, alice.user_id, created.token)
    assert second.users.GetUser(user_pb.GetUserRequest()).user.id == alice.user_id


# --- the apiserver drops identity metadata sent by clients ------------------------


def test_forged_identity_metadata_is_dropped(
    api_channel: grpc.Channel, control_plane: ControlPlane, alice: Client, bob: Client
) -> None:
    bob_design = new_design(bob)
    forged = [
        (md.USER, bob.user_id),
        (md.ADMIN, "true"),
        (md.INTERNAL_KEY, control_plane.internal_key),
    ]
    token = alice.users.CreateApiToken(user_pb.CreateApiTokenRequest()).token
    posing = Client.over(api_channel, alice.user_id, [*bearer(token), *forged])
    assert posing.users.GetUser(user_pb.GetUserRequest()).user.id == alice.user_id
    expect_refusal(
        lambda: posing.users.ListUsers(user_pb.ListUsersRequest()),
        Code.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )
    expect_refusal(
        lambda: posing.designs.GetDesign(design_pb.GetDesignRequest(design_id=bob_design)),
        Code.NOT_FOUND,
        "DESIGN_NOT_FOUND",
    )
    assert bob_design not in [d.id for d in posing.designs.ListDesigns(LIST_DESIGNS).designs]
    with unchanged(bob):
        expect_refusal(
            lambda: posing.designs.DeleteDesign(
                design_pb.DeleteDesignRequest(design_id=bob_design, force=True)
            ),
            Code.NOT_FOUND,
            "DESIGN_NOT_FOUND",
        )


def test_forged_identity_without_a_token_is_refused(
    api_channel: grpc.Channel, control_plane: ControlPlane, alice: Client
) -> None:
    # Even the real internal key does not stand in for a token at the apiserver.
    forged = [
        (md.USER, alice.user_id),
        (md.ADMIN, "true"),
        (md.INTERNAL_KEY, control_plane.internal_key),
    ]
    posing = Client.over(api_channel, alice.user_id, forged)
    for call in _calls_of_every_kind(posing):
        expect_refusal(call, Code.UNAUTHENTICATED, "TOKEN_MISSING")


@pytest.mark.parametrize("key", [md.COMPUTE_KEY, md.TASK_KEY])
def test_agent_and_deployer_keys_do_not_open_user_methods(
    api_channel: grpc.Channel, key: str
) -> None:
    client = Client.over(api_channel, "nobody", [(key, "some-key")])
    expect_refusal(
        lambda: client.designs.ListDesigns(LIST_DESIGNS), Code.UNAUTHENTICATED, "TOKEN_MISSING"
    )
    expect_refusal(
        lambda: client.users.ListUsers(user_pb.ListUsersRequest()),
        Code.UNAUTHENTICATED,
        "TOKEN_MISSING",
    )


def test_the_apiserver_does_not_expose_the_auth_service(
    api_channel: grpc.Channel, control_plane: ControlPlane
) -> None:
    stub = auth_service_pb2_grpc.AuthServiceStub(api_channel)
    details = refusal(
        lambda: stub.AuthenticateToken(
            auth_service_pb2.AuthenticateTokenRequest(token=control_plane.admin_token), timeout=10
        )
    )
    assert details.code == Code.UNIMPLEMENTED


# --- the controller refuses calls that bypass the apiserver ------------------------


@pytest.fixture
def controller_channel(control_plane: ControlPlane) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(control_plane.controller_address) as channel:
        yield channel


def test_the_controller_refuses_calls_without_the_internal_key(
    controller_channel: grpc.Channel, control_plane: ControlPlane, alice: Client
) -> None:
    design_id = new_design(alice)
    token = alice.users.CreateApiToken(user_pb.CreateApiTokenRequest()).token
    attempts = [
        [(md.USER, alice.user_id)],
        [(md.USER, alice.user_id), (md.ADMIN, "true")],
        [(md.USER, alice.user_id), (md.INTERNAL_KEY, "a-guessed-key")],
        [*bearer(token)],
        [*bearer(token), (md.USER, alice.user_id)],
    ]
    delete = design_pb.DeleteDesignRequest(design_id=design_id, force=True)
    with unchanged(alice):
        for metadata in attempts:
            direct = Client.over(controller_channel, alice.user_id, metadata)
            calls = [partial(direct.designs.DeleteDesign, delete), *_calls_of_every_kind(direct)]
            for call in calls:
                assert refusal(call).code == Code.UNAUTHENTICATED, metadata
    auth = auth_service_pb2_grpc.AuthServiceStub(controller_channel)
    # Not even a token oracle is open without the key.
    details = refusal(
        lambda: auth.AuthenticateToken(
            auth_service_pb2.AuthenticateTokenRequest(token=token), timeout=10
        )
    )
    assert details.code == Code.UNAUTHENTICATED
    # The refusals above are the key's doing: with it, the same call is served.
    trusted = Client.over(
        controller_channel,
        alice.user_id,
        [(md.USER, alice.user_id), (md.INTERNAL_KEY, control_plane.internal_key)],
    )
    reply = trusted.designs.GetDesign(design_pb.GetDesignRequest(design_id=design_id))
    assert reply.design == design_pb2.Design(
        id=design_id,
        name=reply.design.name,
        owner=alice.user_id,
        create_time=reply.design.create_time,
        update_time=reply.design.update_time,
    )
