"""Selectors: which ends of a channel take part in a round.

`create_selector(sort, kwargs)` builds one from the task configuration's `selector`
block; `Channel.ends()` runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from flame.errors import ConfigError
from flame.selector._base import PROP_ROUND, RoundCachedSelector, Selector, SelectorReturnType
from flame.selector.default import DefaultSelector
from flame.selector.random import RandomSelector

__all__ = [
    "PROP_ROUND",
    "DefaultSelector",
    "RandomSelector",
    "RoundCachedSelector",
    "Selector",
    "SelectorReturnType",
    "create_selector",
]

_SORTS: Final[Mapping[str, Callable[..., Selector]]] = {
    "default": DefaultSelector,
    "random": RandomSelector,
}


def create_selector(sort: str, kwargs: Mapping[str, Any] | None = None) -> Selector:
    """Build a new selector of `sort` with the configuration's kwargs.

    Args:
        sort: `default` or `random`.
        kwargs: Constructor arguments, e.g. `{"k": 2}` for `random`.

    Raises:
        ConfigError: The sort is unknown or the kwargs do not fit it.

    Example:
        >>> create_selector("random", {"k": 1})  # doctest: +ELLIPSIS
        <flame.selector.random.RandomSelector object at ...>
    """
    factory = _SORTS.get(sort)
    if factory is None:
        raise ConfigError("selector.sort", f"{sort!r} is not one of {sorted(_SORTS)}")
    try:
        return factory(**(kwargs or {}))
    except TypeError as exc:
        raise ConfigError("selector.kwargs", f"do not fit selector {sort!r}: {exc}") from exc
