"""The default selector: every end."""

from __future__ import annotations

from collections.abc import Mapping

from flame.end import End
from flame.selector._base import RoundCachedSelector

__all__ = ["DefaultSelector"]


class DefaultSelector(RoundCachedSelector):
    """Selects all current ends, once per round (see `RoundCachedSelector`).

    Example:
        >>> DefaultSelector().select({"a": End("a"), "b": End("b")}, {"round": 1})
        {'a': None, 'b': None}
    """

    def _choose(self, ends: Mapping[str, End]) -> list[str]:
        return list(ends)
