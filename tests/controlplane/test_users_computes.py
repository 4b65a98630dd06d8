"""Users, API tokens and computes: who may manage them, CRUD and pagination."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from flame.compute.v1 import compute_pb2
from flame.compute.v1 import compute_service_pb2 as compute_pb
from flame.data.v1 import dataset_pb2
from flame.data.v1 import dataset_service_pb2 as data_pb
from flame.design.v1 import design_service_pb2 as design_pb
from flame.rpc.errors import error_details
from flame.user.v1 import user_pb2
from flame.user.v1 import user_service_pb2 as pb
from tests.controlplane.helpers import (
    Client,
    Code,
    check_pagination,
    collect,
    expect_foreign_token,
    expect_refusal,
    new_design,
    unique,
)
from tests.support.controlplane import ADMIN

pytestmark = pytest.mark.integration


def _create_user(admin: Client, user_id: str, *, is_admin: bool = False) -> pb.CreateUserResponse:
    return admin.users.CreateUser(
        pb.CreateUserRequest(user=user_pb2.User(id=user_id, is_admin=is_admin))
    )


def _whoami(client: Client) -> user_pb2.User:
    return client.users.GetUser(pb.GetUserRequest()).user


# --- users ---------------------------------------------------------------------------


def test_admins_create_users_with_a_first_token(admin: Client, api_channel: grpc.Channel) -> None:
    user_id = unique("carol")
    created = _create_user(admin, user_id)
    assert created.user.id == user_id and not created.user.is_admin
    assert created.user.create_time.seconds > 0 and created.token
    carol = Client.with_token(api_channel, user_id, created.token)
    assert _whoami(carol) == created.user
    tokens = carol.users.ListApiTokens(pb.ListApiTokensRequest()).api_tokens
    assert [token.user_id for token in tokens] == [user_id]

    details = expect_refusal(
        lambda: _create_user(admin, user_id), Code.ALREADY_EXISTS, "USER_ALREADY_EXISTS"
    )
    assert details.metadata == {"user": user_id}
    for bad_id in ["", "Carol", "-carol", "carol smith", "c" * 64]:
        expect_refusal(
            lambda bad_id=bad_id: _create_user(admin, bad_id),
            Code.INVALID_ARGUMENT,
            "USER_INVALID",
            "user.id",
        )


def test_an_admin_user_may_manage_users(admin: Client, api_channel: grpc.Channel) -> None:
    created = _create_user(admin, unique("root"), is_admin=True)
    second_admin = Client.with_token(api_channel, created.user.id, created.token)
    user_id = unique("dave")
    assert _create_user(second_admin, user_id).user.id == user_id
    assert second_admin.users.GetUser(pb.GetUserRequest(user_id=user_id)).user.id == user_id


def test_users_who_are_not_admins_manage_no_users(alice: Client, bob: Client) -> None:
    calls = [
        lambda: _create_user(alice, unique("eve")),
        lambda: _create_user(alice, unique("eve"), is_admin=True),
        lambda: alice.users.ListUsers(pb.ListUsersRequest()),
        lambda: alice.users.DeleteUser(pb.DeleteUserRequest(user_id=bob.user_id)),
        lambda: alice.users.GetUser(pb.GetUserRequest(user_id=bob.user_id)),
    ]
    for call in calls:
        expect_refusal(call, Code.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert _whoami(bob).id == bob.user_id
    me = alice.users.GetUser(pb.GetUserRequest(user_id=alice.user_id)).user
    assert me == _whoami(alice) and not me.is_admin


def test_a_deleted_users_tokens_stop_working(admin: Client, api_channel: grpc.Channel) -> None:
    created = _create_user(admin, unique("frank"))
    admin.users.DeleteUser(pb.DeleteUserRequest(user_id=created.user.id))
    # Deleted before its first use, so the apiserver has never cached the token.
    gone = Client.with_token(api_channel, created.user.id, created.token)
    expect_refusal(lambda: _whoami(gone), Code.UNAUTHENTICATED, "TOKEN_INVALID")
    for call in (
        lambda: admin.users.GetUser(pb.GetUserRequest(user_id=created.user.id)),
        lambda: admin.users.DeleteUser(pb.DeleteUserRequest(user_id=created.user.id)),
    ):
        expect_refusal(call, Code.NOT_FOUND, "USER_NOT_FOUND")
    users = collect(admin.users.ListUsers, pb.ListUsersRequest(), "users", page_size=1000)
    assert created.user.id not in [user.id for user in users]


def test_a_new_user_never_inherits_a_deleted_users_resources(
    admin: Client, api_channel: grpc.Channel, site: compute_pb2.Compute
) -> None:
    created = _create_user(admin, unique("gina"))
    gina = Client.with_token(api_channel, created.user.id, created.token)
    design_id = new_design(gina)
    private = dataset_pb2.Dataset(url="s3://bucket/gina", data_format="npz", realm=site.id)
    dataset_id = gina.datasets.CreateDataset(
        data_pb.CreateDatasetRequest(dataset=private)
    ).dataset.id
    admin.users.DeleteUser(pb.DeleteUserRequest(user_id=gina.user_id))
    try:
        again = _create_user(admin, gina.user_id)
    except grpc.RpcError as error:
        # Refusing to hand out the id again is one way to keep the old resources apart.
        assert error_details(error).reason == "USER_ALREADY_EXISTS"
        return
    newcomer = Client.with_token(api_channel, gina.user_id, again.token)
    assert not newcomer.designs.ListDesigns(design_pb.ListDesignsRequest()).designs
    assert not newcomer.datasets.ListDatasets(data_pb.ListDatasetsRequest()).datasets
    expect_refusal(
        lambda: newcomer.designs.GetDesign(design_pb.GetDesignRequest(design_id=design_id)),
        Code.NOT_FOUND,
        "DESIGN_NOT_FOUND",
    )
    expect_refusal(
        lambda: newcomer.datasets.GetDataset(data_pb.GetDatasetRequest(dataset_id=dataset_id)),
        Code.NOT_FOUND,
        "DATASET_NOT_FOUND",
    )


def test_an_admin_cannot_delete_itself(admin: Client) -> None:
    expect_refusal(
        lambda: admin.users.DeleteUser(pb.DeleteUserRequest(user_id=ADMIN)),
        Code.FAILED_PRECONDITION,
        "USER_IS_CALLER",
    )
    assert _whoami(admin).is_admin


def test_list_users_pages_through_every_user_once(
    admin: Client, make_user: Callable[..., Client]
) -> None:
    ids = sorted(make_user("listed").user_id for _ in range(5))
    token = check_pagination(
        admin.users.ListUsers, pb.ListUsersRequest(), "users", lambda u: u.id, ids, exclusive=False
    )
    expect_foreign_token(admin.computes.ListComputes, compute_pb.ListComputesRequest(), token)


# --- API tokens ----------------------------------------------------------------------


def test_api_tokens_are_listed_without_secrets_and_revoked_by_their_owner(
    alice: Client, bob: Client
) -> None:
    created = [
        alice.users.CreateApiToken(pb.CreateApiTokenRequest(description=f"machine {n}"))
        for n in range(5)
    ]
    for reply in created:
        assert reply.api_token.user_id == alice.user_id and reply.token.startswith("flm_")
        assert reply.api_token.create_time.seconds > 0
    listed = alice.users.ListApiTokens(pb.ListApiTokensRequest(page_size=1000)).api_tokens
    expected = [token.id for token in listed]
    assert {reply.api_token.id for reply in created} < set(expected)
    for token in listed:
        assert all(reply.token not in str(token) for reply in created)

    request = pb.ListApiTokensRequest()
    token = check_pagination(
        alice.users.ListApiTokens, request, "api_tokens", lambda t: t.id, expected
    )
    expect_foreign_token(bob.users.ListApiTokens, request, token)

    # Bob cannot revoke alice's token: it is not found among his.
    victim = created[0].api_token.id
    expect_refusal(
        lambda: bob.users.DeleteApiToken(pb.DeleteApiTokenRequest(api_token_id=victim)),
        Code.NOT_FOUND,
        "TOKEN_NOT_FOUND",
    )
    alice.users.DeleteApiToken(pb.DeleteApiTokenRequest(api_token_id=victim))
    remaining = alice.users.ListApiTokens(pb.ListApiTokensRequest(page_size=1000)).api_tokens
    assert victim not in [t.id for t in remaining] and len(remaining) == len(listed) - 1
    expect_refusal(
        lambda: alice.users.DeleteApiToken(pb.DeleteApiTokenRequest(api_token_id=victim)),
        Code.NOT_FOUND,
        "TOKEN_NOT_FOUND",
    )


# --- computes ------------------------------------------------------------------------


def _compute(compute_id: str | None = None, **fields: str) -> compute_pb2.Compute:
    return compute_pb2.Compute(
        id=compute_id or unique("site"), region=f"default/{unique('region')}", **fields
    )


def _register(
    client: Client, compute: compute_pb2.Compute, key: str
) -> compute_pb.RegisterComputeResponse:
    return client.computes.RegisterCompute(
        compute_pb.RegisterComputeRequest(compute=compute, api_key=key)
    )


def test_compute_lifecycle(admin: Client, alice: Client) -> None:
    key = unique("api-key-long-enough")
    compute = _compute(admin_id=ADMIN, platform="k8s")
    registered = _register(admin, compute, key)
    assert registered.created and registered.compute.state == compute_pb2.Compute.STATE_UP
    stored = registered.compute
    assert (stored.id, stored.region, stored.admin_id, stored.platform) == (
        compute.id,
        compute.region,
        ADMIN,
        "k8s",
    )
    assert stored.register_time.seconds > 0

    again = _register(admin, compute, key)
    assert not again.created and again.compute == stored
    details = expect_refusal(
        lambda: _register(admin, compute, unique("another-api-key")),
        Code.ALREADY_EXISTS,
        "COMPUTE_ALREADY_EXISTS",
    )
    assert details.metadata == {"compute": compute.id}

    # Every user reads computes; only admins change them.
    assert (
        alice.computes.GetCompute(compute_pb.GetComputeRequest(compute_id=compute.id)).compute
        == stored
    )
    for call in (
        lambda: _register(alice, _compute(), unique("api-key-long-enough")),
        lambda: alice.computes.DeleteCompute(
            compute_pb.DeleteComputeRequest(compute_id=compute.id)
        ),
    ):
        expect_refusal(call, Code.PERMISSION_DENIED, "PERMISSION_DENIED")

    admin.computes.DeleteCompute(compute_pb.DeleteComputeRequest(compute_id=compute.id))
    for call in (
        lambda: alice.computes.GetCompute(compute_pb.GetComputeRequest(compute_id=compute.id)),
        lambda: admin.computes.DeleteCompute(
            compute_pb.DeleteComputeRequest(compute_id=compute.id)
        ),
    ):
        expect_refusal(call, Code.NOT_FOUND, "COMPUTE_NOT_FOUND")


def test_invalid_computes_are_refused(admin: Client) -> None:
    details = expect_refusal(
        lambda: _register(admin, compute_pb2.Compute(id="Bad Id"), "short"),
        Code.INVALID_ARGUMENT,
        "COMPUTE_INVALID",
        "compute.id",
        "compute.region",
        "api_key",
    )
    assert len(details.violations) == 3
    expect_refusal(
        lambda: admin.computes.GetCompute(compute_pb.GetComputeRequest(compute_id="bad-id")),
        Code.NOT_FOUND,
        "COMPUTE_NOT_FOUND",
    )


def test_list_computes_pages_through_every_compute_once(admin: Client, alice: Client) -> None:
    ids = sorted(
        _register(admin, _compute(), unique("api-key-long-enough")).compute.id for _ in range(5)
    )
    token = check_pagination(
        alice.computes.ListComputes,
        compute_pb.ListComputesRequest(),
        "computes",
        lambda c: c.id,
        ids,
        exclusive=False,
    )
    expect_foreign_token(admin.users.ListUsers, pb.ListUsersRequest(), token)


def test_a_token_records_when_it_was_used(alice: Client, api_channel: grpc.Channel) -> None:
    created = alice.users.CreateApiToken(pb.CreateApiTokenRequest(description="ci"))

    def listed() -> user_pb2.ApiToken:
        tokens = alice.users.ListApiTokens(pb.ListApiTokensRequest(page_size=1000)).api_tokens
        return next(token for token in tokens if token.id == created.api_token.id)

    assert not listed().HasField("last_used_time")
    _whoami(Client.with_token(api_channel, alice.user_id, created.token))
    used = listed().last_used_time.ToDatetime()
    assert used >= created.api_token.create_time.ToDatetime()
