"""Alias of `flame.mode.horizontal.syncfl.middle_aggregator`, as in the original SDK."""

from __future__ import annotations

from flame.mode.horizontal.syncfl.middle_aggregator import MiddleAggregator

__all__ = ["MiddleAggregator"]
