"""The bridge: a task's channels, joined on demand, each on its backend's transport."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

from flame.flamelet.dataplane import errors
from flame.flamelet.dataplane.channel import Channel
from flame.flamelet.dataplane.config import ChannelSpec, TaskConfig
from flame.flamelet.dataplane.settings import TransferLimits
from flame.flamelet.dataplane.transport import Endpoint, TransportFactory

__all__ = ["Bridge", "ByteBudget"]

_log = logging.getLogger(__name__)


class ByteBudget:
    """Bytes of messages taken for delivery; `acquire` waits while too many are.

    A request larger than the limit passes when nothing else is held, so that any
    message within the size limit can be sent.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._freed = asyncio.Event()

    @property
    def used(self) -> int:
        """Bytes held now."""
        return self._used

    async def acquire(self, size: int) -> None:
        """Hold `size` bytes, once they fit; the caller's deadline bounds the wait."""
        while self._used and self._used + size > self._limit:
            self._freed.clear()
            await self._freed.wait()
        self._used += size

    def release(self, size: int) -> None:
        """Give back `size` bytes."""
        self._used -= size
        self._freed.set()


class Bridge:
    """The channels of one task.

    Args:
        config: The task's identity and channels.
        transports: A transport factory per backend sort (`mqtt`, `p2p`).
        limits: Transfer sizes and timings.
        shared_folder: Where messages pass to and from the role code as files, if
            anywhere (see `flame.wire.shared`).
    """

    def __init__(
        self,
        config: TaskConfig,
        *,
        transports: Mapping[str, TransportFactory],
        limits: TransferLimits,
        shared_folder: Path | None = None,
    ) -> None:
        self.config = config
        self.limits = limits
        self.shared_folder = shared_folder
        self.budget = ByteBudget(limits.outbox_bytes)
        self._transports = dict(transports)
        self._channels: dict[str, Channel] = {}
        self._joining: dict[str, asyncio.Lock] = {}

    async def join(self, name: str) -> Channel:
        """Join channel `name`, or return it if joined.

        Raises:
            FlameError: CHANNEL_NOT_FOUND, BACKEND_UNSUPPORTED or BROKER_UNAVAILABLE.
        """
        spec = self._spec(name)
        async with self._joining.setdefault(name, asyncio.Lock()):
            channel = self._channels.get(name)
            if channel is None:
                channel = await self._open(spec)
                self._channels[name] = channel
            return channel

    def joined(self, name: str) -> Channel:
        """The joined channel `name`.

        Raises:
            FlameError: CHANNEL_NOT_FOUND or CHANNEL_NOT_JOINED.
        """
        self._spec(name)
        channel = self._channels.get(name)
        if channel is None:
            raise errors.channel_not_joined(name)
        return channel

    async def leave(self, name: str, *, timeout: float | None = None) -> None:
        """Leave channel `name` once its pending messages are delivered.

        Args:
            name: The channel.
            timeout: Seconds to wait for the delivery; the limits' `leave_timeout`
                when None.

        Raises:
            FlameError: CHANNEL_NOT_FOUND or CHANNEL_NOT_JOINED.
        """
        channel = self.joined(name)
        # A join waits for the leave: the same MQTT client id must not connect twice.
        async with self._joining.setdefault(name, asyncio.Lock()):
            if self._channels.get(name) is not channel:
                return  # Another leave was first.
            del self._channels[name]
            await channel.leave(self.limits.leave_timeout if timeout is None else timeout)

    async def close(self) -> None:
        """Leave every joined channel, delivering what is pending first."""
        await asyncio.gather(*(self.leave(name) for name in list(self._channels)))

    async def abort(self) -> None:
        """Drop every channel at once, as if the process died."""
        channels = list(self._channels.values())
        self._channels.clear()
        await asyncio.gather(*(channel.abort() for channel in channels))

    def _spec(self, name: str) -> ChannelSpec:
        spec = self.config.channels.get(name)
        if spec is None:
            raise errors.channel_not_found(name)
        return spec

    async def _open(self, spec: ChannelSpec) -> Channel:
        transports = self._transports.get(spec.backend)
        if transports is None:
            raise errors.backend_unsupported(spec.name, spec.backend)
        endpoint = Endpoint(
            job_id=self.config.job_id,
            channel=spec.name,
            group=spec.group,
            role=spec.role,
            other_role=spec.other_role,
            end_id=self.config.task_id,
        )
        channel = Channel(spec, endpoint, transports, self.limits, self.shared_folder)
        try:
            await channel.open()
        except (OSError, TimeoutError) as error:
            await channel.abort()
            _log.warning("cannot join", extra={"channel": spec.name, "error": str(error)})
            raise errors.broker_unavailable(
                spec.name, str(error) or type(error).__name__
            ) from error
        return channel
