"""Round trips and validation of the message codec."""

from __future__ import annotations

import doctest
import enum
import struct
import subprocess
import sys
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
import torch

from flame.message.v1 import message_pb2
from flame.wire import (
    ALIGNMENT,
    MAGIC,
    MAX_DEPTH,
    PREFIX_SIZE,
    DecodeError,
    decode,
    encode,
    encode_bytes,
)
from flame.wire import codec as codec_module
from tests.wire.equality import assert_same, torch_bits

NUMPY_DTYPES = [
    "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
]  # fmt: skip
TORCH_DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.uint16, torch.uint32, torch.uint64, torch.float16, torch.bfloat16,
    torch.float32, torch.float64, torch.complex64, torch.complex128,
]  # fmt: skip
SHAPES = [(), (0,), (5,), (2, 3), (0, 4), (2, 0, 3), (1, 1, 1, 1), (3, 4, 5)]


class MessageType(enum.Enum):
    WEIGHTS = 1
    EOT = 2
    DATASET_SIZE = 3


def random_array(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=np.uint8)
    if dtype == "bool":
        return (raw % 2).astype(bool).reshape(shape)
    return raw.view(dtype).reshape(shape)


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if dtype == torch.bfloat16:
        return torch.randn(shape).to(torch.bfloat16)
    numpy_name = str(dtype).removeprefix("torch.")
    return torch.from_numpy(random_array(numpy_name, shape).copy())


def round_trip(message: dict[Any, Any]) -> dict[str, Any]:
    return decode(encode_bytes(message))


def frame(envelope: message_pb2.Envelope, payload: bytes = b"") -> bytes:
    header = envelope.SerializeToString()
    return MAGIC + struct.pack(">Q", len(header)) + header + payload


def tensor_frame(payload: bytes = b"", **fields: Any) -> bytes:
    envelope = message_pb2.Envelope()
    envelope.fields["t"].tensor.CopyFrom(message_pb2.Tensor(**fields))
    return frame(envelope, payload)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_numpy_arrays_round_trip(dtype: str, shape: tuple[int, ...]) -> None:
    array = random_array(dtype, shape)
    assert_same(round_trip({"a": array})["a"], array)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_torch_tensors_round_trip(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    tensor = random_tensor(dtype, shape)
    assert_same(round_trip({"t": tensor})["t"], tensor)


def test_torch_gradients_views_and_conjugates_are_flattened() -> None:
    weights = torch.randn(4, 3, requires_grad=True)
    message = {
        "grad": weights,
        "transposed": weights.detach().t(),
        "conj": torch.randn(3, dtype=torch.complex64).conj(),
        "negative": torch.randn(3, dtype=torch.complex128).conj().imag,
        "parameter": torch.nn.Parameter(torch.randn(2)),
    }
    assert_same(round_trip(message), message)


def test_torch_state_dict_round_trips() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    state = model.state_dict()
    decoded = round_trip({"weights": state})["weights"]
    assert list(decoded) == list(state)
    assert_same(decoded, state)


def test_torch_from_bytes_is_a_copy_without_warning() -> None:
    frame_bytes = encode_bytes({"t": torch.arange(6.0)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = decode(frame_bytes)["t"]
    tensor += 1  # writable: not a view of the immutable bytes
    assert tensor.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_torch_from_bytearray_is_a_view() -> None:
    buffer = bytearray(encode_bytes({"t": torch.arange(6.0)}))
    tensor = decode(buffer)["t"]
    assert np.shares_memory(tensor.numpy(), np.frombuffer(buffer, np.uint8))


def test_scalars_strings_bytes_and_none() -> None:
    message = {
        "none": None,
        "true": True,
        "false": False,
        "int": -(2**63),
        "big": 2**63 - 1,
        "float": 0.1,
        "inf": float("-inf"),
        "nan": float("nan"),
        "text": "żółw ☃ \x00",
        "empty": "",
        "bytes": b"\x00\xff",
        "bytearray": bytearray(b"abc"),
        "memoryview": memoryview(b"xyz"),
    }
    assert_same(round_trip(message), message)


def test_numpy_scalars_become_python_scalars() -> None:
    message = {
        "bool": np.bool_(True),
        "int": np.int32(-7),
        "uint": np.uint64(2**63 - 1),
        "float": np.float32(1.5),
        "half": np.float16(0.25),
        "str": np.str_("s"),
        "complex": np.complex64(1 - 2j),
    }
    decoded = round_trip(message)
    assert_same(decoded, message)
    assert decoded["complex"].shape == () and decoded["complex"].dtype == np.complex64


def test_python_complex_becomes_a_0d_complex128_array() -> None:
    decoded = round_trip({"z": 1.5 - 2j})["z"]
    assert decoded.shape == () and decoded.dtype == np.complex128 and decoded == 1.5 - 2j


def test_nested_containers_keep_order() -> None:
    message = {
        "outer": OrderedDict([("z", 1), ("a", [1, (2, 3), {"k": None}]), ("m", {})]),
        "list": [[], [[]], ({"x": np.ones(2)},)],
    }
    decoded = round_trip(message)
    assert_same(decoded, message)
    assert list(decoded["outer"]) == ["z", "a", "m"]
    assert decoded["outer"]["a"][1] == [2, 3]


def test_enum_keys_decode_as_names() -> None:
    message = {
        MessageType.WEIGHTS: {"w": np.zeros(2)},
        MessageType.EOT: False,
        MessageType.DATASET_SIZE: 128,
        "round": 3,
    }
    decoded = round_trip(message)
    assert set(decoded) == {"WEIGHTS", "EOT", "DATASET_SIZE", "round"}
    assert_same(decoded, message)


def test_empty_message() -> None:
    assert round_trip({}) == {}


def test_big_endian_arrays_decode_to_equal_values() -> None:
    for dtype in (">f8", ">i4", ">c16", ">u2", ">f2"):
        array = np.arange(12).astype(dtype).reshape(3, 4)
        decoded = round_trip({"a": array})["a"]
        assert decoded.dtype.isnative and decoded.dtype == array.dtype.newbyteorder("=")
        np.testing.assert_array_equal(decoded, array)


def test_non_contiguous_arrays_are_made_contiguous() -> None:
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    message = {"slice": base[::2, 1::3], "fortran": np.asfortranarray(base), "t": base.T}
    decoded = round_trip(message)
    assert_same(decoded, message)
    assert all(array.flags.c_contiguous for array in decoded.values())


def test_large_tensor_is_not_copied_by_encode() -> None:
    array = np.random.default_rng(1).standard_normal(16 * 1024 * 1024, dtype=np.float32)
    assert array.nbytes == 64 * 1024 * 1024
    encoded = encode({"weights": array, "round": 1})
    tensor_segments = [s for s in encoded.payload if s.nbytes == array.nbytes]
    assert len(tensor_segments) == 1
    assert np.shares_memory(np.frombuffer(tensor_segments[0], np.uint8), array)
    assert encoded.total_size < array.nbytes + 4096
    buffer = bytearray(encoded.total_size)
    position = 0
    for segment in encoded.segments():
        buffer[position : position + segment.nbytes] = segment
        position += segment.nbytes
    decoded = decode(buffer)["weights"]
    assert np.shares_memory(decoded, np.frombuffer(buffer, np.uint8))
    np.testing.assert_array_equal(decoded, array)


def test_torch_tensor_is_not_copied_by_encode() -> None:
    tensor = torch.randn(1000)
    segment = next(s for s in encode({"t": tensor}).payload if s.nbytes == 4000)
    assert np.shares_memory(np.frombuffer(segment, np.uint8), tensor.numpy())


def test_frame_layout_and_alignment() -> None:
    message = {"a": np.ones(3, np.int8), "b": np.ones(5), "c": [np.ones(7, np.float16)]}
    encoded = encode(message)
    segments = list(encoded.segments())
    assert bytes(segments[0]) == b"FLM1"
    assert struct.unpack(">Q", segments[1]) == (len(encoded.header),)
    assert (PREFIX_SIZE + len(encoded.header)) % ALIGNMENT == 0
    assert encoded.total_size == sum(s.nbytes for s in segments)
    envelope = message_pb2.Envelope.FromString(encoded.header)
    tensors = [envelope.fields["a"].tensor, envelope.fields["b"].tensor]
    tensors.append(envelope.fields["c"].list_value.values[0].tensor)
    assert all(t.payload_offset % ALIGNMENT == 0 and not t.data for t in tensors)
    decoded = decode(bytearray(b"".join(segments)))
    assert all(array.flags.aligned for array in (decoded["a"], decoded["b"], decoded["c"][0]))


def test_bytes_input_gives_read_only_arrays_and_bytearray_writable_ones() -> None:
    frame_bytes = encode_bytes({"a": np.arange(4)})
    assert not decode(frame_bytes)["a"].flags.writeable
    assert decode(bytearray(frame_bytes))["a"].flags.writeable
    assert not decode(memoryview(frame_bytes))["a"].flags.writeable


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"set": {1, 2}}, TypeError),
        ({"object": object()}, TypeError),
        ({"objects": np.array([None, 1], dtype=object)}, TypeError),
        ({"strings": np.array(["a"])}, TypeError),
        ({"longdouble": np.zeros(2, np.longdouble)}, TypeError),
        ({"date": np.datetime64("2024-01-01")}, TypeError),
        ({1: "int key"}, TypeError),
        ({"nested": {2: "int key"}}, TypeError),
        ({"sparse": torch.zeros(3).to_sparse()}, TypeError),
        ({"float8": torch.zeros(2, dtype=torch.float8_e4m3fn)}, TypeError),
        ({"big": 2**63}, ValueError),
        ({"small": -(2**63) - 1}, ValueError),
        ({"uint64": np.uint64(2**64 - 1)}, ValueError),
        ({MessageType.EOT: 1, "EOT": 2}, ValueError),
    ],
)
def test_unencodable_messages(message: dict[Any, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        encode(message)


def test_non_mapping_message() -> None:
    with pytest.raises(TypeError):
        encode([1, 2])  # type: ignore[arg-type]


def nested_lists(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return value


def test_nesting_limit() -> None:
    deepest = {"v": nested_lists(MAX_DEPTH)}
    assert round_trip(deepest) == deepest
    with pytest.raises(ValueError, match="deeper"):
        encode({"v": nested_lists(MAX_DEPTH + 1)})
    recursive: list[Any] = []
    recursive.append(recursive)
    with pytest.raises(ValueError, match="deeper"):
        encode({"v": recursive})


def deep_envelope(depth: int) -> message_pb2.Envelope:
    envelope = message_pb2.Envelope()
    value = envelope.fields["v"]
    for _ in range(depth - 1):
        value = value.list_value.values.add()
    value.int_value = 1
    return envelope


def value_frame(**value: Any) -> bytes:
    envelope = message_pb2.Envelope()
    envelope.fields["v"].CopyFrom(message_pb2.Value(**value))
    return frame(envelope)


FLOAT32 = message_pb2.D_TYPE_FLOAT32
MALFORMED = {
    "empty": b"",
    "short": b"FLM1\x00",
    "magic": b"FLM2" + bytes(8),
    "header past end": MAGIC + struct.pack(">Q", 5) + b"abc",
    "huge header length": MAGIC + b"\xff" * 8 + b"x",
    "garbage header": MAGIC + struct.pack(">Q", 3) + b"\xff\xff\xff",
    "no kind": value_frame(),
    "too deep": frame(deep_envelope(MAX_DEPTH + 1)),
    "keys without values": value_frame(map_value=message_pb2.ValueMap(keys=["a"])),
    "repeated key": value_frame(
        map_value=message_pb2.ValueMap(
            keys=["a", "a"], values=[message_pb2.Value(int_value=1)] * 2
        )
    ),
    "no dtype": tensor_frame(shape=[1], payload_length=4, payload=b"\0" * 4),
    "unknown dtype": tensor_frame(dtype=99, shape=[1], payload_length=4, payload=b"\0" * 4),
    "unknown framework": tensor_frame(dtype=FLOAT32, framework=7, data=b"\0" * 4, shape=[1]),
    "past payload": tensor_frame(dtype=FLOAT32, shape=[2], payload_offset=4, payload_length=8,
                                 payload=b"\0" * 8),
    "negative offset": tensor_frame(dtype=FLOAT32, shape=[1], payload_offset=-4,
                                    payload_length=4, payload=b"\0" * 8),
    "negative length": tensor_frame(dtype=FLOAT32, shape=[], payload_offset=4,
                                    payload_length=-4, payload=b"\0" * 8),
    "length mismatch": tensor_frame(dtype=FLOAT32, shape=[3], payload_length=8,
                                    payload=b"\0" * 8),
    "negative dim": tensor_frame(dtype=FLOAT32, shape=[-1, -2], payload_length=8,
                                 payload=b"\0" * 8),
    "element cap": tensor_frame(dtype=FLOAT32, shape=[0, 1 << 40]),
    "element cap overflow": tensor_frame(dtype=FLOAT32, shape=[1 << 62, 1 << 62, 0]),
    "too many dims": tensor_frame(dtype=FLOAT32, shape=[1] * 40, data=b"\0" * 4),
    "inline and range": tensor_frame(dtype=FLOAT32, shape=[1], data=b"\0" * 4,
                                     payload_length=4, payload=b"\0" * 4),
    "overlapping ranges": frame(
        message_pb2.Envelope(
            fields={
                name: message_pb2.Value(
                    tensor=message_pb2.Tensor(dtype=FLOAT32, shape=[2], payload_length=8)
                )
                for name in ("a", "b")
            }
        ),
        b"\0" * 8,
    ),
    "bool byte 2": tensor_frame(dtype=message_pb2.D_TYPE_BOOL, shape=[2], data=b"\x01\x02"),
}  # fmt: skip


@pytest.mark.parametrize("frame_bytes", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_frames_raise_decode_error(frame_bytes: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(frame_bytes)


def test_decode_error_is_a_value_error_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="bad magic"):
        decode(b"NOPE" + bytes(8))


def test_non_contiguous_buffer_is_rejected() -> None:
    with pytest.raises(DecodeError, match="contiguous"):
        decode(memoryview(bytes(encode_bytes({})) * 2)[::2])


def test_inline_tensor_data_is_accepted() -> None:
    values = np.array([1.5, -2.0], dtype="<f4")
    decoded = decode(tensor_frame(dtype=FLOAT32, shape=[2], data=values.tobytes()))
    np.testing.assert_array_equal(decoded["t"], values)


def test_numpy_bfloat16_is_widened_to_float32() -> None:
    expected = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    bits = (expected.view(np.uint32) >> 16).astype("<u2")
    decoded = decode(
        tensor_frame(dtype=message_pb2.D_TYPE_BFLOAT16, shape=[3], data=bits.tobytes())
    )["t"]
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, expected)


def test_torch_messages_need_torch_to_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    with_torch = encode_bytes({"t": torch.ones(2), "n": np.ones(2)})
    numpy_only = encode_bytes({"n": np.ones(2)})
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="PyTorch"):
        decode(with_torch)
    np.testing.assert_array_equal(decode(numpy_only)["n"], np.ones(2))


def test_torch_is_never_imported_for_numpy_messages() -> None:
    script = (
        "import sys, numpy as np, flame.wire as w;"
        "w.decode(w.encode_bytes({'a': np.zeros(2), 'b': [1, 'x']}));"
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_docstring_examples() -> None:
    assert doctest.testmod(codec_module).failed == 0


def test_torch_bits_helper_sees_bfloat16_bits() -> None:
    tensor = torch.tensor([1.0], dtype=torch.bfloat16)
    assert torch_bits(tensor).tolist() == [0x3F80]
