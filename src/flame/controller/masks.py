"""FieldMask handling for Update calls."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import field_mask_pb2

from flame.rpc.errors import FieldViolation, InvalidArgument

__all__ = ["mask_paths"]


def mask_paths(mask: field_mask_pb2.FieldMask, mutable: Sequence[str]) -> list[str]:
    """The paths an update changes: the mask's, each of which must be mutable,
    or every mutable path when the mask is empty."""
    if not mask.paths:
        return list(mutable)
    wrong = [path for path in mask.paths if path not in mutable]
    if wrong:
        raise InvalidArgument(
            "INVALID_UPDATE_MASK",
            f"update_mask may only name {', '.join(mutable)}",
            violations=[
                FieldViolation(
                    f"update_mask.paths[{list(mask.paths).index(path)}]",
                    f"'{path}' cannot be updated",
                )
                for path in wrong
            ],
        )
    return list(dict.fromkeys(mask.paths))
