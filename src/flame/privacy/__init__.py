"""Privacy applied by trainers to their delta before upload: `default` (none) or `dp`.

Example:
    >>> import numpy as np
    >>> dp = create_privacy("dp", clip_threshold=1.0, noise_factor=0.0)
    >>> dp.apply({"w": np.array([3.0, 4.0])})["w"]
    array([0.6, 0.8])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from flame.errors import ConfigError
from flame.privacy.dp import DifferentialPrivacy
from flame.privacy.privacy import Privacy

__all__ = ["PRIVACIES", "DifferentialPrivacy", "Privacy", "create_privacy", "privacy_provider"]

PRIVACIES: Final[Mapping[str, Callable[..., Privacy]]] = {
    "default": Privacy,
    "dp": DifferentialPrivacy,
}


def create_privacy(sort: str, **kwargs: Any) -> Privacy:
    """A new privacy of `sort` (the configuration's `privacy.sort` and `privacy.kwargs`).

    `default` ignores its kwargs, as in the original.

    Raises:
        ConfigError: The sort is unknown or the kwargs do not fit it.
    """
    factory = PRIVACIES.get(sort)
    if factory is None:
        raise ConfigError("privacy.sort", f"{sort!r} is not one of {sorted(PRIVACIES)}")
    if sort == "default":
        return Privacy()
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError("privacy.kwargs", f"do not fit privacy {sort!r}: {exc}") from exc


class _PrivacyProvider:
    """The original SDK's factory object."""

    def get(self, sort: str, **kwargs: Any) -> Privacy:
        """Same as `create_privacy(sort, **kwargs)`."""
        return create_privacy(sort, **kwargs)


privacy_provider: Final = _PrivacyProvider()
