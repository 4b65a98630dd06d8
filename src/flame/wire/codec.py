"""Pickle-free codec of data-plane messages.

A message is a `dict` of named values. It is encoded as a `flame.message.v1.Envelope`
header followed by the raw bytes of its tensors, so decoding never runs code and large
tensors are neither copied into protobuf nor re-parsed.

Frame layout (integers big-endian)::

    offset   size  content
    0        4     magic b"FLM1"
    4        8     header length H
    12       H     header: a serialized Envelope; every tensor holds
                   payload_offset/payload_length instead of inline data
    12 + H   rest  payload: tensor elements, little-endian, row-major

Tensor offsets are relative to the payload start and multiples of `ALIGNMENT`, and the
header is padded (metadata key `_pad`) so that the payload starts on an `ALIGNMENT`
boundary of the frame: decoded arrays are then aligned views of the received buffer.

Value mapping (encode -> wire -> decode):

* `None` -> `null_value` -> `None`; `bool`/`numpy.bool_` -> `bool_value` -> `bool`.
* `int`/`numpy.integer` (signed 64-bit range) -> `int_value` -> `int`.
* `float`/`numpy.floating` -> `float_value` (64-bit) -> `float`.
* `str` -> `string_value`; `bytes`/`bytearray`/`memoryview` -> `bytes_value` -> `bytes`
  (carried inline in the header, so keep large blobs in tensors).
* Mappings -> `map_value` (ordered) -> `dict`; `list`/`tuple` -> `list_value` -> `list`.
* `numpy.ndarray` -> `tensor` -> `numpy.ndarray`; `complex` and complex numpy scalars
  (no scalar kind holds them) -> `tensor` -> 0-d `numpy.ndarray`.
* `torch.Tensor` (any device, gradients dropped) -> `tensor` -> `torch.Tensor` on CPU.

Keys are `str`, or `enum.Enum` members encoded by their `.name` (the original SDK keyed
messages by `MessageType`): decoding always gives `str` keys. The top-level key order is
not kept (the Envelope holds a protobuf map); nested mappings keep their order.
"""

from __future__ import annotations

import enum
import math
import struct
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError as ProtobufDecodeError

from flame.message.v1 import message_pb2

__all__ = [
    "ALIGNMENT",
    "MAGIC",
    "MAX_DEPTH",
    "MAX_DIMS",
    "MAX_TENSOR_ELEMENTS",
    "PREFIX_SIZE",
    "DecodeError",
    "EncodedMessage",
    "decode",
    "encode",
    "encode_bytes",
]

MAGIC: Final = b"FLM1"
_PREFIX: Final = struct.Struct(">4sQ")
PREFIX_SIZE: Final = _PREFIX.size
ALIGNMENT: Final = 64
# protobuf's parser stops at 100 nested messages and each value level costs two
# (Value, then ValueList or ValueMap): 32 levels keeps every encodable message decodable.
MAX_DEPTH: Final = 32
# NumPy 1.x arrays have at most 32 dimensions.
MAX_DIMS: Final = 32
# Bounds the element count a shape may claim, zero-size shapes included, so that a
# hostile header cannot make NumPy or PyTorch size a huge allocation.
MAX_TENSOR_ELEMENTS: Final = 1 << 32
# A serialized protobuf message cannot exceed 2 GiB.
_MAX_HEADER_BYTES: Final = (1 << 31) - 1
_PAD_KEY: Final = "_pad"
_ZEROS: Final = bytes(ALIGNMENT)
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1

_K = TypeVar("_K", bound=str | enum.Enum)
_Array = npt.NDArray[Any]

_BFLOAT16: Final = message_pb2.D_TYPE_BFLOAT16
_BOOL: Final = message_pb2.D_TYPE_BOOL
_NUMPY: Final = message_pb2.FRAMEWORK_NUMPY
_TORCH: Final = message_pb2.FRAMEWORK_TORCH
_FRAMEWORKS: Final = frozenset({message_pb2.FRAMEWORK_UNSPECIFIED, _NUMPY, _TORCH})

# Wire element type -> little-endian NumPy dtype; bfloat16 travels as its raw 16 bits.
_WIRE_DTYPES: Final[dict[int, np.dtype[Any]]] = {
    message_pb2.D_TYPE_BOOL: np.dtype("|b1"),
    message_pb2.D_TYPE_UINT8: np.dtype("|u1"),
    message_pb2.D_TYPE_INT8: np.dtype("|i1"),
    message_pb2.D_TYPE_INT16: np.dtype("<i2"),
    message_pb2.D_TYPE_INT32: np.dtype("<i4"),
    message_pb2.D_TYPE_INT64: np.dtype("<i8"),
    message_pb2.D_TYPE_FLOAT16: np.dtype("<f2"),
    message_pb2.D_TYPE_BFLOAT16: np.dtype("<u2"),
    message_pb2.D_TYPE_FLOAT32: np.dtype("<f4"),
    message_pb2.D_TYPE_FLOAT64: np.dtype("<f8"),
    message_pb2.D_TYPE_COMPLEX64: np.dtype("<c8"),
    message_pb2.D_TYPE_COMPLEX128: np.dtype("<c16"),
    message_pb2.D_TYPE_UINT16: np.dtype("<u2"),
    message_pb2.D_TYPE_UINT32: np.dtype("<u4"),
    message_pb2.D_TYPE_UINT64: np.dtype("<u8"),
}
_NUMPY_DTYPES: Final[dict[str, int]] = {
    dtype.str: code for code, dtype in _WIRE_DTYPES.items() if code != _BFLOAT16
}
# Keyed by `str(tensor.dtype)` so that encoding never has to import torch.
_TORCH_DTYPES: Final[dict[str, int]] = {
    "torch.bool": message_pb2.D_TYPE_BOOL,
    "torch.uint8": message_pb2.D_TYPE_UINT8,
    "torch.int8": message_pb2.D_TYPE_INT8,
    "torch.int16": message_pb2.D_TYPE_INT16,
    "torch.int32": message_pb2.D_TYPE_INT32,
    "torch.int64": message_pb2.D_TYPE_INT64,
    "torch.float16": message_pb2.D_TYPE_FLOAT16,
    "torch.bfloat16": message_pb2.D_TYPE_BFLOAT16,
    "torch.float32": message_pb2.D_TYPE_FLOAT32,
    "torch.float64": message_pb2.D_TYPE_FLOAT64,
    "torch.complex64": message_pb2.D_TYPE_COMPLEX64,
    "torch.complex128": message_pb2.D_TYPE_COMPLEX128,
    "torch.uint16": message_pb2.D_TYPE_UINT16,
    "torch.uint32": message_pb2.D_TYPE_UINT32,
    "torch.uint64": message_pb2.D_TYPE_UINT64,
}


class DecodeError(ValueError):
    """Malformed input to `decode`: a bad frame, header or tensor."""


@dataclass(frozen=True, slots=True)
class EncodedMessage:
    """An encoded message: the header and the payload segments, not joined.

    The payload segments alias the message's arrays and tensors whenever they already
    are little-endian and contiguous: do not modify those until the message is sent.

    Attributes:
        header: The serialized Envelope.
        payload: The payload, in order: tensor bytes and alignment padding.
    """

    header: bytes
    payload: tuple[memoryview, ...]

    @property
    def total_size(self) -> int:
        """The size of the whole frame in bytes."""
        return PREFIX_SIZE + len(self.header) + sum(segment.nbytes for segment in self.payload)

    def segments(self) -> Iterator[memoryview]:
        """Yield the frame as byte views: magic, header length, header, then the payload."""
        yield memoryview(MAGIC)
        yield memoryview(struct.pack(">Q", len(self.header)))
        yield memoryview(self.header)
        yield from self.payload


class _Payload:
    """Collects payload segments, placing each one at an aligned offset."""

    def __init__(self) -> None:
        self.segments: list[memoryview] = []
        self.size = 0

    def add(self, data: memoryview) -> int:
        """Append `data` and return its offset in the payload."""
        if not data.nbytes:
            return 0
        padding = -self.size % ALIGNMENT
        if padding:
            self.segments.append(memoryview(_ZEROS)[:padding])
            self.size += padding
        offset = self.size
        self.segments.append(data)
        self.size += data.nbytes
        return offset


def encode(message: Mapping[_K, Any]) -> EncodedMessage:
    """Encode a message into a header and zero-copy payload segments.

    Args:
        message: Field name (`str` or `enum.Enum`, encoded by name) to value; see the
            module docstring for the supported value types.

    Returns:
        The encoded message; stream `segments()` or join them with `encode_bytes`.

    Raises:
        TypeError: A value or key has an unsupported type.
        ValueError: An integer does not fit in 64 bits, two keys have the same name or
            the message nests deeper than `MAX_DEPTH`.

    Example:
        >>> import numpy as np
        >>> encoded = encode({"weights": np.zeros(4, dtype=np.float32), "round": 3})
        >>> frame = b"".join(encoded.segments())
        >>> len(frame) == encoded.total_size
        True
        >>> decode(frame)["round"]
        3
    """
    if not isinstance(message, Mapping):
        raise TypeError(f"a message is a mapping, not {type(message).__qualname__}")
    payload = _Payload()
    envelope = message_pb2.Envelope()
    for key, value in _named_items(message):
        _encode_value(value, envelope.fields[key], payload, depth=1)
    return EncodedMessage(_aligned_header(envelope), tuple(payload.segments))


def encode_bytes(message: Mapping[_K, Any]) -> bytes:
    """Encode a message into one `bytes` frame (one copy of the payload).

    Example:
        >>> decode(encode_bytes({"eot": True}))
        {'eot': True}
    """
    return b"".join(encode(message).segments())


def _named_items(mapping: Mapping[Any, Any]) -> Iterator[tuple[str, Any]]:
    seen: set[str] = set()
    for key, value in mapping.items():
        name = _key_name(key)
        if name in seen:
            raise ValueError(f"two keys are named {name!r}")
        seen.add(name)
        yield name, value


def _key_name(key: object) -> str:
    if isinstance(key, enum.Enum):
        return key.name
    if isinstance(key, str):
        return key
    raise TypeError(f"keys are str or enum.Enum, not {type(key).__qualname__}")


def _aligned_header(envelope: message_pb2.Envelope) -> bytes:
    # A pad string of 1 to ALIGNMENT characters keeps the map entry's length varint at one
    # byte, so growing it by n grows the header by exactly n.
    envelope.metadata[_PAD_KEY] = "."
    unpadded = PREFIX_SIZE + envelope.ByteSize()
    envelope.metadata[_PAD_KEY] = "." * (1 + -unpadded % ALIGNMENT)
    return envelope.SerializeToString(deterministic=True)


def _encode_value(value: Any, target: message_pb2.Value, payload: _Payload, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"the message nests deeper than {MAX_DEPTH} levels")
    if _encode_scalar(value, target):
        return
    if isinstance(value, np.ndarray | np.complexfloating | complex):
        array = np.asarray(value)
        _encode_array(array, _numpy_dtype(array), _NUMPY, target.tensor, payload)
    elif _is_torch_tensor(value):
        _encode_torch(value, target.tensor, payload)
    elif isinstance(value, Mapping):
        _encode_map(value, target.map_value, payload, depth)
    elif isinstance(value, list | tuple):
        target.list_value.SetInParent()
        for item in value:
            _encode_value(item, target.list_value.values.add(), payload, depth + 1)
    else:
        raise TypeError(f"cannot encode a value of type {type(value).__qualname__}")


def _encode_scalar(value: Any, target: message_pb2.Value) -> bool:
    """Set `target` from a scalar value; return False when `value` is not one."""
    if value is None:
        target.null_value = True
    elif isinstance(value, bool | np.bool_):
        target.bool_value = bool(value)
    elif isinstance(value, int | np.integer):
        target.int_value = _int64(value)
    elif isinstance(value, float | np.floating):
        target.float_value = float(value)
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bytes | bytearray | memoryview):
        target.bytes_value = bytes(value)
    else:
        return False
    return True


def _int64(value: int | np.integer[Any]) -> int:
    number = int(value)
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise ValueError(f"the integer {number} does not fit in 64 signed bits")
    return number


def _encode_map(
    mapping: Mapping[Any, Any], target: message_pb2.ValueMap, payload: _Payload, depth: int
) -> None:
    target.SetInParent()
    for key, value in _named_items(mapping):
        target.keys.append(key)
        _encode_value(value, target.values.add(), payload, depth + 1)


def _numpy_dtype(array: _Array) -> int:
    code = _NUMPY_DTYPES.get(array.dtype.newbyteorder("<").str)
    if code is None:
        raise TypeError(f"arrays of dtype {array.dtype} cannot be encoded")
    return code


def _is_torch_tensor(value: object) -> bool:
    # A torch tensor can only exist once torch is imported: never import it here.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _encode_torch(tensor: Any, target: message_pb2.Tensor, payload: _Payload) -> None:
    import torch

    code = _TORCH_DTYPES.get(str(tensor.dtype))
    if code is None or tensor.layout != torch.strided:
        raise TypeError(f"torch tensors of {tensor.dtype}, {tensor.layout} cannot be encoded")
    cpu = tensor.detach().cpu().resolve_conj().resolve_neg()
    # NumPy has no bfloat16: its bits travel as uint16.
    bits = cpu.view(torch.uint16) if code == _BFLOAT16 else cpu
    _encode_array(bits.numpy(), code, _TORCH, target, payload)


def _encode_array(
    array: _Array, code: int, framework: int, target: message_pb2.Tensor, payload: _Payload
) -> None:
    target.dtype = code  # type: ignore[assignment]
    target.framework = framework  # type: ignore[assignment]
    target.shape.extend(array.shape)
    data = _wire_bytes(array)
    target.payload_offset = payload.add(data)
    target.payload_length = data.nbytes


def _wire_bytes(array: _Array) -> memoryview:
    # Both conversions return `array` itself, without a copy, when it already is
    # little-endian and C-contiguous: the usual case.
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    contiguous = np.ascontiguousarray(little)
    return contiguous.reshape(-1).view(np.uint8).data


def decode(buffer: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode a frame made by `encode`, validating all of it.

    Arrays are zero-copy views of `buffer` where possible: read-only for `bytes`, writable
    for a `bytearray` (which then cannot be resized while they live). Torch tensors are
    views of a writable buffer, else copies, since torch cannot wrap read-only memory.

    Args:
        buffer: One whole frame.

    Returns:
        Field name to value. Keys are `str` (enum keys come back as their names) and
        tuples come back as lists; numpy bfloat16 is widened to float32.

    Raises:
        DecodeError: The frame is malformed: bad magic, header, offsets, dtype, shape,
            nesting, or invalid bool bytes.
        ImportError: The message holds torch tensors and torch is not installed.

    Example:
        >>> import numpy as np
        >>> message = decode(encode_bytes({"weights": np.arange(3.0), "size": 10}))
        >>> message["weights"], message["size"]
        (array([0., 1., 2.]), 10)
    """
    header, payload = _split_frame(_byte_view(buffer))
    envelope = _parse_header(header)
    reader = _PayloadReader(payload)
    return {key: _decode_value(value, reader, 1) for key, value in envelope.fields.items()}


def _byte_view(buffer: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(buffer)
    if not view.c_contiguous:
        raise DecodeError("the buffer is not contiguous")
    return view.cast("B")


def _split_frame(frame: memoryview) -> tuple[memoryview, memoryview]:
    if frame.nbytes < PREFIX_SIZE:
        raise DecodeError(f"a frame of {frame.nbytes} bytes is shorter than its prefix")
    magic, header_length = _PREFIX.unpack_from(frame)
    if magic != MAGIC:
        raise DecodeError(f"bad magic {magic!r}, expected {MAGIC!r}")
    end = PREFIX_SIZE + header_length
    if header_length > _MAX_HEADER_BYTES or end > frame.nbytes:
        raise DecodeError(
            f"header length {header_length} exceeds the frame of {frame.nbytes} bytes"
        )
    return frame[PREFIX_SIZE:end], frame[end:]


def _parse_header(header: memoryview) -> message_pb2.Envelope:
    envelope = message_pb2.Envelope()
    try:
        # The header is small: tensor bytes are out of line in the payload.
        envelope.ParseFromString(bytes(header))
    except ProtobufDecodeError as exc:
        raise DecodeError(f"malformed header: {exc}") from exc
    return envelope


class _PayloadReader:
    """Hands out tensor byte ranges of the payload."""

    def __init__(self, payload: memoryview) -> None:
        self._payload = payload
        self._unclaimed = payload.nbytes

    def take(self, offset: int, length: int) -> memoryview:
        """Return the payload range [offset, offset + length), validated."""
        if offset < 0 or length < 0 or offset + length > self._payload.nbytes:
            raise DecodeError(
                f"tensor range [{offset}, {offset + length}) is outside the payload "
                f"of {self._payload.nbytes} bytes"
            )
        # encode never overlaps ranges. Bounding their sum by the payload size stops a
        # header from naming the same bytes many times, each time a copy for torch.
        if length > self._unclaimed:
            raise DecodeError("tensor ranges overlap: they add up to more than the payload")
        self._unclaimed -= length
        return self._payload[offset : offset + length]


def _decode_value(value: message_pb2.Value, payload: _PayloadReader, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise DecodeError(f"the message nests deeper than {MAX_DEPTH} levels")
    kind = value.WhichOneof("kind")
    if kind is None:
        raise DecodeError("a value has no kind")
    if kind == "tensor":
        return _decode_tensor(value.tensor, payload)
    if kind == "list_value":
        return [_decode_value(item, payload, depth + 1) for item in value.list_value.values]
    if kind == "map_value":
        return _decode_map(value.map_value, payload, depth + 1)
    if kind == "null_value":
        return None
    return getattr(value, kind)


def _decode_map(
    mapping: message_pb2.ValueMap, payload: _PayloadReader, depth: int
) -> dict[str, Any]:
    if len(mapping.keys) != len(mapping.values):
        raise DecodeError(f"a map has {len(mapping.keys)} keys, {len(mapping.values)} values")
    result: dict[str, Any] = {}
    for key, value in zip(mapping.keys, mapping.values, strict=True):
        if key in result:
            raise DecodeError(f"a map repeats the key {key!r}")
        result[key] = _decode_value(value, payload, depth)
    return result


def _decode_tensor(tensor: message_pb2.Tensor, payload: _PayloadReader) -> Any:
    dtype = _WIRE_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise DecodeError(f"unknown tensor dtype {tensor.dtype}")
    if tensor.framework not in _FRAMEWORKS:
        raise DecodeError(f"unknown tensor framework {tensor.framework}")
    shape = _checked_shape(tensor.shape)
    data = _tensor_bytes(tensor, payload)
    count = math.prod(shape)
    if count * dtype.itemsize != data.nbytes:
        raise DecodeError(f"shape {shape} of {dtype} does not match {data.nbytes} bytes")
    if tensor.dtype == _BOOL and np.frombuffer(data, np.uint8).max(initial=0) > 1:
        raise DecodeError("a bool tensor holds bytes other than 0 and 1")
    array = np.frombuffer(data, dtype, count).reshape(shape)
    if tensor.framework == _TORCH:
        return _to_torch(array, tensor.dtype)
    return _widen_bfloat16(array) if tensor.dtype == _BFLOAT16 else array


def _checked_shape(dims: Any) -> tuple[int, ...]:
    shape = tuple(int(dim) for dim in dims)
    if len(shape) > MAX_DIMS:
        raise DecodeError(f"a tensor has {len(shape)} dimensions, more than {MAX_DIMS}")
    if any(dim < 0 for dim in shape):
        raise DecodeError(f"a tensor shape {shape} has a negative dimension")
    # Zero dimensions count as one, so that (0, 2**60) cannot pass.
    if math.prod(max(dim, 1) for dim in shape) > MAX_TENSOR_ELEMENTS:
        raise DecodeError(f"a tensor shape {shape} exceeds {MAX_TENSOR_ELEMENTS} elements")
    return shape


def _tensor_bytes(tensor: message_pb2.Tensor, payload: _PayloadReader) -> memoryview:
    offset, length = tensor.payload_offset, tensor.payload_length
    if offset == 0 and length == 0:
        return memoryview(tensor.data)
    if tensor.data:
        raise DecodeError("a tensor has both inline data and a payload range")
    return payload.take(offset, length)


def _widen_bfloat16(bits: _Array) -> _Array:
    # bfloat16 is the upper half of a float32: widening is exact.
    return (bits.astype("<u4") << 16).view("<f4")


def _to_torch(array: _Array, code: int) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            "the message holds torch tensors: install PyTorch (flame-fl[torch]) to decode it"
        ) from exc
    if not (array.flags.writeable and array.flags.aligned and array.dtype.isnative):
        # torch.from_numpy warns on read-only arrays and rejects foreign byte order.
        array = array.astype(array.dtype.newbyteorder("="))
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if code == _BFLOAT16 else tensor
