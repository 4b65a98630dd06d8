"""Privacy applied to deltas before upload."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flame.errors import ConfigError
from flame.mode.weights import global_norm
from flame.privacy import DifferentialPrivacy, Privacy, create_privacy, privacy_provider


def test_dp_clips_a_large_delta_to_the_threshold() -> None:
    dp = DifferentialPrivacy(clip_threshold=2.0, noise_factor=0.0)
    delta = {"w": torch.full((10, 10), 3.0), "b": np.full(5, -4.0), "n": torch.tensor(7)}

    clipped = dp.apply(delta)

    assert global_norm(clipped) == pytest.approx(2.0)
    # Clipping scales every floating tensor by the same factor, keeping the direction.
    ratio = float(clipped["w"][0, 0]) / 3.0
    np.testing.assert_allclose(clipped["b"], np.full(5, -4.0 * ratio))
    assert int(clipped["n"]) == 7  # integer buffers are left alone


def test_dp_leaves_a_small_delta_unclipped() -> None:
    dp = DifferentialPrivacy(clip_threshold=10.0, noise_factor=0.0)

    out = dp.apply({"w": np.array([3.0, 4.0])})

    np.testing.assert_array_equal(out["w"], [3.0, 4.0])


def test_dp_noise_has_std_noise_factor_times_clip() -> None:
    dp = DifferentialPrivacy(clip_threshold=2.0, noise_factor=0.5, seed=7)
    delta = {"w": torch.zeros(200_000)}

    noised = dp.apply(delta)["w"]

    assert noised.dtype == torch.float32
    assert float(noised.std()) == pytest.approx(1.0, rel=0.02)  # 0.5 * 2.0
    assert float(noised.mean()) == pytest.approx(0.0, abs=0.01)


def test_privacy_factory() -> None:
    assert type(create_privacy("default", anything=1)) is Privacy
    dp = privacy_provider.get("dp", clip_threshold=1.0, noise_factor=0.1)
    assert isinstance(dp, DifferentialPrivacy)
    with pytest.raises(ConfigError, match=r"privacy\.sort"):
        create_privacy("ldp")
    with pytest.raises(ConfigError, match=r"privacy\.kwargs"):
        create_privacy("dp", clip_threshold=1.0)
    with pytest.raises(ConfigError, match="clip_threshold must be positive"):
        create_privacy("dp", clip_threshold=0.0, noise_factor=0.1)
