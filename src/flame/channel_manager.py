"""The channels of one task: joining, finding them by name or function tag, leaving."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from types import TracebackType

from flame._dataplane_client import DataPlaneClient, before_thread_shutdown, connect
from flame.channel import Channel, Timeouts
from flame.config import Config
from flame.errors import ChannelNotFoundError, FlameSDKError
from flame.selector import create_selector

__all__ = ["ChannelManager", "channel_manager"]

_log = logging.getLogger(__name__)
_DEFAULT_TIMEOUTS = Timeouts()


class ChannelManager:
    """Joins the channels of a task configuration and hands them out.

    It talks to the ChannelService of the task's flamelet over the Unix socket named by
    `FLAME_DATAPLANE_SOCKET`. Without that variable (a role started by hand, with no
    control plane) it starts the flamelet's bridge in this process first, on a
    temporary socket, and talks to it the same way.

    Unlike the original, it is an ordinary object, not a process-wide singleton:
    `channel_manager(config)` returns a shared one for code written the original way.
    `cleanup()` (or leaving a `with` block, or the end of the process) leaves every
    joined channel after its pending messages are sent.

    Args:
        config: The task configuration.
        socket_path: The ChannelService socket; default `$FLAME_DATAPLANE_SOCKET`, else
            a standalone data plane.
        timeouts: Default deadlines of the blocking channel calls.

    Raises:
        DataPlaneError: The data plane cannot be reached or started.

    Example:
        >>> config = Config("config.json")                     # doctest: +SKIP
        >>> with ChannelManager(config) as manager:             # doctest: +SKIP
        ...     manager.join_all()
        ...     channel = manager.get_by_tag("fetch")
        ...     channel.await_join(timeout=60)
        ...     message, _ = channel.recv(channel.one_end())
    """

    def __init__(
        self,
        config: Config,
        *,
        socket_path: str | os.PathLike[str] | None = None,
        timeouts: Timeouts = _DEFAULT_TIMEOUTS,
    ) -> None:
        self._config = config
        self._timeouts = timeouts
        self._client = connect(config.raw, socket_path=socket_path, call_timeout=timeouts.call)
        self._channels: dict[str, Channel] = {}
        self._lock = threading.Lock()
        # Runs at cleanup(), on garbage collection or at interpreter exit, whichever
        # comes first; it holds the client and channels, not this object.
        self._finalizer = weakref.finalize(self, _release, self._client, self._channels)
        if self._client.in_process:
            before_thread_shutdown(self._finalizer)

    def __enter__(self) -> ChannelManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cleanup()

    @property
    def closed(self) -> bool:
        """True once `cleanup` ran."""
        return not self._finalizer.alive

    def join_all(self) -> None:
        """Join every channel of the configuration, in configuration order."""
        for name in self._config.channels:
            self.join(name)

    def join(self, name: str) -> Channel:
        """Join a channel of the configuration; joining it again returns the same one.

        Each channel gets its own selector of the configured sort.

        Raises:
            ChannelNotFoundError: `name` is not a channel of the configuration.
            ConfigError: The configured selector cannot be built.
        """
        with self._lock:
            channel = self._channels.get(name)
            if channel is None:
                channel = self._channels[name] = self._open(name)
            return channel

    def leave(self, name: str) -> None:
        """Leave a joined channel once its pending messages are sent; no-op if not joined."""
        with self._lock:
            if self._channels.pop(name, None) is not None:
                self._client.leave(name)

    def get(self, name: str) -> Channel | None:
        """The joined channel `name`, or None."""
        with self._lock:
            return self._channels.get(name)

    def get_by_tag(self, tag: str) -> Channel | None:
        """The joined channel this role performs function `tag` on, or None."""
        name = self._config.func_tag_map.get(tag)
        return None if name is None else self.get(name)

    def is_joined(self, name: str) -> bool:
        """True if channel `name` is joined."""
        return self.get(name) is not None

    def cleanup(self) -> None:
        """Leave every joined channel and close the connection; later calls do nothing."""
        self._finalizer()

    def _open(self, name: str) -> Channel:
        channel_config = self._config.channels.get(name)
        if channel_config is None:
            raise ChannelNotFoundError(name, "is not in the task configuration")
        selector = create_selector(self._config.selector.sort, self._config.selector.kwargs)
        self._client.join(name)
        return Channel(
            self._client,
            job_id=self._config.job.id,
            name=name,
            me=self._config.role,
            other=channel_config.other_role(self._config.role),
            group=self._config.group_of(name),
            task_id=self._config.task_id,
            selector=selector,
            timeouts=self._timeouts,
        )


def _release(client: DataPlaneClient, channels: dict[str, Channel]) -> None:
    for name in list(channels):
        try:
            client.leave(name)
        except FlameSDKError as exc:
            # Shutting down: the other channels must still be left.
            _log.warning("could not leave channel %r: %s", name, exc)
    channels.clear()
    client.close()


_shared: dict[tuple[str, str], ChannelManager] = {}
_shared_lock = threading.Lock()


def channel_manager(config: Config) -> ChannelManager:
    """The shared `ChannelManager` of a task, made on first use (the original style).

    Calls with configurations of the same job and task return the same manager until
    it is cleaned up.

    Example:
        >>> manager = channel_manager(Config("config.json"))  # doctest: +SKIP
        >>> manager.join_all()                                  # doctest: +SKIP
    """
    key = (config.job.id, config.task_id)
    with _shared_lock:
        manager = _shared.get(key)
        if manager is None or manager.closed:
            manager = _shared[key] = ChannelManager(config)
        return manager
