"""Chunk frames laid out by hand: read by protobuf as usual, and read back with the
data as a view; anything else is parsed by protobuf or refused cleanly."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from flame.peer.v1 import peer_service_pb2 as peer_pb
from flame.transport.v1 import frame_pb2
from flame.wire.chunkframes import encode_chunk, field_number, read_chunk_frame, split_chunk

HEAD = frame_pb2.Chunk(
    sender_id="trainer-1",
    channel="param",
    message_id="m1",
    sequence=3,
    total_chunks=9,
    total_size=12345,
    digest="ab" * 32,
    broadcast=True,
)
FRAME_CHUNK = field_number(frame_pb2.Frame, "chunk")
REQUEST_CHUNK = field_number(peer_pb.TransferChunksRequest, "chunk")


def with_data(data: bytes) -> frame_pb2.Chunk:
    chunk = frame_pb2.Chunk()
    chunk.CopyFrom(HEAD)
    chunk.data = data
    return chunk


@given(st.binary(max_size=4096))
def test_protobuf_reads_the_hand_laid_frame(data: bytes) -> None:
    assert frame_pb2.Frame.FromString(encode_chunk(HEAD, data, FRAME_CHUNK)) == frame_pb2.Frame(
        chunk=with_data(data)
    )
    assert peer_pb.TransferChunksRequest.FromString(
        encode_chunk(HEAD, memoryview(data), REQUEST_CHUNK)
    ) == peer_pb.TransferChunksRequest(chunk=with_data(data))


@given(st.binary(max_size=4096))
def test_a_frame_serialized_by_protobuf_splits_alike(data: bytes) -> None:
    serialized = frame_pb2.Frame(chunk=with_data(data)).SerializeToString()
    split = split_chunk(serialized, FRAME_CHUNK)
    assert split is not None
    head, view = split
    assert head == HEAD and bytes(view) == data


def test_the_data_is_a_view_of_the_received_buffer() -> None:
    buffer = encode_chunk(HEAD, b"x" * 1000, FRAME_CHUNK)
    _, data = read_chunk_frame(buffer, frame_pb2.Frame, "chunk")
    assert data.obj is buffer


def test_other_frames_are_parsed_by_protobuf() -> None:
    ack = frame_pb2.Frame(ack=frame_pb2.Ack(receiver_id="r", next_sequence=4))
    frame, data = read_chunk_frame(ack.SerializeToString(), frame_pb2.Frame, "chunk")
    assert frame == ack and bytes(data) == b"" and not frame.HasField("chunk")


def test_a_chunk_field_repeated_is_merged_as_protobuf_does() -> None:
    first = frame_pb2.Frame(chunk=frame_pb2.Chunk(sender_id="a", data=b"old"))
    second = frame_pb2.Frame(chunk=frame_pb2.Chunk(sequence=2, data=b"new"))
    buffer = first.SerializeToString() + second.SerializeToString()
    frame, data = read_chunk_frame(buffer, frame_pb2.Frame, "chunk")
    assert (frame.chunk.sender_id, frame.chunk.sequence, bytes(data)) == ("a", 2, b"new")
    assert frame.chunk.data == b""


@pytest.mark.parametrize(
    "buffer",
    [
        b"\x12",  # a key without its length
        b"\x12\x05abc",  # a length past the end
        b"\x12\x03\x42\x09ab",  # the data runs past its chunk
        b"\x12\x02\x0b\x00",  # a group: no such wire type here
        b"\x00\x01",  # field number 0
        b"\x12" + b"\xff" * 11,  # an overlong varint
    ],
)
def test_malformed_frames_are_refused(buffer: bytes) -> None:
    with pytest.raises(DecodeError):
        read_chunk_frame(buffer, frame_pb2.Frame, "chunk")


@given(st.binary(max_size=256))
def test_random_bytes_parse_or_raise_decode_error(buffer: bytes) -> None:
    try:
        frame, data = read_chunk_frame(buffer, frame_pb2.Frame, "chunk")
    except DecodeError:
        return
    assert isinstance(frame, frame_pb2.Frame) and isinstance(data, memoryview)
