"""Comparing a decoded message with the one encoded, after the codec's documented changes."""

from __future__ import annotations

import enum
import math
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np


def assert_same(decoded: Any, original: Any) -> None:
    """Assert `decoded` is what decoding `original` must give, bit for bit."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(original, torch.Tensor):
        _assert_same_torch(decoded, original)
    elif isinstance(original, np.ndarray | np.complexfloating | complex):
        _assert_same_array(decoded, np.asarray(original))
    elif isinstance(original, Mapping):
        _assert_same_mapping(decoded, original)
    elif isinstance(original, list | tuple):
        assert type(decoded) is list and len(decoded) == len(original)
        for item, expected in zip(decoded, original, strict=True):
            assert_same(item, expected)
    else:
        _assert_same_scalar(decoded, original)


def _assert_same_mapping(decoded: Any, original: Mapping[Any, Any]) -> None:
    assert type(decoded) is dict
    names = [key.name if isinstance(key, enum.Enum) else key for key in original]
    assert sorted(decoded) == sorted(names)
    for name, expected in zip(names, original.values(), strict=True):
        assert_same(decoded[name], expected)


def _assert_same_scalar(decoded: Any, original: Any) -> None:
    if original is None:
        assert decoded is None
    elif isinstance(original, bool | np.bool_):
        assert type(decoded) is bool and decoded == bool(original)
    elif isinstance(original, int | np.integer):
        assert type(decoded) is int and decoded == int(original)
    elif isinstance(original, float | np.floating):
        assert type(decoded) is float
        assert decoded == float(original) or (math.isnan(decoded) and math.isnan(original))
    elif isinstance(original, str):
        assert type(decoded) is str and decoded == original
    else:
        assert type(decoded) is bytes and decoded == bytes(original)


def _assert_same_array(decoded: Any, original: np.ndarray[Any, Any]) -> None:
    assert type(decoded) is np.ndarray
    assert decoded.dtype == original.dtype.newbyteorder("=")
    assert decoded.shape == original.shape
    little = original.astype(original.dtype.newbyteorder("<"))
    assert decoded.astype(decoded.dtype.newbyteorder("<")).tobytes() == little.tobytes()


def _assert_same_torch(decoded: Any, original: Any) -> None:
    import torch

    assert isinstance(decoded, torch.Tensor)
    assert decoded.dtype == original.dtype and decoded.shape == original.shape
    assert decoded.device.type == "cpu" and not decoded.requires_grad
    assert torch_bits(decoded).tobytes() == torch_bits(original).tobytes()


def torch_bits(tensor: Any) -> np.ndarray[Any, Any]:
    """The tensor's elements as a contiguous NumPy array (bfloat16 as raw uint16 bits)."""
    import torch

    cpu = tensor.detach().cpu().resolve_conj().contiguous()
    if cpu.dtype == torch.bfloat16:
        cpu = cpu.view(torch.uint16)
    return np.ascontiguousarray(cpu.numpy())
