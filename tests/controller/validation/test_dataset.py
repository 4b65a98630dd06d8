"""validate_dataset and resolve_realm (the original rules of flame-control-plane §2.4)."""

from __future__ import annotations

import pytest

from flame.compute.v1 import compute_pb2
from flame.controller.validation import (
    DATASET_INVALID,
    REALM_NOT_RESOLVED,
    resolve_realm,
    validate_dataset,
)
from flame.data.v1 import dataset_pb2
from flame.rpc.errors import FailedPrecondition
from tests.controller.validation.helpers import example_json, fields, rejected
from tests.support.files import dataset_from_dict

# fiab registers one compute, `default`, in region `default/us`.
FIAB = [compute_pb2.Compute(id="default", region="default/us")]


def dataset(**changes: str) -> dataset_pb2.Dataset:
    ds = dataset_from_dict(example_json("mnist", "dataset.json"))
    for name, value in changes.items():
        setattr(ds, name, value)
    return ds


def dataset_violations(ds: dataset_pb2.Dataset) -> list[str]:
    return fields(rejected(lambda: validate_dataset(ds), DATASET_INVALID))


def unresolved(realm: str, is_public: bool, computes: list[compute_pb2.Compute]) -> list[str]:
    return fields(
        rejected(
            lambda: resolve_realm(realm, is_public, computes),
            REALM_NOT_RESOLVED,
            FailedPrecondition,
        )
    )


@pytest.mark.parametrize(
    ("example", "file_name"),
    [
        ("mnist", "dataset.json"),
        ("hier_mnist", "dataset_eu_germany.json"),
        ("hier_mnist", "dataset_na_us.json"),
    ],
)
def test_the_original_example_datasets_are_valid(example: str, file_name: str) -> None:
    validate_dataset(dataset_from_dict(example_json(example, file_name)))


@pytest.mark.parametrize(
    "url", ["file:///data/mnist.npz", "s3://bucket/mnist", "HTTPS://example.com/x", "http://h"]
)
def test_urls_of_the_supported_schemes_are_valid(url: str) -> None:
    validate_dataset(dataset(url=url))


@pytest.mark.parametrize(
    "url", ["", "ftp://example.com/x", "/data/mnist.npz", "https://", "s3://", "http://[::1"]
)
def test_urls_without_a_supported_scheme_and_location_are_rejected(url: str) -> None:
    assert dataset_violations(dataset(url=url)) == ["dataset.url"]


def test_data_format_is_required() -> None:
    assert dataset_violations(dataset(data_format="")) == ["dataset.data_format"]


def test_realm_is_required() -> None:
    assert dataset_violations(dataset(realm="")) == ["dataset.realm"]


def test_every_dataset_violation_is_reported_at_once() -> None:
    assert dataset_violations(dataset_pb2.Dataset()) == [
        "dataset.url",
        "dataset.data_format",
        "dataset.realm",
    ]


# --- resolve_realm: the fiab examples of the specification --------------------


def test_a_public_dataset_in_an_unserved_region_keeps_its_realm_on_compute_default() -> None:
    assert resolve_realm("default/us/west", True, FIAB) == ("default/us/west", "default")


def test_a_private_dataset_in_an_unserved_region_is_not_resolved() -> None:
    assert unresolved("default/us/west", False, FIAB) == ["dataset.realm"]


@pytest.mark.parametrize("is_public", [True, False])
def test_a_served_region_resolves_to_its_compute(is_public: bool) -> None:
    assert resolve_realm("default/us", is_public, FIAB) == ("default/us/default", "default")


def test_a_region_served_by_several_computes_takes_the_lowest_id() -> None:
    computes = [
        compute_pb2.Compute(id="west", region="default/us"),
        compute_pb2.Compute(id="east", region="default/us"),
    ]
    assert resolve_realm("default/us", False, computes) == ("default/us/east", "east")


def test_a_compute_id_resolves_to_its_region() -> None:
    assert resolve_realm("default", False, FIAB) == ("default/us/default", "default")


@pytest.mark.parametrize("is_public", [True, False])
def test_an_unknown_compute_id_is_not_resolved(is_public: bool) -> None:
    assert unresolved("eu1", is_public, FIAB) == ["dataset.realm"]
