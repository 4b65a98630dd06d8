"""Differential privacy for uploads: clip the delta, then add Gaussian noise.

This is the Gaussian mechanism of DP-FedAvg (McMahan et al. 2018) on one trainer's delta:
the clip bounds each trainer's contribution (its L2 sensitivity), and the noise is scaled
by that bound. The original SDK drew noise with std `noise_factor`, independent of the
clip, and on the CPU whatever the delta's device. No privacy accounting is done here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from flame.mode.weights import Weights, global_norm, is_float, scale
from flame.privacy.privacy import Privacy

__all__ = ["DifferentialPrivacy"]


class DifferentialPrivacy(Privacy):
    """Clip to `clip_threshold` in global L2 norm, then add N(0, (noise_factor * clip)^2).

    Only floating tensors are clipped and noised; integer buffers pass unchanged.

    Args:
        clip_threshold: The largest L2 norm of a delta, all tensors together.
        noise_factor: Noise standard deviation as a multiple of `clip_threshold`.
        seed: Seed for the noise, for reproducible tests; None draws fresh entropy.

    Raises:
        ValueError: `clip_threshold` is not positive or `noise_factor` is negative.
    """

    def __init__(self, *, clip_threshold: float, noise_factor: float, seed: int | None = None):
        if clip_threshold <= 0:
            raise ValueError(f"clip_threshold must be positive, got {clip_threshold}")
        if noise_factor < 0:
            raise ValueError(f"noise_factor must not be negative, got {noise_factor}")
        self.clip_threshold = clip_threshold
        self.noise_factor = noise_factor
        self._rng = np.random.default_rng(seed)

    def apply(self, delta: Mapping[str, Any]) -> Weights:
        """The clipped, noised delta; see the class docstring."""
        norm = global_norm(delta)
        clipped = scale(delta, self.clip_threshold / norm) if norm > self.clip_threshold else delta
        std = self.noise_factor * self.clip_threshold
        if std == 0:
            return dict(clipped)
        return {name: self._noised(t, std) if is_float(t) else t for name, t in clipped.items()}

    def _noised(self, tensor: Any, std: float) -> Any:
        # Drawn with NumPy so one seed covers both kinds, then moved to the tensor's
        # dtype and device.
        noise = self._rng.normal(0.0, std, size=tuple(tensor.shape))
        if isinstance(tensor, np.ndarray):
            return tensor + noise.astype(tensor.dtype)
        import torch  # only reached with torch tensors, so torch is installed

        return tensor + torch.as_tensor(noise, dtype=tensor.dtype, device=tensor.device)
