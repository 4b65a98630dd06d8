"""The few pieces of the protobuf wire format that messages laid out by hand need.

Any protobuf parser reads what these build: a message is a sequence of fields in
any order, and a field holding bytes, a string or a message is its key, its length
as a varint, then its value.
"""

from __future__ import annotations

from typing import Final

__all__ = ["LEN", "key", "length_delimited", "varint"]

LEN: Final = 2  # The wire type of bytes, strings and messages.


def varint(value: int) -> bytes:
    """`value` (not negative) as a base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key(field: int, wire: int) -> bytes:
    """The key of field number `field` with wire type `wire`."""
    return varint(field << 3 | wire)


def length_delimited(field: int, value: bytes) -> bytes:
    """Field number `field` holding `value`: bytes, a UTF-8 string or a serialized message."""
    return b"".join((key(field, LEN), varint(len(value)), value))
