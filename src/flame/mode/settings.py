"""Deadlines and the quorum of synchronous rounds, read from the hyperparameters.

Every wait of a role is bounded. The keys are optional extra hyperparameters:

* `joinTimeout` (seconds, default 60): waiting for the first peer on a channel.
* `aggregationTimeout` (seconds, default 300): an aggregator collecting one round's
  updates; it then aggregates what arrived.
* `fetchTimeout` (seconds, default 900): a trainer or middle aggregator waiting for the
  next global model. The wait spans a whole aggregator round, so keep it well above
  `aggregationTimeout`.
* `minTrainers` (default 1): the fewest updates an aggregator finishes a round with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flame.config import Hyperparameters
from flame.errors import ConfigError

__all__ = ["RoundSettings"]


@dataclass(frozen=True)
class RoundSettings:
    """How long a role waits, and how many updates make a round.

    Attributes:
        join_timeout: Seconds to wait for the first peer on a channel.
        aggregation_timeout: Seconds an aggregator waits for one round's updates; it then
            aggregates what arrived.
        fetch_timeout: Seconds a trainer or middle aggregator waits for the next message
            from upstream.
        min_trainers: The fewest updates a round may be aggregated from.
    """

    join_timeout: float = 60.0
    aggregation_timeout: float = 300.0
    fetch_timeout: float = 900.0
    min_trainers: int = 1

    @classmethod
    def from_hyperparameters(cls, hyperparameters: Hyperparameters) -> RoundSettings:
        """Read the optional keys of the module docstring.

        Raises:
            ConfigError: A key is not a positive number (a positive integer for
                `minTrainers`).

        Example:
            >>> from flame.config import Hyperparameters
            >>> hyperparameters = Hyperparameters(extra={"minTrainers": 2})
            >>> RoundSettings.from_hyperparameters(hyperparameters).min_trainers
            2
        """
        extra = hyperparameters.extra
        return cls(
            join_timeout=_seconds(extra, "joinTimeout", cls.join_timeout),
            aggregation_timeout=_seconds(extra, "aggregationTimeout", cls.aggregation_timeout),
            fetch_timeout=_seconds(extra, "fetchTimeout", cls.fetch_timeout),
            min_trainers=_count(extra, "minTrainers", cls.min_trainers),
        )


def _seconds(extra: Mapping[str, Any], key: str, default: float) -> float:
    value = extra.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"hyperparameters.{key}", f"expected positive seconds, got {value!r}")
    return float(value)


def _count(extra: Mapping[str, Any], key: str, default: int) -> int:
    value = extra.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"hyperparameters.{key}", f"expected a positive integer, got {value!r}")
    return value
