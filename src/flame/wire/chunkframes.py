"""Protobuf chunk frames written and read without copying their data through protobuf.

A `flame.transport.v1.Chunk` carries up to a few MiB in its `data` field. Building the
message in protobuf copies those bytes in, serializing copies them again, and parsing
copies them out: most of a bridge's CPU at hundreds of MB/s. Here the frame is laid out
by hand, in the standard wire format, so any protobuf parser reads it as usual:

    tag(outer_field, LEN) len | Chunk fields without data | tag(8, LEN) len | data

`encode_chunk` joins the pieces with the data in one copy; `split_chunk` parses the
small fields with protobuf and returns the data as a view of the received buffer.
A frame laid out otherwise (another valid encoding) falls back to protobuf's parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeVar

from google.protobuf.message import DecodeError, Message

from flame.transport.v1 import frame_pb2
from flame.wire.protowire import LEN, key, varint

__all__ = ["encode_chunk", "field_number", "read_chunk_frame", "split_chunk"]

_DATA_FIELD: Final = frame_pb2.Chunk.DESCRIPTOR.fields_by_name["data"].number
_DATA_TAG: Final = key(_DATA_FIELD, LEN)
# Value sizes of the fixed-width wire types: I64 and I32.
_FIXED_SIZES: Final = {1: 8, 5: 4}

_Bytes = bytes | bytearray | memoryview
_M = TypeVar("_M", bound=Message)


def field_number(message: type[Message], field: str) -> int:
    """The number of `field` in `message`: the `outer_field` of its chunk field."""
    return int(message.DESCRIPTOR.fields_by_name[field].number)


def read_chunk_frame(buffer: bytes, message: type[_M], field: str) -> tuple[_M, memoryview]:
    """Parse `buffer` as `message`, whose field `field` may hold a Chunk.

    Returns:
        The message, its chunk (if any) without data, and that data as a view of
        `buffer` (empty when the message holds no chunk).

    Raises:
        DecodeError: `buffer` is no valid `message`.
    """
    split = split_chunk(buffer, field_number(message, field))
    if split is not None:
        head, data = split
        return message(**{field: head}), data
    # Another layout, or another kind of frame: protobuf parses it, data and all.
    parsed = message.FromString(buffer)
    if not parsed.HasField(field):
        return parsed, memoryview(b"")
    chunk = getattr(parsed, field)
    data = memoryview(chunk.data)
    chunk.ClearField("data")
    return parsed, data


def encode_chunk(head: frame_pb2.Chunk, data: _Bytes, outer_field: int) -> bytes:
    """The serialized message whose field `outer_field` is `head` with `data` as its data.

    `head.data` must be empty: the data goes in once, here.
    """
    inner = head.SerializeToString() + _DATA_TAG + varint(len(data))
    outer = key(outer_field, LEN) + varint(len(inner) + len(data))
    return b"".join((outer, inner, data))


def split_chunk(buffer: bytes, outer_field: int) -> tuple[frame_pb2.Chunk, memoryview] | None:
    """The chunk in field `outer_field` of the serialized message `buffer`, without its
    data, and that data as a view of `buffer`; None when the message is not exactly
    one such field (another kind of frame: parse it with protobuf).

    Raises:
        DecodeError: `buffer` is no valid serialized message.
    """
    view = memoryview(buffer)
    fields = _fields(view, 0, len(view))
    if [(field.number, field.wire) for field in fields] != [(outer_field, LEN)]:
        return None
    head = bytearray()
    data = view[0:0]
    for field in _fields(view, fields[0].value_start, fields[0].end):
        if (field.number, field.wire) == (_DATA_FIELD, LEN):
            data = view[field.value_start : field.end]  # the last one wins, as in protobuf
        else:
            head += view[field.start : field.end]
    return frame_pb2.Chunk.FromString(bytes(head)), data


@dataclass(frozen=True)
class _Field:
    number: int
    wire: int
    start: int  # Where its key begins.
    value_start: int  # Where its value begins, after the length of a LEN field.
    end: int


def _fields(view: memoryview, start: int, end: int) -> list[_Field]:
    """The fields of the message in view[start:end], in order."""
    fields = []
    position = start
    while position < end:
        field_key, value_start = _read_varint(view, position, end)
        number, wire = field_key >> 3, field_key & 7
        if number == 0:
            raise DecodeError("a field numbered 0")
        if wire == 0:
            _, value_end = _read_varint(view, value_start, end)
        elif wire in _FIXED_SIZES:
            value_end = value_start + _FIXED_SIZES[wire]
        elif wire == LEN:
            length, value_start = _read_varint(view, value_start, end)
            value_end = value_start + length
        else:
            raise DecodeError(f"wire type {wire} is not used by these messages")
        if value_end > end:
            raise DecodeError("a field runs past the end of its message")
        fields.append(_Field(number, wire, position, value_start, value_end))
        position = value_end
    return fields


def _read_varint(view: memoryview, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while position < end and shift < 64:
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    raise DecodeError("a truncated or overlong varint")
