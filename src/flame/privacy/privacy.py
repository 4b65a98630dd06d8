"""The privacy interface: what trainers do to a delta before uploading it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flame.mode.weights import Weights

__all__ = ["Privacy"]


class Privacy:
    """Leaves deltas as they are (the `default` sort); subclasses protect them."""

    def apply(self, delta: Mapping[str, Any]) -> Weights:
        """The delta to upload in place of `delta` (not modified)."""
        return dict(delta)
