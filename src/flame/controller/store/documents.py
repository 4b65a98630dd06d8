"""Conversions between protobuf messages and MongoDB documents."""

from __future__ import annotations

import datetime
from typing import Any, TypeVar

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

__all__ = ["Document", "from_document", "now", "timestamp", "to_document"]

Document = dict[str, Any]
M = TypeVar("M", bound=Message)


def to_document(message: Message) -> Document:
    """The message as a JSON-shaped subdocument (camelCase keys, like the REST API had)."""
    return json_format.MessageToDict(message)


def from_document(document: Document, message_type: type[M]) -> M:
    """Parse a subdocument written by `to_document`; unknown fields from newer
    versions are ignored so a rollback can still read them."""
    return json_format.ParseDict(document, message_type(), ignore_unknown_fields=True)


def now() -> datetime.datetime:
    """The current time, truncated to milliseconds as MongoDB stores it."""
    moment = datetime.datetime.now(datetime.UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def timestamp(moment: datetime.datetime | None) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp of an aware or UTC-naive datetime (empty for None)."""
    stamp = timestamp_pb2.Timestamp()
    if moment is not None:
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        stamp.FromDatetime(moment)
    return stamp
