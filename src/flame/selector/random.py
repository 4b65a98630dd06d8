"""The random selector: k ends drawn uniformly, once per round."""

from __future__ import annotations

import random
from collections.abc import Mapping

from flame.end import End
from flame.selector._base import RoundCachedSelector

__all__ = ["RandomSelector"]


class RandomSelector(RoundCachedSelector):
    """Selects min(k, number of ends) ends uniformly without replacement, once per round.

    Args:
        k: How many ends to select; values below 1 mean 1 (the original turned
            negative values into 1).
        seed: Seeds the draws, for reproducible runs.

    Example:
        >>> ends = {name: End(name) for name in "abc"}
        >>> len(RandomSelector(k=2, seed=0).select(ends, {"round": 1}))
        2
    """

    def __init__(self, k: int, *, seed: int | None = None) -> None:
        super().__init__()
        self.k = max(k, 1)
        self._random = random.Random(seed)

    def _choose(self, ends: Mapping[str, End]) -> list[str]:
        return self._random.sample(list(ends), min(self.k, len(ends)))
