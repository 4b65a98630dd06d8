#!/usr/bin/env python3
"""Cut the training part of scikit-learn's digits into shards, one per trainer,
and write the dataset files flamectl registers.

    python prepare_data.py --out DIR --shards 3

writes DIR/shard-<i>.npz and DIR/dataset-<i>.json (url `file://DIR/shard-<i>.npz`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from digits_model import TRAIN_FRACTION, digits


def write_shards(out: Path, shards: int) -> list[Path]:
    features, labels = digits()
    end = int(len(labels) * TRAIN_FRACTION)
    out.mkdir(parents=True, exist_ok=True)
    dataset_files = []
    for index, part in enumerate(np.array_split(np.arange(end), shards)):
        shard = out / f"shard-{index}.npz"
        np.savez(shard, x=features[part], y=labels[part])
        dataset = {
            "name": f"digits shard {index}",
            "description": f"{len(part)} handwritten digits (scikit-learn), shard {index} of {shards}",
            "url": shard.resolve().as_uri(),
            "dataFormat": "npz",
            "realm": "default/us",
            "isPublic": False,
        }
        dataset_file = out / f"dataset-{index}.json"
        dataset_file.write_text(json.dumps(dataset, indent=2))
        dataset_files.append(dataset_file)
    return dataset_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shards", type=int, default=3)
    args = parser.parse_args()
    for path in write_shards(args.out, args.shards):
        print(path)


if __name__ == "__main__":
    main()
