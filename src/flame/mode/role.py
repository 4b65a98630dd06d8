"""The base of every role: the user's four hooks, the composed flow, and its resources.

A user subclasses a mode's role (e.g. `flame.mode.horizontal.syncfl.trainer.Trainer`),
assigns the attributes the mode requires in `__init__` and implements `initialize`,
`load_data`, `train` and `evaluate`; then `compose()` builds the flow and `run()` runs it.

Example:
    >>> class MyTrainer(Trainer):                       # doctest: +SKIP
    ...     def __init__(self, config):
    ...         self.config, self.model, self.dataset_size = config, None, 0
    ...     def initialize(self): self.model = Net()
    ...     def load_data(self): ...
    ...     def train(self): ...
    ...     def evaluate(self): ...
    >>> role = MyTrainer(Config("config.json"))         # doctest: +SKIP
    >>> role.compose()                                  # doctest: +SKIP
    >>> role.run()                                      # doctest: +SKIP
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import fields
from types import MappingProxyType
from typing import Any, ClassVar

from flame.channel import Channel
from flame.channel_manager import ChannelManager, channel_manager
from flame.config import Config
from flame.errors import ConfigError
from flame.mode.composer import Composer
from flame.mode.settings import RoundSettings
from flame.mode.weights import Weights, get_weights
from flame.registry import DummyRegistry, RegistryClient

__all__ = ["Role"]

logger = logging.getLogger(__name__)


class Role(ABC):
    """A role of the job's topology, run as one task.

    Subclasses list in `required_attributes` what user code must assign in `__init__`
    (None is fine until `initialize` sets it); `run()` checks them with a clear error,
    where the original used a metaclass.

    Attributes:
        config: The task configuration (user-assigned).
        composer: The flow `compose()` built.
        cm: The channels. Assign a manager before `run()` to use other channels (an
            in-memory one in tests or simulations); else `run()` connects to the data plane.
        registry_client: Where metrics and models are logged.
        metrics: Metrics gathered with `update_metrics` since they were last saved.
        settings: Deadlines and quorum, from the hyperparameters.
    """

    required_attributes: ClassVar[tuple[str, ...]] = ("config",)

    config: Config
    composer: Composer
    settings: RoundSettings
    _round: int
    cm: ChannelManager | None = None
    registry_client: RegistryClient = DummyRegistry()
    metrics: Mapping[str, float] = MappingProxyType({})

    @abstractmethod
    def initialize(self) -> None:
        """Build the model (and anything else training needs)."""

    @abstractmethod
    def load_data(self) -> None:
        """Load this task's data."""

    @abstractmethod
    def train(self) -> None:
        """Train the model for one round."""

    @abstractmethod
    def evaluate(self) -> None:
        """Evaluate the model; report results with `update_metrics`."""

    @abstractmethod
    def compose(self) -> None:
        """Build the flow into `self.composer`."""

    @classmethod
    @abstractmethod
    def get_func_tags(cls) -> list[str]:
        """The function tags this role performs on its channels."""

    def run(self) -> None:
        """Run the composed flow, then leave the channels and end the registry run.

        Raises:
            TypeError: A required attribute was not assigned in `__init__`.
            RuntimeError: `compose()` was not called.
            Exception: Whatever the flow raised; channels are left all the same.
        """
        self._check_required_attributes()
        if not isinstance(getattr(self, "composer", None), Composer):
            raise RuntimeError(f"call {type(self).__name__}.compose() before run()")
        try:
            self.composer.run()
        except BaseException:
            self._release(failed=True)
            raise
        self._release(failed=False)

    def update_metrics(self, metrics: Mapping[str, float]) -> None:
        """Add metrics to be saved at the end of the round (later values win)."""
        self.metrics = {**self.metrics, **metrics}

    def save_metrics(self) -> None:
        """Log the gathered metrics at step `round - 1`, then forget them."""
        if self.metrics:
            self.registry_client.save_metrics(self._round - 1, self.metrics)
            self.metrics = {}

    # Helpers for the modes.

    def _init_common(self) -> None:
        """Settings and channels: the part of `internal_init` every role shares."""
        self.settings = RoundSettings.from_hyperparameters(self.config.hyperparameters)
        if self.cm is None:
            self.cm = channel_manager(self.config)
        self.cm.join_all()

    def _channel(self, tag: str) -> Channel:
        if self.cm is None:
            raise RuntimeError("the channels are not joined yet (internal_init did not run)")
        channel = self.cm.get_by_tag(tag)
        if channel is None:
            raise ConfigError(
                "channels", f"no channel has function tag {tag!r} for role {self.config.role!r}"
            )
        return channel

    def _model_weights(self) -> Weights:
        model = getattr(self, "model", None)
        if model is None:
            raise TypeError(f"{type(self).__name__}.model is None: create it in initialize()")
        return get_weights(model)

    def _hyperparameters(self) -> dict[str, Any]:
        hyperparameters = self.config.hyperparameters
        named = {f.name: getattr(hyperparameters, f.name) for f in fields(hyperparameters)}
        del named["extra"]
        return {**named, **hyperparameters.extra}

    def _check_required_attributes(self) -> None:
        missing = [name for name in self.required_attributes if not hasattr(self, name)]
        if missing:
            listed = ", ".join(f"self.{name}" for name in missing)
            raise TypeError(
                f"{type(self).__name__}.__init__ must assign {listed} "
                "(None is allowed until initialize() sets it)"
            )

    def _release(self, *, failed: bool) -> None:
        if self.cm is not None:
            self.cm.cleanup()
        self.registry_client.cleanup(failed=failed)
