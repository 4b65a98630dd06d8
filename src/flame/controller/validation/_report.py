"""Collecting field violations and raising them as one domain error."""

from __future__ import annotations

import json
from collections.abc import Sequence

from flame.rpc.errors import FieldViolation, FlameError, InvalidArgument

# Violations travel in the `grpc-status-details-bin` trailer. gRPC refuses trailers
# above 16 KiB (and some above 8 KiB), and the client then sees RESOURCE_EXHAUSTED
# with no reason at all: 200 schema violations (27 KB) were measured to fail. So
# only the first violations that fit this budget are sent; the message and the
# `violation_count` metadata still give the total.
_DETAIL_BUDGET_BYTES = 4096
# Field paths and descriptions embed user strings (zip entry names may be 64 KiB).
_MAX_TEXT_CHARS = 200


def map_key(path: str, key: str) -> str:
    """Return the field path of one map entry, e.g. `job.data_spec[0].dataset_groups["eu"]`."""
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def raise_if_any(
    reason: str,
    subject: str,
    violations: Sequence[FieldViolation],
    error: type[FlameError] = InvalidArgument,
) -> None:
    """Raise one `error` carrying `violations`, unless there are none.

    Args:
        reason: The ErrorInfo reason, e.g. `SCHEMA_INVALID`.
        subject: Start of the message, e.g. `invalid schema`.
        violations: Every violation found, in request order.
        error: The domain error type to raise.

    Raises:
        FlameError: `error` with the violations that fit the transport budget.
    """
    if not violations:
        return
    shown = _within_budget(violations)
    first = shown[0]
    message = f"{subject}: {first.field}: {first.description}"
    if len(violations) > 1:
        message += f" (and {len(violations) - 1} more)"
    raise error(
        reason,
        message,
        metadata={"violation_count": str(len(violations))},
        violations=shown,
    )


def _within_budget(violations: Sequence[FieldViolation]) -> list[FieldViolation]:
    shown: list[FieldViolation] = []
    used = 0
    for violation in violations:
        clipped = FieldViolation(_clip(violation.field), _clip(violation.description))
        used += len(clipped.field.encode()) + len(clipped.description.encode())
        if shown and used > _DETAIL_BUDGET_BYTES:
            break
        shown.append(clipped)
    return shown


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_TEXT_CHARS else text[: _MAX_TEXT_CHARS - 1] + "…"
