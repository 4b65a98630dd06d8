"""Build the configured optimizer: `create_optimizer(sort, **kwargs)`.

`optimizer_provider.get(sort, **kwargs)` is the original SDK's spelling of the same call.

Example:
    >>> create_optimizer("fedadam", eta=0.1).eta
    0.1
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from flame.errors import ConfigError
from flame.optimizer import FedAdaGrad, FedAdam, FedAvg, FedProx, FedYogi, Optimizer

__all__ = ["OPTIMIZERS", "create_optimizer", "optimizer_provider"]

OPTIMIZERS: Final[Mapping[str, Callable[..., Optimizer]]] = {
    "fedavg": FedAvg,
    "fedadagrad": FedAdaGrad,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedprox": FedProx,
}


def create_optimizer(sort: str, **kwargs: Any) -> Optimizer:
    """A new optimizer of `sort`.

    Args:
        sort: One of `OPTIMIZERS` (the configuration's `optimizer.sort`).
        **kwargs: Its constructor arguments (`optimizer.kwargs`), e.g. `mu` for fedprox.

    Raises:
        ConfigError: The sort is unknown or the kwargs do not fit it.
    """
    factory = OPTIMIZERS.get(sort)
    if factory is None:
        raise ConfigError("optimizer.sort", f"{sort!r} is not one of {sorted(OPTIMIZERS)}")
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ConfigError("optimizer.kwargs", f"do not fit optimizer {sort!r}: {exc}") from exc


class _OptimizerProvider:
    """The original SDK's factory object."""

    def get(self, sort: str, **kwargs: Any) -> Optimizer:
        """Same as `create_optimizer(sort, **kwargs)`."""
        return create_optimizer(sort, **kwargs)


optimizer_provider: Final = _OptimizerProvider()
