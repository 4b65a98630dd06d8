"""Selectors: the original per-round caching, and the factory."""

from __future__ import annotations

import pytest

from flame.end import End
from flame.errors import ConfigError
from flame.selector import DefaultSelector, RandomSelector, create_selector


def ends(*names: str) -> dict[str, End]:
    return {name: End(name) for name in names}


def test_default_selects_every_end_once_per_round() -> None:
    selector = DefaultSelector()

    assert selector.select(ends("a", "b"), {}) == {"a": None, "b": None}
    # A newcomer waits for the next round, as in the original.
    assert list(selector.select(ends("a", "b", "c"), {"round": 0})) == ["a", "b"]
    assert list(selector.select(ends("a", "b", "c"), {"round": 1})) == ["a", "b", "c"]


def test_default_drops_ends_that_left_and_reselects_when_empty() -> None:
    selector = DefaultSelector()
    selector.select(ends("agg-1"), {})

    assert list(selector.select(ends("agg-1", "agg-2"), {})) == ["agg-1"]
    # The aggregator was replaced: with no round property, the original stayed on agg-1.
    assert list(selector.select(ends("agg-2"), {})) == ["agg-2"]


def test_random_selects_k_and_keeps_the_choice_within_a_round() -> None:
    selector = RandomSelector(k=2, seed=7)
    all_ends = ends("a", "b", "c", "d")

    first = selector.select(all_ends, {"round": 1})
    assert len(first) == 2 and set(first) <= set(all_ends)
    assert selector.select(all_ends, {"round": 1}) == first
    assert len(selector.select(ends("a"), {"round": 2})) == 1


def test_random_is_reproducible_with_a_seed_and_clamps_k() -> None:
    all_ends = ends(*"abcdefgh")
    picks = [RandomSelector(k=3, seed=1).select(all_ends, {"round": 1}) for _ in range(2)]

    assert picks[0] == picks[1]
    assert RandomSelector(k=-5).k == 1 and RandomSelector(k=0).k == 1


def test_factory_builds_by_sort() -> None:
    assert isinstance(create_selector("default"), DefaultSelector)
    selector = create_selector("random", {"k": 2})
    assert isinstance(selector, RandomSelector) and selector.k == 2


@pytest.mark.parametrize(
    ("sort", "kwargs", "key"),
    [
        ("oort", {}, "selector.sort"),
        ("random", {}, "selector.kwargs"),
        ("default", {"k": 1}, "selector.kwargs"),
    ],
)
def test_factory_errors_name_the_key(sort: str, kwargs: dict[str, int], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_selector(sort, kwargs)
    assert caught.value.key == key
