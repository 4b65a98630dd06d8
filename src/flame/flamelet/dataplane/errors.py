"""The ChannelService's domain errors, with the reasons its contract lists.

Reasons (domain `flame.dev`): CHANNEL_NOT_FOUND, CHANNEL_NOT_JOINED, END_NOT_FOUND,
END_LEFT, MESSAGE_INVALID, MESSAGE_TOO_LARGE; and BACKEND_UNSUPPORTED (no transport
for the channel's backend) and BROKER_UNAVAILABLE (the broker cannot be reached).
"""

from __future__ import annotations

import grpc

from flame.rpc.errors import (
    FailedPrecondition,
    FlameError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

__all__ = [
    "DeadlineExceeded",
    "backend_unsupported",
    "broker_unavailable",
    "channel_not_found",
    "channel_not_joined",
    "end_left",
    "end_not_found",
    "message_invalid",
    "message_too_large",
]


class DeadlineExceeded(FlameError):
    """The caller's deadline passed while the call waited."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


def channel_not_found(channel: str) -> NotFound:
    """The task configuration has no such channel."""
    return NotFound(
        "CHANNEL_NOT_FOUND",
        f"the task has no channel {channel!r}",
        metadata={"channel": channel},
    )


def channel_not_joined(channel: str) -> FailedPrecondition:
    """The channel exists but the task has not joined it (or left it)."""
    return FailedPrecondition(
        "CHANNEL_NOT_JOINED",
        f"channel {channel!r} is not joined",
        metadata={"channel": channel},
    )


def end_not_found(channel: str, end_id: str) -> NotFound:
    """`end_id` never was an end of the channel."""
    return NotFound(
        "END_NOT_FOUND",
        f"{end_id!r} is not an end of channel {channel!r}",
        metadata={"channel": channel, "end_id": end_id},
    )


def end_left(channel: str, end_id: str) -> NotFound:
    """`end_id` was an end of the channel and left it."""
    return NotFound(
        "END_LEFT",
        f"{end_id!r} left channel {channel!r}",
        metadata={"channel": channel, "end_id": end_id},
    )


def message_invalid(why: str) -> InvalidArgument:
    """A SendMessage stream contradicts its header, or the header is unusable."""
    return InvalidArgument("MESSAGE_INVALID", f"invalid message: {why}")


def message_too_large(size: int, limit: int) -> ResourceExhausted:
    """A message exceeds the bridge's size limit."""
    return ResourceExhausted(
        "MESSAGE_TOO_LARGE",
        f"a message of {size} bytes exceeds the limit of {limit} bytes",
        metadata={"size": str(size), "limit": str(limit)},
    )


def backend_unsupported(channel: str, backend: str) -> FailedPrecondition:
    """No transport carries the channel's backend."""
    return FailedPrecondition(
        "BACKEND_UNSUPPORTED",
        f"channel {channel!r} uses backend {backend!r}, which this flamelet cannot carry",
        metadata={"channel": channel, "backend": backend},
    )


def broker_unavailable(channel: str, why: str) -> Unavailable:
    """The channel's broker cannot be reached, or refused the credentials."""
    return Unavailable(
        "BROKER_UNAVAILABLE",
        f"cannot reach the broker of channel {channel!r}: {why}",
        metadata={"channel": channel},
    )
