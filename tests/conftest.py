"""Fixtures shared by every test tier."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from tests.support.controlplane import ControlPlane, running_control_plane
from tests.support.mongo import secantus_server

Document = dict[str, Any]


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SecantusDB server for the whole run, with fresh storage."""
    with secantus_server(tmp_path_factory.mktemp("secantus") / "db") as uri:
        yield uri


@pytest.fixture
def database_name() -> str:
    """A database name no other test uses, so every test starts from empty state."""
    return f"flame_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def database(mongo_uri: str, database_name: str) -> AsyncIterator[AsyncDatabase[Document]]:
    """The test's own database on the shared SecantusDB server."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_uri, timeoutMS=10_000)
    yield client[database_name]
    await client.close()


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def control_plane(mongo_uri: str) -> Iterator[ControlPlane]:
    """A controller and an apiserver for the whole run, on their own database.
    Tests isolate themselves by creating their own users."""
    with running_control_plane(mongo_uri, f"flame_cp_{uuid.uuid4().hex[:8]}") as plane:
        yield plane


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[object]:
    """Keep each phase's report on the test item, for fixtures that report failures."""
    report = yield
    setattr(item, f"rep_{report.when}", report)  # type: ignore[attr-defined]
    return report
