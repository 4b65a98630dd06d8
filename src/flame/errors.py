"""Exceptions raised by the Flame SDK.

Hierarchy::

    FlameSDKError
    ├── ConfigError                  the task configuration is invalid (also a ValueError)
    ├── DataPlaneError               the flamelet's ChannelService failed or is unreachable
    └── ChannelError                 a channel operation failed; `.channel` names it
        ├── ChannelNotFoundError     the channel is not in the task configuration
        ├── ChannelNotJoinedError    the channel was not joined (or was left)
        ├── MessageError             a message cannot be encoded, or arrived invalid
        ├── EndError                 about one peer; `.end_id` names it
        │   ├── EndNotFoundError     the end is not (or no longer) on the channel
        │   └── EndLeftError         the end left while a call waited for it
        └── ChannelTimeoutError      a wait passed its deadline (also a TimeoutError)
            ├── JoinTimeoutError     no end joined in time (`Channel.await_join`)
            ├── ReceiveTimeoutError  no message arrived in time (`recv`, `recv_fifo`)
            └── SendTimeoutError     the flamelet did not take a message in time

Code that must survive a peer going away catches `EndError`; code that wants every wait
bounded catches `ChannelTimeoutError`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ChannelError",
    "ChannelNotFoundError",
    "ChannelNotJoinedError",
    "ChannelTimeoutError",
    "ConfigError",
    "DataPlaneError",
    "EndError",
    "EndLeftError",
    "EndNotFoundError",
    "FlameSDKError",
    "JoinTimeoutError",
    "MessageError",
    "ReceiveTimeoutError",
    "SendTimeoutError",
]


class FlameSDKError(Exception):
    """Base class of every error the SDK raises on purpose."""


class ConfigError(FlameSDKError, ValueError):
    """The task configuration is invalid.

    Attributes:
        key: The offending key as a path, e.g. `channels[0].pair`; "" for the whole file.
    """

    def __init__(self, key: str, problem: str) -> None:
        where = f"config key {key!r}" if key else "config"
        super().__init__(f"{where}: {problem}")
        self.key = key


class DataPlaneError(FlameSDKError):
    """The flamelet's ChannelService could not be reached or failed unexpectedly."""


class ChannelError(FlameSDKError):
    """A channel operation failed.

    Attributes:
        channel: The channel's name.
    """

    def __init__(self, channel: str, message: str) -> None:
        super().__init__(f"channel {channel!r}: {message}")
        self.channel = channel


class ChannelNotFoundError(ChannelError):
    """The channel is not in the task configuration."""


class ChannelNotJoinedError(ChannelError):
    """The channel was not joined, or was left."""


class MessageError(ChannelError):
    """A message cannot be encoded, or arrived truncated or malformed."""


class EndError(ChannelError):
    """An operation about one peer failed.

    Attributes:
        end_id: The peer's end id.
    """

    def __init__(self, channel: str, end_id: str, message: str) -> None:
        super().__init__(channel, f"end {end_id!r} {message}")
        self.end_id = end_id


class EndNotFoundError(EndError):
    """The end is not, or no longer, on the channel."""


class EndLeftError(EndError):
    """The end left the channel while a call waited for it."""


class ChannelTimeoutError(ChannelError, TimeoutError):
    """A wait passed its deadline.

    Attributes:
        timeout: The deadline that passed, in seconds.
    """

    def __init__(self, channel: str, timeout: float, message: str) -> None:
        super().__init__(channel, f"{message} within {timeout:g} s")
        self.timeout = timeout


class JoinTimeoutError(ChannelTimeoutError):
    """No end joined the channel before the deadline."""


class ReceiveTimeoutError(ChannelTimeoutError):
    """No message arrived before the deadline.

    Attributes:
        end_ids: The ends the call waited for.
    """

    def __init__(self, channel: str, timeout: float, end_ids: Sequence[str]) -> None:
        super().__init__(channel, timeout, f"no message from {sorted(end_ids)}")
        self.end_ids = tuple(end_ids)


class SendTimeoutError(ChannelTimeoutError):
    """The flamelet did not take the whole message before the deadline."""
