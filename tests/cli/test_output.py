"""Tables, JSON and YAML rendering."""

from __future__ import annotations

import json

import pytest
import yaml
from google.protobuf import timestamp_pb2

from flame.cli.output import (
    Column,
    enum_label,
    format_time,
    mapping_label,
    message_to_dict,
    show_list,
    show_one,
)
from flame.data.v1 import dataset_pb2

COLUMNS: list[Column[dataset_pb2.Dataset]] = [
    Column("ID", lambda d: d.id),
    Column("NAME", lambda d: d.name),
    Column("URL", lambda d: d.url),
]
DATASETS = [
    dataset_pb2.Dataset(id="a1", name="mnist digits", url="s3://x", is_public=True),
    dataset_pb2.Dataset(id="b22222", url="file:///data"),
]


def test_table_columns_are_aligned_and_empty_cells_show_a_dash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    show_list(DATASETS, COLUMNS, "table", message_to_dict)
    assert capsys.readouterr().out.splitlines() == [
        "ID       NAME           URL",
        "a1       mnist digits   s3://x",
        "b22222   -              file:///data",
    ]


def test_an_empty_table_prints_its_header(capsys: pytest.CaptureFixture[str]) -> None:
    show_list([], COLUMNS, "table", message_to_dict)
    assert capsys.readouterr().out == "ID   NAME   URL\n"


def test_cells_are_kept_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    item = dataset_pb2.Dataset(id="a", name="two\nlines")
    show_one(item, lambda d: [("NAME", d.name)], "table", message_to_dict)
    assert capsys.readouterr().out == "NAME   two lines\n"


def test_json_lists_messages_with_camel_case_keys(capsys: pytest.CaptureFixture[str]) -> None:
    show_list(DATASETS, COLUMNS, "json", message_to_dict)
    data = json.loads(capsys.readouterr().out)
    assert data[0] == {"id": "a1", "name": "mnist digits", "url": "s3://x", "isPublic": True}


def test_yaml_shows_one_message(capsys: pytest.CaptureFixture[str]) -> None:
    show_one(DATASETS[1], lambda d: [], "yaml", message_to_dict)
    assert yaml.safe_load(capsys.readouterr().out) == {"id": "b22222", "url": "file:///data"}


def test_unset_times_show_a_dash() -> None:
    assert format_time(timestamp_pb2.Timestamp()) == "-"
    assert format_time(timestamp_pb2.Timestamp(seconds=1_700_000_000)) == "2023-11-14 22:13:20"


def test_enum_labels_drop_the_prefix() -> None:
    assert enum_label("STATE_RUNNING") == "running"
    assert enum_label("PRIORITY_LOW") == "low"


def test_mapping_labels_are_sorted() -> None:
    assert mapping_label({"b": 2, "a": "x"}) == "a=x,b=2"
