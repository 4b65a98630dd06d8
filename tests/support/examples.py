"""The original Flame example inputs, from the shared folder beside the repository
(CI lays it out the same way). Tests that use them fail, not skip, without it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["EXAMPLES"]

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "reference" / "examples"

if not (EXAMPLES / "mnist" / "schema.json").exists():
    raise FileNotFoundError(f"the shared example inputs are missing at {EXAMPLES}")
