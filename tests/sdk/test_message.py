"""MessageType keeps the original names and values."""

from __future__ import annotations

from flame.mode.message import MessageType

ORIGINAL = [
    "WEIGHTS",
    "EOT",
    "DATASET_SIZE",
    "ROUND",
    "MEMBER_DIGEST",
    "RING_WEIGHTS",
    "NEW_TRAINER",
    "IS_COMMITTER",
    "MODEL_VERSION",
    "STAT_UTILITY",
    "COORDINATED_ENDS",
    "DATASAMPLER_METADATA",
    "META_INFO_REQ",
    "META_INFO_RES",
    "ALPHA_ADPT",
    "REQ_COORDINATED_ENDS",
    "RES_COORDINATED_ENDS",
    "HYBRID_METADATA",
    "BIAS",
    "CONTROL_WEIGHTS",
    "CLIENT_WEIGHT",
]


def test_names_and_values_are_the_originals() -> None:
    assert [(member.name, member.value) for member in MessageType] == [
        (name, number) for number, name in enumerate(ORIGINAL, start=1)
    ]
