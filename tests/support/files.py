"""The flamectl file formats as protos, for tests that hold the documents in memory:
they go through flamectl's own loaders, so tests and CLI read files one way."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from flame.cli.files import load_dataset, load_schema
from flame.data.v1 import dataset_pb2
from flame.design.v1 import design_pb2

__all__ = ["dataset_from_dict", "schema_from_dict"]

T = TypeVar("T")


def _through_file(document: dict[str, Any], load: Callable[[Path], T]) -> T:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "document.json"
        path.write_text(json.dumps(document))
        return load(path)


def schema_from_dict(document: dict[str, Any]) -> design_pb2.Schema:
    """A `schema.json` document as a Schema proto."""
    return _through_file(document, load_schema)


def dataset_from_dict(document: dict[str, Any]) -> dataset_pb2.Dataset:
    """A `dataset.json` document as a Dataset proto."""
    return _through_file(document, lambda path: load_dataset(path).message)
