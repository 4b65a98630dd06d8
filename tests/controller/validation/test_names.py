"""validate_identifier and validate_name: the formats of ids and of topology names."""

from __future__ import annotations

import pytest

from flame.controller.validation import IdentifierKind, validate_identifier, validate_name
from flame.rpc.errors import FieldViolation

KINDS: list[IdentifierKind] = ["design id", "compute id", "user id"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", ["mnist", "0", "hier_mnist-2", "a" * 63])
def test_lowercase_identifiers_are_valid(kind: IdentifierKind, value: str) -> None:
    assert validate_identifier(value, "design.id", kind) is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", ["", "Mnist", "-mnist", "_a", "a b", "a/b", "a" * 64, "mnist\n"])
def test_malformed_identifiers_are_rejected(kind: IdentifierKind, value: str) -> None:
    violation = validate_identifier(value, "design.id", kind)
    assert violation is not None
    assert violation.field == "design.id"
    assert violation.description.startswith(kind)


def test_an_empty_identifier_reads_as_required() -> None:
    assert validate_identifier("", "user.id", "user id") == FieldViolation(
        "user.id", "user id is required"
    )


def test_only_user_ids_may_hold_dots() -> None:
    # As published: user.proto allows `.`, design.proto and compute.proto do not.
    assert validate_identifier("jane.doe", "user.id", "user id") is None
    assert validate_identifier("my.design", "design.id", "design id") is not None
    assert validate_identifier("eu.1", "compute.id", "compute id") is not None


@pytest.mark.parametrize("value", ["Trainer", "top-aggregator", "v1.2_x"])
def test_names_may_hold_capitals_and_dots(value: str) -> None:
    assert validate_name(value, "schema.roles[0].name", "role") is None


@pytest.mark.parametrize("value", ["", ".x", "a b", "a/b", "a+b", "a#", "x" * 64])
def test_names_unsafe_as_folders_or_topic_levels_are_rejected(value: str) -> None:
    violation = validate_name(value, "schema.channels[0].name", "channel")
    assert violation is not None
    assert violation.field == "schema.channels[0].name"
