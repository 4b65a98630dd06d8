"""Rendering resources on stdout: compact tables for people, JSON or YAML for scripts.

JSON and YAML show the protobuf messages as `json_format.MessageToDict` gives
them (camelCase keys), so they match what `grpcurl` shows for the same call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Generic, TypeVar

import click
import yaml
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

__all__ = [
    "Column",
    "enum_label",
    "format_time",
    "limit_option",
    "mapping_label",
    "message_to_dict",
    "output_option",
    "show_list",
    "show_one",
]

T = TypeVar("T")

output_option = click.option(
    "-o",
    "--output",
    "output_format",
    type=click.Choice(["table", "json", "yaml"]),
    default="table",
    show_default=True,
    help="Output format.",
)
"""The `-o table|json|yaml` option of every read command."""

limit_option = click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Show at most N items [default: all].",
)
"""The `--limit N` option of every list command."""


@dataclass(frozen=True)
class Column(Generic[T]):
    """One column of a table: its header and how to compute a cell from a row."""

    header: str
    value: Callable[[T], str]


def message_to_dict(message: Message) -> dict[str, Any]:
    """A protobuf message as JSON-ready data with camelCase keys.

    `google.protobuf.Struct` stores every number as a double, so `rounds: 5`
    would come back as `5.0`; integral numbers are turned back into ints, as the
    user wrote them.

    Args:
        message: Any protobuf message.

    Returns:
        The message's proto3 JSON mapping, fields at their default value left out.

    Example:
        >>> message_to_dict(job_pb2.BaseModel(name="cnn", version=2))
        {'name': 'cnn', 'version': 2}
    """
    data: dict[str, Any] = _integral_floats_as_ints(json_format.MessageToDict(message))
    return data


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral_floats_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    return value


def format_time(timestamp: timestamp_pb2.Timestamp) -> str:
    """A timestamp as `YYYY-MM-DD HH:MM:SS` in UTC, or `-` when it is unset."""
    if timestamp.seconds == 0 and timestamp.nanos == 0:
        return "-"
    return timestamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")


def enum_label(name: str) -> str:
    """An enum value name without its prefix, lower case: `STATE_RUNNING` → `running`."""
    return name.split("_", 1)[1].lower() if "_" in name else name.lower()


def show_list(
    items: Sequence[T],
    columns: Sequence[Column[T]],
    output_format: str,
    to_data: Callable[[T], Any],
) -> None:
    """Print a list of resources.

    Args:
        items: The resources, in display order.
        columns: The table columns (used for `table` only).
        output_format: `table`, `json` or `yaml`.
        to_data: Turns one resource into JSON-ready data (for `json` and `yaml`).
    """
    if output_format == "table":
        header = [column.header for column in columns]
        _print_table([header, *([column.value(item) for column in columns] for item in items)])
    else:
        _dump([to_data(item) for item in items], output_format)


def show_one(
    item: T,
    fields: Callable[[T], Sequence[tuple[str, str]]],
    output_format: str,
    to_data: Callable[[T], Any],
) -> None:
    """Print one resource: a two-column `FIELD value` table, or JSON/YAML.

    Args:
        item: The resource.
        fields: The labelled values shown by `table`.
        output_format: `table`, `json` or `yaml`.
        to_data: Turns the resource into JSON-ready data (for `json` and `yaml`).
    """
    if output_format == "table":
        _print_table([[label, value] for label, value in fields(item)])
    else:
        _dump(to_data(item), output_format)


def _print_table(rows: list[list[str]]) -> None:
    if not rows:
        return
    lines = [[_one_line(cell) for cell in row] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        padded = [cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=False)]
        click.echo("   ".join([*padded, line[-1]]))


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "-"


def _dump(data: Any, output_format: str) -> None:
    if output_format == "json":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)


def mapping_label(mapping: Mapping[str, Any]) -> str:
    """A small mapping as `key=value` pairs sorted by key, for a table cell."""
    return ",".join(f"{key}={value}" for key, value in sorted(mapping.items()))
