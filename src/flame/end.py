"""A peer on a channel (an *end*) and the properties roles and selectors keep about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

__all__ = ["KEY_END_STATE", "VAL_END_STATE_NONE", "VAL_END_STATE_RECVD", "End"]

# Set by the channel once a message from the end was received; selectors (FedBuff)
# reset it when they release the end.
KEY_END_STATE: Final = "state"
VAL_END_STATE_RECVD: Final = "recvd"
VAL_END_STATE_NONE: Final = ""


@dataclass
class End:
    """A task of the other role in the same job, channel and group.

    Properties are free-form per-end values (scalars or tuples) that modes and selectors
    read and write, e.g. `state`, `round_start_time`, `stat_utility`. They live in this
    process only and are dropped when the end leaves the channel.

    Attributes:
        end_id: The peer's task id.
        role: The peer's role.
        join_time: When the peer was first seen, if the data plane said.
        properties: The end's properties.
    """

    end_id: str
    role: str = ""
    join_time: datetime | None = None
    properties: dict[str, Any] = field(default_factory=dict)

    def get_property(self, key: str) -> Any:
        """The property `key`, or None if it is not set."""
        return self.properties.get(key)

    def set_property(self, key: str, value: Any) -> None:
        """Set the property `key` to `value`."""
        self.properties[key] = value
