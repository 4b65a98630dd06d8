"""The keys of the messages roles exchange, with the original SDK's names and values.

A message is a dict keyed by these members, e.g. `{MessageType.WEIGHTS: delta,
MessageType.DATASET_SIZE: 600}`. On the wire a key travels as its name; a received
message answers lookups by member or by name.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["MessageType"]


class MessageType(Enum):
    """Message keys; the comment gives the value's type and who sends it."""

    WEIGHTS = 1  # weights dict or None: global weights down, deltas up
    EOT = 2  # bool: end of training
    DATASET_SIZE = 3  # int: sample count, the aggregation weight
    ROUND = 4  # int: the current round
    MEMBER_DIGEST = 5  # str: distributed training membership fingerprint
    RING_WEIGHTS = 6  # weights: committer -> newly joined ring member
    NEW_TRAINER = 7  # bool: "I have no model yet"
    IS_COMMITTER = 8  # bool: distributed member check; hybrid aggregator -> trainer
    MODEL_VERSION = 9  # int: the round/version an update was trained from
    STAT_UTILITY = 10  # number: Oort statistical utility
    COORDINATED_ENDS = 11  # list[str] or str: the ends a coordinator assigns
    DATASAMPLER_METADATA = 12  # dict: datasampler exchange
    META_INFO_REQ = 13  # "": coordinator liveness probe
    META_INFO_RES = 14  # str: its reply
    ALPHA_ADPT = 15  # float: FedDyn per-trainer alpha
    REQ_COORDINATED_ENDS = 16  # (channel tag, state, end states): coordinated async
    RES_COORDINATED_ENDS = 17  # list[str]: its reply
    HYBRID_METADATA = 18  # dict: hybrid ring info / group id
    BIAS = 19  # FedGFT bias terms
    CONTROL_WEIGHTS = 20  # weights dict: SCAFFOLD control variates
    CLIENT_WEIGHT = 21  # float: SCAFFOLD per-trainer weight
