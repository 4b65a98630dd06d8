"""Formats of identifiers and of names that end up in folders and topics."""

from __future__ import annotations

import re
from typing import Literal

from flame.rpc.errors import FieldViolation

__all__ = ["IdentifierKind", "NameKind", "validate_identifier", "validate_name"]

IdentifierKind = Literal["design id", "compute id", "user id"]
NameKind = Literal["role", "channel", "group"]

# The formats published in the contracts: design.proto and compute.proto allow no
# dot, user.proto does.
_IDENTIFIER_FORMATS: dict[IdentifierKind, str] = {
    "design id": r"[a-z0-9][a-z0-9_-]{0,62}",
    "compute id": r"[a-z0-9][a-z0-9_-]{0,62}",
    "user id": r"[a-z0-9][a-z0-9_.-]{0,62}",
}
# Role names become folder names on agents; channel and group names become parts
# of MQTT topics, where `/`, `+` and `#` would change the routing.
_NAME_FORMAT = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"


def validate_identifier(value: str, field: str, kind: IdentifierKind) -> FieldViolation | None:
    """Check a design, compute or user id against its published format.

    Args:
        value: The id to check.
        field: Field path to report, e.g. `job.design_id`.
        kind: Which kind of id `value` is; it selects the format.

    Returns:
        A violation of `field`, or None when the id is well formed.
    """
    return _check(value, field, kind, _IDENTIFIER_FORMATS[kind])


def validate_name(value: str, field: str, kind: NameKind) -> FieldViolation | None:
    """Check a role, channel or group name: safe as a folder name and a topic level.

    Args:
        value: The name to check.
        field: Field path to report, e.g. `schema.roles[0].name`.
        kind: What `value` names.

    Returns:
        A violation of `field`, or None when the name is well formed.
    """
    return _check(value, field, f"{kind} name", _NAME_FORMAT)


def _check(value: str, field: str, what: str, pattern: str) -> FieldViolation | None:
    if not value:
        return FieldViolation(field, f"{what} is required")
    if re.fullmatch(pattern, value) is None:
        return FieldViolation(field, f"{what} {value!r} does not match {pattern}")
    return None
