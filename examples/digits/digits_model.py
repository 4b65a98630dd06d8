"""The model and data loading shared by the digits roles.

Data is scikit-learn's bundled digits (8x8 images, 10 classes): the first 80%
is cut into trainer shards by `prepare_data.py` (a shard is an `.npz` file named
by a `file://` URL, or fetched from an `http(s)://` URL into a local cache
first); the last 20% is the aggregator's test set.
"""

from __future__ import annotations

import hashlib
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import torch

FEATURES = 64
CLASSES = 10
TRAIN_FRACTION = 0.8


def digits() -> tuple[np.ndarray, np.ndarray]:
    """All of scikit-learn's digits, images flattened to 64 features."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data, data.target


def test_split() -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out last 20% of the digits, which no trainer sees."""
    features, labels = digits()
    start = int(len(labels) * TRAIN_FRACTION)
    return _tensors(features[start:], labels[start:])


def _tensors(features: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(features, dtype=torch.float32) / 16.0, torch.tensor(labels, dtype=torch.int64)


def build_model() -> torch.nn.Module:
    """A small multilayer perceptron over the 64 pixel intensities."""
    torch.manual_seed(0)  # every role starts from the same weights
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 64), torch.nn.ReLU(), torch.nn.Linear(64, CLASSES)
    )


def load_shard(url: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of a shard named by a `file://`, `http://` or `https://` URL."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.path))
    elif parsed.scheme in ("http", "https"):
        path = _download(url)
    else:
        raise ValueError(f"cannot load a dataset from {url!r}: use file://, http:// or https://")
    with np.load(path, allow_pickle=False) as data:
        return _tensors(data["x"], data["y"])


def _download(url: str) -> Path:
    cache = Path(tempfile.gettempdir()) / "flame-digits-cache"
    cache.mkdir(exist_ok=True)
    path = cache / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".npz")
    if not path.exists():
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (scheme checked)
            path.write_bytes(response.read())
    return path


def accuracy(model: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(features).argmax(dim=1) == labels).float().mean())
