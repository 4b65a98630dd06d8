"""Alias of `flame.mode.horizontal.syncfl.top_aggregator`, as in the original SDK."""

from __future__ import annotations

from flame.mode.horizontal.syncfl.top_aggregator import TopAggregator

__all__ = ["TopAggregator"]
