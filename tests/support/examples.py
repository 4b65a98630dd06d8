"""The original Flame example inputs, from the shared folder beside the repository
(CI lays it out the same way). Tests that use them fail, not skip, without it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["EXAMPLES", "EXAMPLE_DATASETS"]

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "reference" / "examples"

if not (EXAMPLES / "mnist" / "schema.json").exists():
    raise FileNotFoundError(f"the shared example inputs are missing at {EXAMPLES}")

# Dataset files of each example, by the id its dataSpec.json gives them.
EXAMPLE_DATASETS = {
    "mnist": {"64132c15981345ad7b31da47": "dataset.json"},
    "hier_mnist": {
        "624b4417dad565fc66f8a0ee": "dataset_eu_germany.json",
        "624b4428dad565fc66f8a0ef": "dataset_eu_uk.json",
        "624b4430dad565fc66f8a0f0": "dataset_na_canada.json",
        "624b4437dad565fc66f8a0f1": "dataset_na_us.json",
    },
}
