"""Validation of datasets and resolution of their realm to a compute."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from flame.compute.v1 import compute_pb2
from flame.controller.validation._report import raise_if_any
from flame.data.v1 import dataset_pb2
from flame.rpc.errors import FailedPrecondition, FieldViolation

__all__ = ["DATASET_INVALID", "REALM_NOT_RESOLVED", "resolve_realm", "validate_dataset"]

DATASET_INVALID = "DATASET_INVALID"
REALM_NOT_RESOLVED = "REALM_NOT_RESOLVED"

_SCHEMES = ("file", "http", "https", "s3")
_REGION_PREFIX = "default/"
# The compute id public datasets fall back to when no compute serves their region.
_DEFAULT_COMPUTE = "default"


def validate_dataset(ds: dataset_pb2.Dataset) -> None:
    """Check the user-set fields of a dataset before it is stored.

    Field paths start at `dataset`, the field of `CreateDatasetRequest`.

    Args:
        ds: The dataset as sent by the user.

    Raises:
        InvalidArgument: reason `DATASET_INVALID`, with one violation per problem.
    """
    violations: list[FieldViolation] = []
    if problem := _url_problem(ds.url):
        violations.append(FieldViolation("dataset.url", problem))
    if not ds.data_format:
        violations.append(FieldViolation("dataset.data_format", "data format is required"))
    if not ds.realm:
        violations.append(FieldViolation("dataset.realm", "realm is required"))
    raise_if_any(DATASET_INVALID, "invalid dataset", violations)


def resolve_realm(
    realm: str, is_public: bool, computes: Sequence[compute_pb2.Compute]
) -> tuple[str, str]:
    """Resolve a dataset's realm to the full realm path and the compute running its tasks.

    A realm starting with `default/` is a region: the first compute (by id) whose
    region equals it serves the dataset, and its id is appended to the realm. A
    public dataset in a region no compute serves keeps its realm on compute
    `default`. Any other realm is a compute id, resolved to `<region>/<id>`.

    Args:
        realm: The dataset's realm as sent.
        is_public: Whether the dataset is public.
        computes: The registered computes.

    Returns:
        The resolved realm and the compute id.

    Raises:
        FailedPrecondition: reason `REALM_NOT_RESOLVED` when no compute matches
            (for a region, only for private datasets).
    """
    if realm.startswith(_REGION_PREFIX):
        serving = sorted(c.id for c in computes if c.region == realm)
        if serving:
            return f"{realm}/{serving[0]}", serving[0]
        if is_public:
            return realm, _DEFAULT_COMPUTE
        raise _unresolved(realm, f"no compute serves region {realm!r}")
    compute = next((c for c in computes if c.id == realm), None)
    if compute is None:
        raise _unresolved(
            realm,
            f"no compute {realm!r} is registered (a region realm starts with {_REGION_PREFIX!r})",
        )
    return f"{compute.region}/{compute.id}", compute.id


def _unresolved(realm: str, description: str) -> FailedPrecondition:
    return FailedPrecondition(
        REALM_NOT_RESOLVED,
        description,
        metadata={"realm": realm},
        violations=[FieldViolation("dataset.realm", description)],
    )


def _url_problem(url: str) -> str | None:
    if not url:
        return "url is required"
    try:
        parts = urlsplit(url)
    except ValueError as error:  # e.g. an unclosed IPv6 bracket
        return f"url is malformed: {error}"
    if parts.scheme.lower() not in _SCHEMES:
        return f"url scheme {parts.scheme!r} is not one of {', '.join(_SCHEMES)}"
    if not (parts.netloc or parts.path):
        return "url has no location after its scheme"
    return None
