"""The synchronous FL middle aggregator of a hierarchy (top -> middles -> trainers).

Flow: `internal_init >> load_data >> initialize >> loop[fetch >> distribute >> aggregate
>> upload >> evaluate >> update_round] >> inform_end_of_training`.

Each round it receives the global model from the top aggregator (`fetch`), forwards it to
its trainers (`distribute`), folds their deltas into a weighted mean as they arrive
(`aggregate`), and uploads that mean with the summed sample count (`upload`). The top
aggregator weighs it by that count, so two tiers give exactly flat FedAvg's mean delta;
the configured optimizer acts once, at the top.

A middle aggregator never fails a round for its trainers: when none joined, none
answered in time, or fewer than `minTrainers` did, it uploads an empty update
(`{WEIGHTS: None, DATASET_SIZE: 0}`) so that the top aggregator decides with its own
quorum instead of waiting for its deadline.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from flame.channel import VAL_CH_STATE_SEND
from flame.errors import EndError, JoinTimeoutError
from flame.mode.composer import Composer
from flame.mode.horizontal.syncfl.protocol import Upstream, collect_updates
from flame.mode.horizontal.syncfl.top_aggregator import TAG_AGGREGATE, TAG_DISTRIBUTE
from flame.mode.horizontal.syncfl.trainer import TAG_FETCH, TAG_UPLOAD
from flame.mode.message import MessageType
from flame.mode.role import Role
from flame.mode.tasklet import Loop, Tasklet
from flame.mode.weights import Weights
from flame.selector import PROP_ROUND

__all__ = ["MiddleAggregator"]

logger = logging.getLogger(__name__)


class MiddleAggregator(Role):
    """Relays the global model down and its trainers' mean delta up.

    User code assigns `config` in `__init__` and implements `initialize`, `load_data`,
    `train` and `evaluate` (usually all empty: this role has no model of its own).

    Attributes:
        weights: The global weights received this round.
    """

    required_attributes: ClassVar[tuple[str, ...]] = ("config",)

    weights: Weights | None
    _work_done: bool
    _upstream: Upstream
    _round_ends: list[str]
    _update: tuple[Weights, int] | None

    def internal_init(self) -> None:
        """Join the channels."""
        self._init_common()
        self._upstream = Upstream(
            join_timeout=self.settings.join_timeout, fetch_timeout=self.settings.fetch_timeout
        )
        self.weights = None
        self._round = 1
        self._work_done = False
        self._round_ends = []
        self._update = None

    def get(self, tag: str) -> None:
        """`fetch` the global model from the top, or `aggregate` the trainers' updates.

        Raises:
            ValueError: The tag is neither.
        """
        if tag == TAG_FETCH:
            self._fetch_weights(tag)
        elif tag == TAG_AGGREGATE:
            self._aggregate_weights(tag)
        else:
            raise ValueError(f"a middle aggregator gets on fetch or aggregate, not {tag!r}")

    def put(self, tag: str) -> None:
        """`distribute` the global model to the trainers, or `upload` the mean delta.

        Raises:
            ValueError: The tag is neither.
        """
        if tag == TAG_DISTRIBUTE:
            self._distribute_weights(tag)
        elif tag == TAG_UPLOAD:
            self._send_weights(tag)
        else:
            raise ValueError(f"a middle aggregator puts on distribute or upload, not {tag!r}")

    def _fetch_weights(self, tag: str) -> None:
        message = self._upstream.receive_global(self._channel(tag))
        if message is None:
            self._work_done = True
            return
        self.weights = message[MessageType.WEIGHTS]
        self._round = message.get(MessageType.ROUND, self._round)

    def _distribute_weights(self, tag: str) -> None:
        channel = self._channel(tag)
        self._round_ends = []
        try:
            channel.await_join(timeout=self.settings.join_timeout)
        except JoinTimeoutError:
            logger.warning("round %d: no trainer joined; uploading an empty update", self._round)
            return
        message = {MessageType.WEIGHTS: self.weights, MessageType.ROUND: self._round}
        for end in channel.ends():
            try:
                channel.send(end, message)
            except EndError as exc:
                logger.warning("round %d: %s; not waiting for it", self._round, exc)
                continue
            self._round_ends.append(end)

    def _aggregate_weights(self, tag: str) -> None:
        updates = collect_updates(
            self._channel(tag),
            self._round_ends,
            round_=self._round,
            timeout=self.settings.aggregation_timeout,
        )
        self._update = None
        if updates.count >= self.settings.min_trainers:
            self._update = (updates.mean(), updates.total)
        elif self._round_ends:
            logger.warning(
                "round %d: %d of %d trainers sent an update, fewer than minTrainers=%d; "
                "uploading an empty update",
                self._round,
                updates.count,
                len(self._round_ends),
                self.settings.min_trainers,
            )

    def _send_weights(self, tag: str) -> None:
        channel = self._channel(tag)
        end = self._upstream.end(channel, VAL_CH_STATE_SEND)
        delta, total = self._update if self._update is not None else (None, 0)
        message = {
            MessageType.WEIGHTS: delta,
            MessageType.DATASET_SIZE: total,
            MessageType.MODEL_VERSION: self._round,
        }
        channel.send(end, message)

    def update_round(self) -> None:
        """Tell the trainers' channel selector that the round advanced."""
        self._channel(TAG_DISTRIBUTE).set_property(PROP_ROUND, self._round + 1)

    def inform_end_of_training(self) -> None:
        """Send end-of-training to every trainer."""
        self._channel(TAG_DISTRIBUTE).broadcast({MessageType.EOT: True})

    def compose(self) -> None:
        """Build the middle aggregator's flow (see the module docstring)."""
        with Composer() as composer:
            self.composer = composer
            internal_init = Tasklet("internal_init", self.internal_init)
            load_data = Tasklet("load_data", self.load_data)
            initialize = Tasklet("initialize", self.initialize)
            fetch = Tasklet("fetch", self.get, TAG_FETCH)
            distribute = Tasklet("distribute", self.put, TAG_DISTRIBUTE)
            aggregate = Tasklet("aggregate", self.get, TAG_AGGREGATE)
            upload = Tasklet("upload", self.put, TAG_UPLOAD)
            evaluate = Tasklet("evaluate", self.evaluate)
            update_round = Tasklet("update_round", self.update_round)
            end_of_training = Tasklet("inform_end_of_training", self.inform_end_of_training)

            loop = Loop(loop_check_fn=lambda: self._work_done)
            _ = (
                internal_init
                >> load_data
                >> initialize
                >> loop(fetch >> distribute >> aggregate >> upload >> evaluate >> update_round)
                >> end_of_training
            )

    @classmethod
    def get_func_tags(cls) -> list[str]:
        """`distribute` and `aggregate` downstream, `fetch` and `upload` upstream."""
        return [TAG_DISTRIBUTE, TAG_AGGREGATE, TAG_FETCH, TAG_UPLOAD]
