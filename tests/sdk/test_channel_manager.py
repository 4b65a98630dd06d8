"""ChannelManager: joining, lookups, cleanup, and how it finds its data plane."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import flame.flamelet.dataplane
from flame import channel_manager as channel_manager_module
from flame._dataplane_client import SOCKET_ENV
from flame.channel import Timeouts
from flame.channel_manager import ChannelManager, channel_manager
from flame.config import Config
from flame.errors import ChannelNotFoundError, ConfigError, DataPlaneError
from flame.selector import RandomSelector
from tests.sdk.conftest import CHANNEL, FAST, PEERS, hier_task
from tests.sdk.fake_dataplane import FakeChannelService, FakeDataPlane, serve


@pytest.fixture
def middle() -> Config:
    """A hier_mnist middle aggregator: `global-channel` up, `param-channel` down."""
    return Config.from_dict(hier_task(1))


@pytest.fixture
def middle_plane() -> Any:
    plane = FakeDataPlane(["global-channel", CHANNEL], other_role="trainer")
    yield plane
    plane.stop()


def test_join_all_in_config_order_and_lookups(middle: Config, middle_plane: FakeDataPlane) -> None:
    with ChannelManager(middle, socket_path=middle_plane.socket_path, timeouts=FAST) as manager:
        manager.join_all()

        assert middle_plane.service.joined == ["global-channel", CHANNEL]
        assert manager.get_by_tag("fetch") is manager.get("global-channel")
        assert manager.get_by_tag("aggregate") is manager.join(CHANNEL)
        assert manager.get_by_tag("ring_allreduce") is None
        upstream = manager.get("global-channel")
        assert upstream is not None and upstream.other_role() == "top-aggregator"
        assert manager.is_joined(CHANNEL) and middle_plane.service.joined.count(CHANNEL) == 1


def test_join_is_lazy_and_leave_forgets(manager: ChannelManager, dataplane: FakeDataPlane) -> None:
    assert manager.get(CHANNEL) is None and manager.get_by_tag("fetch") is None

    manager.join(CHANNEL)
    manager.leave(CHANNEL)
    manager.leave(CHANNEL)

    assert dataplane.service.left == [CHANNEL]
    assert not manager.is_joined(CHANNEL)


def test_unknown_channel(manager: ChannelManager) -> None:
    with pytest.raises(ChannelNotFoundError, match="not in the task configuration"):
        manager.join("no-such-channel")


def test_each_channel_gets_its_own_configured_selector(
    middle_plane: FakeDataPlane,
) -> None:
    task = hier_task(1) | {"selector": {"sort": "random", "kwargs": {"k": 1}}}
    with ChannelManager(Config.from_dict(task), socket_path=middle_plane.socket_path) as manager:
        manager.join_all()
        selectors = [manager.join(name)._selector for name in ("global-channel", CHANNEL)]

    assert all(isinstance(selector, RandomSelector) for selector in selectors)
    assert selectors[0] is not selectors[1]


def test_a_bad_selector_fails_the_join(middle_plane: FakeDataPlane) -> None:
    task = hier_task(1) | {"selector": {"sort": "oort", "kwargs": {}}}
    config = Config.from_dict(task)
    with (
        ChannelManager(config, socket_path=middle_plane.socket_path) as manager,
        pytest.raises(ConfigError, match=r"selector\.sort"),
    ):
        manager.join(CHANNEL)
    assert middle_plane.service.joined == []


def test_cleanup_leaves_every_channel_once(
    trainer_config: Config, dataplane: FakeDataPlane
) -> None:
    manager = ChannelManager(trainer_config, socket_path=dataplane.socket_path, timeouts=FAST)
    manager.join_all()

    manager.cleanup()
    manager.cleanup()

    assert manager.closed and dataplane.service.left == [CHANNEL]


def test_the_socket_comes_from_the_environment(
    trainer_config: Config, dataplane: FakeDataPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SOCKET_ENV, str(dataplane.socket_path))
    for peer in PEERS:
        dataplane.add_end(CHANNEL, peer)

    with ChannelManager(trainer_config, timeouts=FAST) as manager:
        assert manager.join(CHANNEL).all_ends() == list(PEERS)


def test_nothing_on_the_socket(trainer_config: Config, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DataPlaneError, match="no ChannelService answers on unix:"):
        ChannelManager(
            trainer_config, socket_path=tmp_path / "none.sock", timeouts=Timeouts(call=0.3)
        )
    assert time.monotonic() - started < 5


def test_channel_manager_shares_one_manager_per_task(
    trainer_config: Config, dataplane: FakeDataPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SOCKET_ENV, str(dataplane.socket_path))
    monkeypatch.setattr(channel_manager_module, "_shared", {})

    first = channel_manager(trainer_config)
    assert channel_manager(Config.from_dict(dict(trainer_config.raw))) is first
    first.cleanup()
    second = channel_manager(trainer_config)

    assert second is not first and not second.closed
    second.cleanup()


class _FakeBridge:
    """`start_bridge` of the standalone mode, serving a fake on the socket asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], Path]] = []
        self.stopped = False

    async def __call__(self, config: dict[str, Any], *, socket_path: Path) -> Any:
        self.calls.append((config, socket_path))
        server = await serve(FakeChannelService([CHANNEL]), socket_path)
        bridge = self

        class Plane:
            socket_path = str(server.host.removeprefix("unix:"))

            async def stop(self) -> None:
                await server.stop()
                bridge.stopped = True

        return Plane()


def test_standalone_mode_runs_the_bridge_in_process(
    trainer_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SOCKET_ENV, raising=False)
    bridge = _FakeBridge()
    monkeypatch.setattr(flame.flamelet.dataplane, "start_bridge", bridge)

    with ChannelManager(trainer_config, timeouts=FAST) as manager:
        manager.join_all()
        ((config, socket_path),) = bridge.calls
        assert config == dict(trainer_config.raw) and socket_path.name == "channel.sock"
        assert "flame-dataplane" in [thread.name for thread in threading.enumerate()]

    assert bridge.stopped and not socket_path.parent.exists()
    assert "flame-dataplane" not in [thread.name for thread in threading.enumerate()]


def test_standalone_start_failure(trainer_config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(config: dict[str, Any], *, socket_path: Path) -> Any:
        raise ValueError("taskid is required")

    monkeypatch.delenv(SOCKET_ENV, raising=False)
    monkeypatch.setattr(flame.flamelet.dataplane, "start_bridge", broken)

    with pytest.raises(DataPlaneError, match=r"standalone data plane did not start.*taskid"):
        ChannelManager(trainer_config, timeouts=FAST)
