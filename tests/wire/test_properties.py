"""Property tests: random messages round-trip, random and damaged frames never crash decode."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flame.wire import MAGIC, DecodeError, decode, encode, encode_bytes
from tests.wire.equality import assert_same

DTYPES = [
    "?", "u1", "i1", "<i2", ">i2", "<i4", ">i4", "<i8", "<u2", ">u4", "<u8",
    "<f2", ">f2", "<f4", ">f4", "<f8", ">f8", "<c8", ">c16",
]  # fmt: skip
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

arrays = st.sampled_from(DTYPES).flatmap(
    lambda dtype: hnp.arrays(
        dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
    )
)
# torch.from_numpy needs native byte order and a dtype torch knows.
tensors = arrays.filter(lambda array: array.dtype.isnative).map(
    lambda array: torch.from_numpy(array.copy())
)
bfloat16_tensors = st.lists(st.floats(width=32), max_size=6).map(
    lambda values: torch.tensor(values, dtype=torch.float32).to(torch.bfloat16)
)
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats()
leaves = scalars | st.text() | st.binary() | arrays | tensors | bfloat16_tensors
keys = st.text(max_size=8)
values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=12,
)
messages = st.dictionaries(keys, values, max_size=5)


@SETTINGS
@given(messages)
def test_random_messages_round_trip(message: dict[str, Any]) -> None:
    assert_same(decode(encode_bytes(message)), message)
    assert_same(decode(bytearray(encode_bytes(message))), message)


def decodes_or_raises_decode_error(frame: bytes | bytearray) -> None:
    with contextlib.suppress(DecodeError):
        decode(frame)


@SETTINGS
@given(st.binary(max_size=512))
def test_random_bytes(frame: bytes) -> None:
    decodes_or_raises_decode_error(frame)


@SETTINGS
@given(st.integers(0, 2**64 - 1), st.binary(max_size=512))
def test_random_headers_after_valid_magic(header_length: int, rest: bytes) -> None:
    decodes_or_raises_decode_error(MAGIC + struct.pack(">Q", header_length) + rest)


@SETTINGS
@given(messages, st.data())
def test_truncated_frames(message: dict[str, Any], data: st.DataObject) -> None:
    frame = encode_bytes(message)
    cut = data.draw(st.integers(0, len(frame) - 1))
    decodes_or_raises_decode_error(frame[:cut])


@SETTINGS
@given(messages, st.data())
def test_bit_flipped_frames(message: dict[str, Any], data: st.DataObject) -> None:
    encoded = encode(message)
    frame = bytearray(encode_bytes(message))
    # Most flips land in the header, where they change the structure rather than values.
    end = data.draw(st.sampled_from([len(frame), 12 + len(encoded.header)]))
    positions = st.integers(0, 8 * end - 1)
    for bit in data.draw(st.lists(positions, min_size=1, max_size=8)):
        frame[bit // 8] ^= 1 << (bit % 8)
    decodes_or_raises_decode_error(frame)


@SETTINGS
@given(messages, st.data())
def test_overwritten_header_bytes(message: dict[str, Any], data: st.DataObject) -> None:
    frame = bytearray(encode_bytes(message))
    header_end = 12 + len(encode(message).header)
    start = data.draw(st.integers(4, header_end - 1))
    patch = data.draw(st.binary(min_size=1, max_size=16))
    frame[start : start + len(patch)] = patch
    decodes_or_raises_decode_error(frame)


def test_a_flipped_payload_byte_still_decodes() -> None:
    # A flipped payload byte still decodes: integrity is the chunk digest's job.
    frame = bytearray(encode_bytes({"a": np.zeros(4, np.float32)}))
    frame[-1] ^= 0xFF
    assert decode(frame)["a"][-1] != 0
