"""The synchronous FL trainer.

Flow: `internal_init >> load_data >> initialize >> loop[fetch >> train >> evaluate >>
upload >> save_metrics]`, until the aggregator sends end-of-training.

Each round the trainer receives `{WEIGHTS: global weights, ROUND: r}` on the channel
tagged `fetch`, loads them into the model, trains, and sends `{WEIGHTS: local - global,
DATASET_SIZE: n, MODEL_VERSION: r}` on the channel tagged `upload`, after the configured
privacy treated the delta. `{EOT: True}` ends the loop right after `fetch`.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Final

from flame.channel import VAL_CH_STATE_SEND
from flame.mode.composer import Composer
from flame.mode.horizontal.syncfl.protocol import Upstream
from flame.mode.message import MessageType
from flame.mode.role import Role
from flame.mode.tasklet import Loop, Tasklet
from flame.mode.weights import Weights, set_weights, subtract
from flame.optimizer import Regularizer
from flame.optimizers import create_optimizer
from flame.privacy import Privacy, create_privacy
from flame.registries import registry_from_config

__all__ = ["TAG_FETCH", "TAG_UPLOAD", "Trainer"]

logger = logging.getLogger(__name__)

TAG_FETCH: Final = "fetch"
TAG_UPLOAD: Final = "upload"


class Trainer(Role):
    """Trains the global model on local data each round and uploads the change.

    User code assigns `config`, `model` and `dataset_size` in `__init__` and implements
    `initialize`, `load_data`, `train` and `evaluate`. `dataset_size` (the number of
    samples trained on) weighs this trainer's update in the average.

    Attributes:
        model: A torch module, or a dict of NumPy arrays (user-assigned).
        dataset_size: Samples trained on this round (user-assigned).
        weights: The global weights of the current round, as received.
        regularizer: The optimizer's loss term: `self.regularizer.get_term(w=..., w_t=...)`.
        privacy: Applied to the delta before upload.
    """

    required_attributes: ClassVar[tuple[str, ...]] = ("config", "model", "dataset_size")

    model: Any
    dataset_size: int
    weights: Weights | None
    regularizer: Regularizer
    privacy: Privacy
    fetch_success: bool
    _work_done: bool
    _upstream: Upstream

    def internal_init(self) -> None:
        """Set up the regularizer and privacy, join the channels, start the registry run."""
        # The pluggables first: a configuration error stops the task before it joins.
        optimizer = self.config.optimizer
        self.regularizer = create_optimizer(optimizer.sort, **optimizer.kwargs).regularizer
        self.privacy = create_privacy(self.config.privacy.sort, **self.config.privacy.kwargs)
        self._init_common()
        self._upstream = Upstream(
            join_timeout=self.settings.join_timeout, fetch_timeout=self.settings.fetch_timeout
        )
        self.registry_client = registry_from_config(self.config)
        self.registry_client.setup_run()
        self.weights = None
        self.fetch_success = False
        self._round = 1
        self._work_done = False

    def get(self, tag: str) -> None:
        """Receive from upstream: `fetch` the global model.

        Raises:
            ValueError: The tag is not `fetch`.
        """
        if tag != TAG_FETCH:
            raise ValueError(f"a trainer gets on {TAG_FETCH!r}, not {tag!r}")
        self._fetch_weights(tag)

    def put(self, tag: str) -> None:
        """Send upstream: `upload` this round's delta.

        Raises:
            ValueError: The tag is not `upload`.
        """
        if tag != TAG_UPLOAD:
            raise ValueError(f"a trainer puts on {TAG_UPLOAD!r}, not {tag!r}")
        self._send_weights(tag)

    def _fetch_weights(self, tag: str) -> None:
        message = self._upstream.receive_global(self._channel(tag))
        if message is None:
            self._work_done = True
            return
        self.weights = message[MessageType.WEIGHTS]
        set_weights(self.model, self.weights)
        self._round = message.get(MessageType.ROUND, self._round)
        self.fetch_success = True
        logger.debug("round %d: received the global model", self._round)

    def _send_weights(self, tag: str) -> None:
        if self.weights is None:
            raise RuntimeError("upload before any fetch: there is no global model to diff")
        channel = self._channel(tag)
        end = self._upstream.end(channel, VAL_CH_STATE_SEND)
        if self.dataset_size <= 0:
            logger.warning(
                "dataset_size is %r: the aggregator ignores this update", self.dataset_size
            )
        delta = self.privacy.apply(subtract(self._model_weights(), self.weights))
        self.regularizer.update()
        message = {
            MessageType.WEIGHTS: delta,
            MessageType.DATASET_SIZE: self.dataset_size,
            MessageType.MODEL_VERSION: self._round,
        }
        channel.send(end, message)
        logger.debug("round %d: sent the delta of %d samples", self._round, self.dataset_size)

    def compose(self) -> None:
        """Build the trainer's flow (see the module docstring)."""
        with Composer() as composer:
            self.composer = composer
            internal_init = Tasklet("internal_init", self.internal_init)
            load_data = Tasklet("load_data", self.load_data)
            initialize = Tasklet("initialize", self.initialize)
            fetch = Tasklet("fetch", self.get, TAG_FETCH)
            train = Tasklet("train", self.train)
            evaluate = Tasklet("evaluate", self.evaluate)
            upload = Tasklet("upload", self.put, TAG_UPLOAD)
            save_metrics = Tasklet("save_metrics", self.save_metrics)

            loop = Loop(loop_check_fn=lambda: self._work_done)
            _ = (
                internal_init
                >> load_data
                >> initialize
                >> loop(fetch >> train >> evaluate >> upload >> save_metrics)
            )

    @classmethod
    def get_func_tags(cls) -> list[str]:
        """`fetch` and `upload`."""
        return [TAG_FETCH, TAG_UPLOAD]
