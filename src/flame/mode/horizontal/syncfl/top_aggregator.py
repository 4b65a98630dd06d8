"""The synchronous FL top aggregator.

Flow: `internal_init >> load_data >> initialize >> load_base_model >> loop[distribute >>
aggregate >> train >> evaluate >> save_metrics >> increment_round] >>
inform_end_of_training >> save_params >> save_model`.

Round `r` (1-based, up to `hyperparameters.rounds`):

1. `distribute`: send `{WEIGHTS: global weights, ROUND: r}` to each selected end of the
   channel tagged `distribute`.
2. `aggregate`: fold each end's `{WEIGHTS: delta, DATASET_SIZE: n, MODEL_VERSION: r}` into
   a running weighted mean as it arrives, until all answered, left, or
   `aggregationTimeout` passed; fewer than `minTrainers` updates fail the job
   (`QuorumError`); then the optimizer turns the mean delta into the next weights.
3. The user's `train` and `evaluate`, then metrics are logged at step `r - 1`.

After the last round every end gets `{EOT: True}`, and the final weights are registered
as a new version of the model named after the job.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from flame.errors import EndError
from flame.mode.composer import Composer
from flame.mode.horizontal.syncfl.protocol import QuorumError, collect_updates
from flame.mode.message import MessageType
from flame.mode.role import Role
from flame.mode.tasklet import Loop, Tasklet
from flame.mode.weights import Weights, set_weights
from flame.optimizer import Optimizer
from flame.optimizers import create_optimizer
from flame.registries import registry_from_config
from flame.selector import PROP_ROUND

__all__ = ["TAG_AGGREGATE", "TAG_DISTRIBUTE", "TopAggregator"]

logger = logging.getLogger(__name__)

TAG_DISTRIBUTE: Final = "distribute"
TAG_AGGREGATE: Final = "aggregate"


class TopAggregator(Role):
    """Owns the global model: distributes it, aggregates the updates, decides the end.

    User code assigns `config`, `model` and `dataset` in `__init__` and implements
    `initialize`, `load_data`, `train` (usually nothing) and `evaluate`.

    Attributes:
        model: A torch module, or a dict of NumPy arrays (user-assigned).
        dataset: Evaluation data, for the user's own use (user-assigned; may be None).
        weights: The global weights distributed this round.
        optimizer: The configured aggregation algorithm.
    """

    required_attributes: ClassVar[tuple[str, ...]] = ("config", "model", "dataset")

    model: Any
    dataset: Any
    weights: Weights
    optimizer: Optimizer
    _rounds: int
    _work_done: bool
    _round_ends: list[str]

    def internal_init(self) -> None:
        """Set up the optimizer, join the channels, start the registry run."""
        # The optimizer first: a configuration error stops the task before it joins.
        optimizer = self.config.optimizer
        self.optimizer = create_optimizer(optimizer.sort, **optimizer.kwargs)
        self._init_common()
        self.registry_client = registry_from_config(self.config)
        self.registry_client.setup_run()
        self._round = 1
        self._rounds = self.config.hyperparameters.rounds
        self._work_done = self._round > self._rounds
        self._round_ends = []

    def load_base_model(self) -> None:
        """Start from the registry's model when `baseModel` names one (version > 0).

        Runs after `initialize`, so the loaded weights go into the model the user built
        (the original loaded the model before `initialize` replaced it).
        """
        base = self.config.base_model
        if base.name and base.version > 0:
            set_weights(self.model, self.registry_client.load_model(base.name, base.version))
            logger.info("starting from model %r version %d", base.name, base.version)

    def get(self, tag: str) -> None:
        """Receive from downstream: `aggregate` this round's updates.

        Raises:
            ValueError: The tag is not `aggregate`.
        """
        if tag != TAG_AGGREGATE:
            raise ValueError(f"a top aggregator gets on {TAG_AGGREGATE!r}, not {tag!r}")
        self._aggregate_weights(tag)

    def put(self, tag: str) -> None:
        """Send downstream: `distribute` the global model.

        Raises:
            ValueError: The tag is not `distribute`.
        """
        if tag != TAG_DISTRIBUTE:
            raise ValueError(f"a top aggregator puts on {TAG_DISTRIBUTE!r}, not {tag!r}")
        self._distribute_weights(tag)

    def _distribute_weights(self, tag: str) -> None:
        channel = self._channel(tag)
        channel.await_join(timeout=self.settings.join_timeout)
        self.weights = self._model_weights()
        message = {MessageType.WEIGHTS: self.weights, MessageType.ROUND: self._round}
        self._round_ends = []
        for end in channel.ends():
            try:
                channel.send(end, message)
            except EndError as exc:
                logger.warning("round %d: %s; not waiting for it", self._round, exc)
                continue
            channel.set_end_property(end, "round_start_time", (self._round, datetime.now(UTC)))
            self._round_ends.append(end)

    def _aggregate_weights(self, tag: str) -> None:
        channel = self._channel(tag)
        updates = collect_updates(
            channel,
            self._round_ends,
            round_=self._round,
            timeout=self.settings.aggregation_timeout,
        )
        expected = len(self._round_ends)
        if updates.count < self.settings.min_trainers:
            raise QuorumError(
                f"round {self._round}: {updates.count} of {expected} trainers sent an update, "
                f"fewer than minTrainers={self.settings.min_trainers}"
            )
        logger.info(
            "round %d: aggregating %d of %d updates (%d samples)",
            self._round,
            updates.count,
            expected,
            updates.total,
        )
        self.weights = self.optimizer.do(self.weights, updates.mean())
        set_weights(self.model, self.weights)
        self.update_metrics({"aggregated_updates": updates.count})

    def increment_round(self) -> None:
        """Advance the round; the selector sees it through the channel property `round`."""
        self._round += 1
        self._work_done = self._round > self._rounds
        self._channel(TAG_DISTRIBUTE).set_property(PROP_ROUND, self._round)

    def inform_end_of_training(self) -> None:
        """Send end-of-training to every end of the distribute channel."""
        self._channel(TAG_DISTRIBUTE).broadcast({MessageType.EOT: True})
        logger.info("training done after %d rounds", self._rounds)

    def save_params(self) -> None:
        """Log the hyperparameters."""
        self.registry_client.save_params(self._hyperparameters())

    def save_model(self) -> None:
        """Register the final weights as a new version of the model `<job name>`."""
        version = self.registry_client.save_model(self.config.job.name, self._model_weights())
        logger.info("saved model %r version %d", self.config.job.name, version)

    def compose(self) -> None:
        """Build the aggregator's flow (see the module docstring)."""
        with Composer() as composer:
            self.composer = composer
            internal_init = Tasklet("internal_init", self.internal_init)
            load_data = Tasklet("load_data", self.load_data)
            initialize = Tasklet("initialize", self.initialize)
            load_base_model = Tasklet("load_base_model", self.load_base_model)
            distribute = Tasklet("distribute", self.put, TAG_DISTRIBUTE)
            aggregate = Tasklet("aggregate", self.get, TAG_AGGREGATE)
            train = Tasklet("train", self.train)
            evaluate = Tasklet("evaluate", self.evaluate)
            save_metrics = Tasklet("save_metrics", self.save_metrics)
            increment_round = Tasklet("increment_round", self.increment_round)
            end_of_training = Tasklet("inform_end_of_training", self.inform_end_of_training)
            save_params = Tasklet("save_params", self.save_params)
            save_model = Tasklet("save_model", self.save_model)

            loop = Loop(loop_check_fn=lambda: self._work_done)
            _ = (
                internal_init
                >> load_data
                >> initialize
                >> load_base_model
                >> loop(
                    distribute >> aggregate >> train >> evaluate >> save_metrics >> increment_round
                )
                >> end_of_training
                >> save_params
                >> save_model
            )

    @classmethod
    def get_func_tags(cls) -> list[str]:
        """`distribute` and `aggregate`."""
        return [TAG_DISTRIBUTE, TAG_AGGREGATE]
