"""The message exchanges of a synchronous round, shared by the roles.

`Upstream` takes the global model (or end-of-training) from the aggregator.
`collect_updates` takes one round's updates from downstream and folds them into a running
weighted mean as they arrive (`Channel.recv_fifo`, one at a time), so memory holds one
running sum whatever the number of trainers. The round has one deadline: when it passes,
or when the ends still awaited have left, the round goes on with the updates that arrived.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from flame.channel import VAL_CH_STATE_RECV, Channel
from flame.errors import (
    ChannelError,
    EndError,
    FlameSDKError,
    MessageError,
    ReceiveTimeoutError,
)
from flame.mode.message import MessageType
from flame.mode.weights import WeightsAccumulator

__all__ = ["QuorumError", "Upstream", "collect_updates"]

logger = logging.getLogger(__name__)


class QuorumError(FlameSDKError):
    """Fewer updates than `minTrainers` arrived in a round."""


class Upstream:
    """The aggregator a trainer (or middle aggregator) talks to, per channel.

    It is chosen once, when it first joined, and then kept: an aggregator that broadcast
    end-of-training and left at once is no longer on the channel, but its last message can
    still be read from it by id. (The original looked it up anew each time, and missed it.)

    Args:
        join_timeout: Seconds to wait for the aggregator to join.
        fetch_timeout: Seconds to wait for its next message.
    """

    def __init__(self, *, join_timeout: float, fetch_timeout: float) -> None:
        self.join_timeout = join_timeout
        self.fetch_timeout = fetch_timeout
        self._ends: dict[str, str] = {}

    def end(self, channel: Channel, state: str) -> str:
        """The aggregator's end on `channel`, waiting for it to join the first time.

        Raises:
            JoinTimeoutError: No end joined in time.
            ChannelError: The end left again before it could be chosen.
        """
        end = self._ends.get(channel.name())
        if end is None:
            channel.await_join(timeout=self.join_timeout)
            end = channel.one_end(state)
            if end is None:
                raise ChannelError(channel.name(), f"no {channel.other_role()} is on the channel")
            self._ends[channel.name()] = end
        return end

    def receive_global(self, channel: Channel) -> Mapping[Any, Any] | None:
        """Receive the next global model from the aggregator.

        Returns:
            The message, `{WEIGHTS: weights, ROUND: r}`; None at end-of-training.

        Raises:
            JoinTimeoutError: No aggregator joined in time.
            ReceiveTimeoutError: No message came in time.
            EndLeftError: The aggregator left without ending the training.
            MessageError: The message has neither weights nor end-of-training.
        """
        end = self.end(channel, VAL_CH_STATE_RECV)
        try:
            message, _ = channel.recv(end, timeout=self.fetch_timeout)
        except ReceiveTimeoutError as exc:
            exc.add_note("raise the hyperparameter fetchTimeout if rounds take longer")
            raise
        return _global_or_none(message, channel.name(), end)


def _global_or_none(message: Mapping[Any, Any], channel: str, end: str) -> Mapping[Any, Any] | None:
    # Typed as a Mapping of Any: received messages also answer lookups by MessageType.
    if message.get(MessageType.EOT):
        return None
    if MessageType.WEIGHTS not in message:
        raise MessageError(channel, f"{end} sent neither weights nor end-of-training")
    return message


def collect_updates(
    channel: Channel, ends: Sequence[str], *, round_: int, timeout: float
) -> WeightsAccumulator:
    """Receive one update from each end and fold them into a weighted mean of deltas.

    An update is a message `{WEIGHTS: delta, DATASET_SIZE: n, MODEL_VERSION: round}`.
    Updates from another round (late ones left queued by an earlier deadline) are
    dropped and the end is awaited again; an update with no weights or no samples (a
    middle aggregator without trainers) counts as answered but adds nothing.

    Args:
        channel: The channel the updates come on.
        ends: The ends that were sent this round's model.
        round_: The current round.
        timeout: Seconds, for the whole collection.

    Returns:
        The accumulated updates; `count` of them, `total` samples.
    """
    accumulator = WeightsAccumulator()
    pending = list(ends)
    deadline = time.monotonic() + timeout
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _log_missing(channel, pending, timeout)
            break
        try:
            message, (end, _) = next(channel.recv_fifo(pending, first_k=1, timeout=remaining))
        except ReceiveTimeoutError:
            _log_missing(channel, pending, timeout)
            break
        except EndError as exc:
            if exc.end_id not in pending:
                raise
            logger.warning("round %d: %s; going on without it", round_, exc)
            pending.remove(exc.end_id)
            continue
        except MessageError as exc:
            # The end is not known here: it stays awaited until the deadline.
            logger.warning("round %d: dropped a malformed update: %s", round_, exc)
            continue
        pending.remove(end)
        if not _fold(accumulator, message, end, round_):
            pending.append(end)
    return accumulator


def _fold(
    accumulator: WeightsAccumulator, message: Mapping[Any, Any], end: str, round_: int
) -> bool:
    """Add one update; False if it belongs to another round, so the end is awaited again."""
    version = message.get(MessageType.MODEL_VERSION)
    if version is not None and version != round_:
        logger.warning("round %d: dropped a late update of round %s from %s", round_, version, end)
        return False
    delta = message.get(MessageType.WEIGHTS)
    size = message.get(MessageType.DATASET_SIZE)
    if not isinstance(delta, Mapping) or not _is_count(size):
        logger.info("round %d: %s sent no update (dataset size %r)", round_, end, size)
        return True
    try:
        accumulator.add(delta, size)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        logger.warning("round %d: dropped the update of %s: %s", round_, end, exc)
    return True


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _log_missing(channel: Channel, pending: Sequence[str], timeout: float) -> None:
    logger.warning(
        "channel %r: no update from %s within %g s (hyperparameter aggregationTimeout); "
        "aggregating what arrived",
        channel.name(),
        sorted(pending),
        timeout,
    )
