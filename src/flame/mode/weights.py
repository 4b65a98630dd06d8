"""Model weights as plain dicts of tensors, and the arithmetic FL needs on them.

Weights are a `dict[str, tensor]` whose values are torch tensors or NumPy arrays: a torch
model's `state_dict()` on the CPU, or a user-managed dict of NumPy arrays. That is also
what travels in messages (`MessageType.WEIGHTS`) and what registries store.

The framework is decided from the objects themselves, never from what happens to be
imported: a model with `state_dict`/`load_state_dict` is a torch module, a mapping is a
dict of arrays.

Floating tensors carry the learning; integer and bool tensors (e.g. BatchNorm's
`num_batches_tracked`) are averaged in float64 and rounded back, never truncated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np

__all__ = [
    "Weights",
    "WeightsAccumulator",
    "add",
    "add_tensor",
    "get_weights",
    "global_norm",
    "is_float",
    "scale",
    "set_weights",
    "subtract",
]

Weights = dict[str, Any]
"""Tensor name -> torch tensor or NumPy array."""


def get_weights(model: Any) -> Weights:
    """Copy a model's weights onto the CPU.

    Args:
        model: A torch module, or a mapping of names to arrays or tensors.

    Returns:
        Detached CPU copies, so later training does not change them.

    Raises:
        TypeError: The model is neither.

    Example:
        >>> get_weights({"w": np.ones(2)})
        {'w': array([1., 1.])}
    """
    if isinstance(model, Mapping):
        return {name: _copy(value) for name, value in model.items()}
    if callable(getattr(model, "state_dict", None)):
        return {name: _copy(value) for name, value in model.state_dict().items()}
    raise TypeError(
        f"cannot read weights from a {type(model).__qualname__}: use a torch.nn.Module "
        "or a dict of NumPy arrays"
    )


def set_weights(model: Any, weights: Mapping[str, Any]) -> None:
    """Load weights into a model in place.

    A torch module copies them onto its own device (`load_state_dict`, strict); a mapping
    model gets its entries replaced by copies.

    Raises:
        TypeError: The model is neither a torch module nor a mutable mapping.
    """
    if isinstance(model, MutableMapping):
        model.update({name: _copy(value) for name, value in weights.items()})
    elif callable(getattr(model, "load_state_dict", None)):
        model.load_state_dict(weights)
    else:
        raise TypeError(
            f"cannot load weights into a {type(model).__qualname__}: use a torch.nn.Module "
            "or a dict of NumPy arrays"
        )


def subtract(minuend: Mapping[str, Any], subtrahend: Mapping[str, Any]) -> Weights:
    """`minuend - subtrahend` per tensor, matched by name (a trainer's delta).

    Integer tensors give integer differences; nothing is truncated.

    Raises:
        KeyError: The two do not have the same tensor names.
    """
    _check_names(minuend, subtrahend)
    return {name: _like(minuend[name] - subtrahend[name], minuend[name]) for name in minuend}


def add(base: Mapping[str, Any], delta: Mapping[str, Any]) -> Weights:
    """`base + delta` per tensor, in the base's dtypes.

    A float delta added to an integer tensor is rounded to the nearest integer.

    Raises:
        KeyError: The two do not have the same tensor names.
    """
    _check_names(base, delta)
    return {name: add_tensor(base[name], delta[name]) for name in base}


def add_tensor(base: Any, delta: Any) -> Any:
    """`base + delta` for one tensor, in the base's dtype; rounded for integer tensors."""
    if isinstance(base, np.ndarray):
        if is_float(base):
            return np.asarray(base + np.asarray(delta, dtype=base.dtype))
        return np.asarray(base + np.rint(delta)).astype(base.dtype)
    if base.is_floating_point():
        return base + delta.to(base.dtype)
    return (base + delta.round()).to(base.dtype)


def scale(weights: Mapping[str, Any], factor: float) -> Weights:
    """Every floating tensor times `factor`; other tensors unchanged."""
    return {name: _like(t * factor, t) if is_float(t) else t for name, t in weights.items()}


def global_norm(weights: Mapping[str, Any]) -> float:
    """The L2 norm of all floating tensors together, as if flattened into one vector."""
    return math.sqrt(sum(_squared_norm(t) for t in weights.values() if is_float(t)))


def is_float(tensor: Any) -> bool:
    """Whether a torch tensor or NumPy array has a floating dtype."""
    if isinstance(tensor, np.ndarray | np.generic):
        return bool(np.issubdtype(tensor.dtype, np.floating))
    return bool(tensor.is_floating_point())


class WeightsAccumulator:
    """Weighted mean of deltas, accumulated one delta at a time.

    Holds one running sum `sum_i n_i * delta_i` (one model's worth of memory whatever the
    number of deltas) and divides by `sum_i n_i` at the end. Floating tensors are summed
    in their own dtype (float16/bfloat16 in float32), integer ones in float64.

    Example:
        >>> acc = WeightsAccumulator()
        >>> acc.add({"w": np.array([1.0, 2.0])}, 1)
        >>> acc.add({"w": np.array([4.0, 5.0])}, 2)
        >>> acc.mean()["w"], acc.total, acc.count
        (array([3., 4.]), 3, 2)
    """

    def __init__(self) -> None:
        self._sum: Weights | None = None
        self.total = 0
        self.count = 0

    def add(self, delta: Mapping[str, Any], weight: int) -> None:
        """Add one delta with its weight (the trainer's sample count).

        Raises:
            ValueError: `weight` is not positive, or a tensor's shape differs from the
                first delta's.
            KeyError: The delta's tensor names differ from the first delta's.
        """
        if weight <= 0:
            raise ValueError(f"a delta's weight must be positive, got {weight}")
        if self._sum is None:
            self._sum = {name: _like(_widened(t) * weight, t) for name, t in delta.items()}
        else:
            # Checked before any change, so that a bad delta leaves the sum intact.
            _check_names(self._sum, delta)
            for name, running in self._sum.items():
                if tuple(delta[name].shape) != tuple(running.shape):
                    raise ValueError(
                        f"tensor {name!r} has shape {tuple(delta[name].shape)}, "
                        f"not {tuple(running.shape)}"
                    )
            for name, running in self._sum.items():
                running += delta[name] * weight
        self.total += weight
        self.count += 1

    def mean(self) -> Weights:
        """The weighted mean of the deltas added so far.

        Raises:
            ValueError: Nothing was added.
        """
        if self._sum is None:
            raise ValueError("no delta was added")
        return {name: _like(running / self.total, running) for name, running in self._sum.items()}


def _check_names(left: Mapping[str, Any], right: Mapping[str, Any]) -> None:
    if left.keys() != right.keys():
        missing = sorted(left.keys() ^ right.keys())
        raise KeyError(f"the weights differ in tensors {missing}")


def _copy(tensor: Any) -> Any:
    if isinstance(tensor, np.ndarray):
        return tensor.copy()
    return tensor.detach().to("cpu", copy=True)


def _widened(tensor: Any) -> Any:
    """A float copy for summing: float64 for integers, at least float32 for floats."""
    if isinstance(tensor, np.ndarray):
        if not np.issubdtype(tensor.dtype, np.floating):
            return tensor.astype(np.float64)
        return tensor.astype(np.promote_types(tensor.dtype, np.float32))
    import torch  # only reached with torch tensors, so torch is installed

    if not tensor.is_floating_point():
        return tensor.to(torch.float64)
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _like(result: Any, reference: Any) -> Any:
    # NumPy turns 0-d results into scalars, which would travel as plain floats.
    return np.asarray(result) if isinstance(reference, np.ndarray) else result


def _squared_norm(tensor: Any) -> float:
    if isinstance(tensor, np.ndarray):
        return float(np.vdot(tensor, tensor).real)
    return float(tensor.double().pow(2).sum())
