"""Chunking and reassembly."""

from __future__ import annotations

from typing import Any

import blake3
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.wire import (
    DEFAULT_CHUNK_BYTES,
    ChunkError,
    Reassembler,
    decode,
    encode,
    iter_chunks,
    message_digest,
)
from tests.wire.equality import assert_same


def sha(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def chunked(data: bytes, size: int) -> list[bytes]:
    return [bytes(chunk) for chunk in iter_chunks([data], size)]


def reassembler_for(data: bytes, chunks: list[bytes]) -> Reassembler:
    return Reassembler("m1", len(data), len(chunks), sha(data))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 200))
def test_iter_chunks_cuts_any_segmentation(segments: list[bytes], size: int) -> None:
    chunks = [bytes(chunk) for chunk in iter_chunks(segments, size)]
    assert b"".join(chunks) == b"".join(segments)
    assert all(len(chunk) == size for chunk in chunks[:-1])
    assert not chunks or 0 < len(chunks[-1]) <= size


def test_iter_chunks_are_views_inside_a_segment() -> None:
    array = np.arange(1000, dtype=np.uint8)
    chunks = list(iter_chunks([b"head", array.data], 100))
    assert bytes(chunks[0]) == b"head" + bytes(array[:96])
    inner = chunks[1]
    assert np.shares_memory(np.frombuffer(inner, np.uint8), array)


def test_iter_chunks_rejects_a_non_positive_size() -> None:
    with pytest.raises(ValueError):
        list(iter_chunks([b"x"], 0))


def test_message_digest_is_the_blake3_of_the_joined_segments() -> None:
    segments: list[bytes | bytearray | memoryview] = [b"ab", memoryview(b"cd"), bytearray()]
    assert message_digest(segments) == sha(b"abcd")


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.integers(1, 400), st.data())
def test_replays_and_duplicates_give_the_original(
    data: bytes, size: int, draw: st.DataObject
) -> None:
    chunks = chunked(data, size)
    reassembler = reassembler_for(data, chunks)
    for sequence, chunk in enumerate(chunks):
        replays = draw.draw(st.lists(st.integers(0, sequence), max_size=3))
        for replay in replays:
            fresh = replay == reassembler.next_sequence
            assert reassembler.add(replay, chunks[replay]) is fresh
        reassembler.add(sequence, chunk)
        assert reassembler.next_sequence == sequence + 1
    assert reassembler.complete
    assert reassembler.result() == data


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.integers(1, 400), st.data())
def test_a_corrupted_chunk_fails_at_result(data: bytes, size: int, draw: st.DataObject) -> None:
    chunks = chunked(data, size)
    victim = draw.draw(st.integers(0, len(chunks) - 1))
    position = draw.draw(st.integers(0, len(chunks[victim]) - 1))
    damaged = bytearray(chunks[victim])
    damaged[position] ^= draw.draw(st.integers(1, 255))
    chunks[victim] = bytes(damaged)
    reassembler = Reassembler("m1", len(data), len(chunks), sha(data))
    for sequence, chunk in enumerate(chunks):
        reassembler.add(sequence, chunk)
    with pytest.raises(ChunkError, match="digest"):
        reassembler.result()


def test_rejected_chunks_leave_the_state_unchanged() -> None:
    data = bytes(range(10))
    reassembler = Reassembler("m", 10, 3, sha(data))
    reassembler.add(0, data[:4])
    for sequence, chunk in [(2, data[8:]), (3, b"x"), (-1, b"x"), (1, b""), (1, data[4:])]:
        with pytest.raises(ChunkError):
            reassembler.add(sequence, chunk)
    assert reassembler.next_sequence == 1 and not reassembler.complete
    with pytest.raises(ChunkError, match="lacks"):
        reassembler.result()
    reassembler.add(1, data[4:8])
    reassembler.add(2, data[8:])
    assert reassembler.result() == data


def test_the_last_chunk_must_fill_the_message() -> None:
    reassembler = Reassembler("m", 10, 2, sha(bytes(10)))
    reassembler.add(0, bytes(4))
    with pytest.raises(ChunkError, match="does not fit"):
        reassembler.add(1, bytes(5))


@pytest.mark.parametrize(
    ("size", "count", "digest"),
    [(-1, 1, "0" * 64), (10, 0, "0" * 64), (0, 1, "0" * 64), (3, 4, "0" * 64),
     (10, 1, "A" * 64), (10, 1, "0" * 63), (10, 1, "g" * 64), (2**31 + 1, 1, "0" * 64)],
)  # fmt: skip
def test_invalid_announcements(size: int, count: int, digest: str) -> None:
    with pytest.raises(ChunkError):
        Reassembler("m", size, count, digest)


def test_max_message_bytes_bounds_the_allocation() -> None:
    with pytest.raises(ChunkError, match="size"):
        Reassembler("m", 1001, 1, sha(b""), max_message_bytes=1000)


def test_an_empty_message_is_complete_at_once() -> None:
    reassembler = Reassembler("m", 0, 0, sha(b""))
    assert reassembler.complete and reassembler.result() == b""


def test_encode_chunk_reassemble_decode() -> None:
    message: dict[str, Any] = {
        "weights": {"w": torch.randn(700, 1000), "b": np.arange(10)},
        "round": 4,
    }
    encoded = encode(message)
    digest = message_digest(encoded.segments())
    chunks = [bytes(chunk) for chunk in iter_chunks(encoded.segments())]
    assert len(chunks) == -(-encoded.total_size // DEFAULT_CHUNK_BYTES)
    reassembler = Reassembler("m", encoded.total_size, len(chunks), digest)
    for sequence, chunk in enumerate(chunks):
        reassembler.add(sequence, chunk)
    frame = reassembler.result()
    decoded = decode(frame)
    assert_same(decoded, message)
    assert np.shares_memory(decoded["weights"]["b"], np.frombuffer(frame, np.uint8))


def test_a_digest_announced_late_is_checked_at_the_end() -> None:
    data = bytes(range(256)) * 10
    chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    reassembler = Reassembler("m", len(data), len(chunks), "")
    for sequence, chunk in enumerate(chunks):
        reassembler.add(sequence, chunk)
    with pytest.raises(ChunkError, match="lacks its digest"):
        reassembler.result()
    with pytest.raises(ChunkError):
        reassembler.announce_digest("not hex")
    reassembler.announce_digest(sha(data))
    assert reassembler.result() == data
    with pytest.raises(ChunkError, match="another digest"):
        reassembler.announce_digest(sha(b"other"))
