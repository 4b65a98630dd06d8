"""Fixtures of the control-plane integration tests: callers of the session's
control plane, each test with users of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from pymongo import MongoClient

from flame.compute.v1 import compute_pb2
from flame.compute.v1 import compute_service_pb2 as compute_pb
from tests.controlplane.helpers import CHANNEL_OPTIONS, Client, new_user, unique
from tests.support.controlplane import ADMIN, ControlPlane


@pytest.fixture(scope="session")
def api_channel(control_plane: ControlPlane) -> Iterator[grpc.Channel]:
    """One channel to the apiserver, shared by every caller."""
    with grpc.insecure_channel(control_plane.apiserver_address, options=CHANNEL_OPTIONS) as channel:
        yield channel


@pytest.fixture(scope="session")
def admin(control_plane: ControlPlane, api_channel: grpc.Channel) -> Client:
    return Client.with_token(api_channel, ADMIN, control_plane.admin_token)


@pytest.fixture
def make_user(admin: Client, api_channel: grpc.Channel) -> Callable[..., Client]:
    """Creates fresh users with unique names."""

    def make(prefix: str = "user", *, is_admin: bool = False) -> Client:
        return new_user(admin, api_channel, prefix, is_admin=is_admin)

    return make


@pytest.fixture
def alice(make_user: Callable[..., Client]) -> Client:
    return make_user("alice")


@pytest.fixture
def bob(make_user: Callable[..., Client]) -> Client:
    return make_user("bob")


@pytest.fixture(scope="session")
def plane_db(control_plane: ControlPlane, mongo_uri: str) -> Iterator[Any]:
    """The control plane's database, for what the API cannot show or do."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    try:
        yield client[control_plane.database]
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _show_server_logs_on_failure(
    request: pytest.FixtureRequest, control_plane: ControlPlane
) -> Iterator[None]:
    """Print the tail of the servers' logs when a test fails, to see why."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for name in ("controller", "apiserver", "notifier"):
            print(f"--- {name} ---\n" + "".join(getattr(control_plane, name).output[-30:]))


@pytest.fixture(scope="session")
def site(admin: Client) -> compute_pb2.Compute:
    """A compute serving a region of its own: private datasets need one for their realm."""
    compute = compute_pb2.Compute(id=unique("site"), region=f"default/{unique('region')}")
    request = compute_pb.RegisterComputeRequest(compute=compute, api_key=unique("compute-key"))
    return admin.computes.RegisterCompute(request).compute
