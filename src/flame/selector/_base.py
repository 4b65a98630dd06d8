"""The selector interface and the per-round caching the built-in selectors share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Final

from flame.end import End

__all__ = ["PROP_ROUND", "RoundCachedSelector", "Selector", "SelectorReturnType"]

# The channel property aggregators advance each round; a larger value makes the
# built-in selectors choose again.
PROP_ROUND: Final = "round"

# End id -> None, or a (key, value) property the channel then sets on that end.
SelectorReturnType = dict[str, tuple[str, Any] | None]


class Selector(ABC):
    """Chooses which ends of a channel take part; the channel owns one instance.

    `Channel.ends()` calls `select` with the channel's current ends and a copy of its
    properties (`round`, `state`, `requester`, ...); selectors may keep state between
    calls.
    """

    @abstractmethod
    def select(
        self, ends: Mapping[str, End], channel_props: Mapping[str, Any]
    ) -> SelectorReturnType:
        """Choose ends.

        Args:
            ends: End id -> End, every current end of the channel.
            channel_props: The channel's properties.

        Returns:
            The chosen end ids, in order, each mapped to None or to a (key, value)
            property to set on that end.
        """


class RoundCachedSelector(Selector):
    """Chooses once per round: again only when the channel property `round` grows.

    As in the original, a selection stays fixed within a round even if ends join. Ends
    that left are dropped from it, and an emptied selection is made anew, so that a
    channel nobody advances the round of (a trainer's upstream) follows a replaced peer.
    """

    def __init__(self) -> None:
        self.selected_ends: list[str] = []
        self.round = 0

    def select(
        self, ends: Mapping[str, End], channel_props: Mapping[str, Any]
    ) -> SelectorReturnType:
        round_ = channel_props.get(PROP_ROUND, 0)
        self.selected_ends = [end_id for end_id in self.selected_ends if end_id in ends]
        if not self.selected_ends or round_ > self.round:
            self.selected_ends = self._choose(ends)
            self.round = round_
        return dict.fromkeys(self.selected_ends)

    @abstractmethod
    def _choose(self, ends: Mapping[str, End]) -> list[str]:
        """The ends to select for a new round."""
