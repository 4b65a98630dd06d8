"""The pickle-free wire codec of the data plane.

`encode` turns a message (a dict of scalars, strings, bytes, lists, dicts, NumPy arrays
and torch tensors) into a small protobuf header plus the tensors' raw bytes, without
copying them; `iter_chunks` cuts the frame into transport chunks; a `Reassembler`
rebuilds and verifies it on the receiver; `decode` validates the frame and rebuilds the
message. Nothing here unpickles or evaluates received data.
"""

from __future__ import annotations

from flame.wire.chunks import (
    DEFAULT_CHUNK_BYTES,
    MAX_MESSAGE_BYTES,
    ChunkError,
    MemoryStore,
    MessageStore,
    Reassembler,
    iter_chunks,
    message_digest,
)
from flame.wire.codec import (
    ALIGNMENT,
    MAGIC,
    MAX_DEPTH,
    MAX_DIMS,
    MAX_TENSOR_ELEMENTS,
    PREFIX_SIZE,
    DecodeError,
    EncodedMessage,
    decode,
    encode,
    encode_bytes,
)

__all__ = [
    "ALIGNMENT",
    "DEFAULT_CHUNK_BYTES",
    "MAGIC",
    "MAX_DEPTH",
    "MAX_DIMS",
    "MAX_MESSAGE_BYTES",
    "MAX_TENSOR_ELEMENTS",
    "PREFIX_SIZE",
    "ChunkError",
    "DecodeError",
    "EncodedMessage",
    "MemoryStore",
    "MessageStore",
    "Reassembler",
    "decode",
    "encode",
    "encode_bytes",
    "iter_chunks",
    "message_digest",
]
