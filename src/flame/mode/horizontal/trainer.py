"""Alias of `flame.mode.horizontal.syncfl.trainer`, as in the original SDK."""

from __future__ import annotations

from flame.mode.horizontal.syncfl.trainer import Trainer

__all__ = ["Trainer"]
