"""Datasets: CRUD, realm resolution, field masks, pagination, validation and the
visibility of private and public datasets across users."""

from __future__ import annotations

import pytest
from google.protobuf import field_mask_pb2

from flame.compute.v1 import compute_pb2
from flame.data.v1 import dataset_pb2
from flame.data.v1 import dataset_service_pb2 as pb
from flame.job.v1 import job_service_pb2 as job_pb
from tests.controlplane.helpers import (
    Client,
    Code,
    check_pagination,
    create_job,
    expect_foreign_token,
    expect_hidden,
    expect_refusal,
    prepare_example,
    unchanged,
    unique,
    violation_of,
)

pytestmark = pytest.mark.integration


def _dataset(**fields: object) -> dataset_pb2.Dataset:
    values: dict[str, object] = {
        "name": "digits",
        "url": f"https://example.org/{unique('data')}.npz",
        "data_format": "npz",
        "realm": "default/nowhere/west",  # served by no compute: public datasets only
        "is_public": True,
    }
    values.update(fields)
    return dataset_pb2.Dataset(**values)  # type: ignore[arg-type]


def _create(client: Client, dataset: dataset_pb2.Dataset) -> dataset_pb2.Dataset:
    return client.datasets.CreateDataset(pb.CreateDatasetRequest(dataset=dataset)).dataset


def _get(client: Client, dataset_id: str) -> dataset_pb2.Dataset:
    return client.datasets.GetDataset(pb.GetDatasetRequest(dataset_id=dataset_id)).dataset


def _update(client: Client, dataset: dataset_pb2.Dataset, *paths: str) -> dataset_pb2.Dataset:
    mask = field_mask_pb2.FieldMask(paths=list(paths))
    return client.datasets.UpdateDataset(
        pb.UpdateDatasetRequest(dataset=dataset, update_mask=mask)
    ).dataset


def _listed(client: Client, *, include_public: bool) -> list[str]:
    request = pb.ListDatasetsRequest(include_public=include_public, page_size=1000)
    return [d.id for d in client.datasets.ListDatasets(request).datasets]


# --- CRUD and realm resolution -----------------------------------------------------


def test_dataset_lifecycle(alice: Client, site: compute_pb2.Compute) -> None:
    created = _create(
        alice, _dataset(realm=site.region, is_public=False, owner="x", compute_id="y", id="z")
    )
    assert len(created.id) == 24 and created.owner == alice.user_id
    assert created.realm == f"{site.region}/{site.id}" and created.compute_id == site.id
    assert created.create_time.seconds > 0 and created.update_time == created.create_time
    assert _get(alice, created.id) == created

    alice.datasets.DeleteDataset(pb.DeleteDatasetRequest(dataset_id=created.id))
    for call in (
        lambda: _get(alice, created.id),
        lambda: alice.datasets.DeleteDataset(pb.DeleteDatasetRequest(dataset_id=created.id)),
    ):
        expect_refusal(call, Code.NOT_FOUND, "DATASET_NOT_FOUND")
    expect_refusal(lambda: _get(alice, "not-an-object-id"), Code.NOT_FOUND, "DATASET_NOT_FOUND")


def test_realm_resolution(alice: Client, site: compute_pb2.Compute) -> None:
    by_region = _create(alice, _dataset(realm=site.region, is_public=False))
    assert (by_region.realm, by_region.compute_id) == (f"{site.region}/{site.id}", site.id)
    by_compute = _create(alice, _dataset(realm=site.id, is_public=False))
    assert (by_compute.realm, by_compute.compute_id) == (
        f"{site.region}/{site.id}",
        site.id,
    )
    public_elsewhere = _create(alice, _dataset(realm="default/unserved/zone", is_public=True))
    assert (public_elsewhere.realm, public_elsewhere.compute_id) == (
        "default/unserved/zone",
        "default",
    )


def test_unresolvable_realms_are_refused(alice: Client) -> None:
    with unchanged(alice):
        for dataset in (
            _dataset(realm="default/unserved/zone", is_public=False),
            _dataset(realm=unique("no-such-compute"), is_public=False),
            _dataset(realm=unique("no-such-compute"), is_public=True),
        ):
            details = expect_refusal(
                lambda dataset=dataset: _create(alice, dataset),
                Code.FAILED_PRECONDITION,
                "REALM_NOT_RESOLVED",
                "dataset.realm",
            )
            assert details.metadata["realm"] == dataset.realm


def test_update_dataset_follows_the_field_mask(alice: Client, site: compute_pb2.Compute) -> None:
    created = _create(alice, _dataset(realm="default/unserved/zone", is_public=True))
    renamed = _update(
        alice, dataset_pb2.Dataset(id=created.id, name="renamed", url="ftp://x"), "name"
    )
    assert renamed.name == "renamed" and renamed.url == created.url
    assert renamed.create_time == created.create_time and renamed.compute_id == "default"
    assert _get(alice, created.id) == renamed

    moved = _update(alice, dataset_pb2.Dataset(id=created.id, realm=site.id), "realm")
    assert (moved.realm, moved.compute_id) == (f"{site.region}/{site.id}", site.id)

    with unchanged(alice):
        expect_refusal(
            lambda: _update(alice, dataset_pb2.Dataset(id=created.id, owner="bob"), "owner"),
            Code.INVALID_ARGUMENT,
            "INVALID_UPDATE_MASK",
            "update_mask.paths[0]",
        )
        expect_refusal(
            lambda: _update(alice, dataset_pb2.Dataset(id=created.id, url="ftp://x"), "url"),
            Code.INVALID_ARGUMENT,
            "DATASET_INVALID",
            "dataset.url",
        )
        expect_refusal(
            lambda: _update(
                alice,
                dataset_pb2.Dataset(id=created.id, realm="default/elsewhere"),
                "realm",
                "is_public",
            ),
            Code.FAILED_PRECONDITION,
            "REALM_NOT_RESOLVED",
        )


def test_a_dataset_read_then_written_back_keeps_its_compute(
    alice: Client, site: compute_pb2.Compute
) -> None:
    # Get, change one field, Update with no mask: the resolved realm comes back as sent.
    for is_public in (False, True):
        created = _create(alice, _dataset(realm=site.region, is_public=is_public))
        fetched = _get(alice, created.id)
        fetched.description = "edited"
        updated = _update(alice, fetched)
        assert updated.description == "edited"
        assert (updated.realm, updated.compute_id) == (created.realm, created.compute_id)


# --- validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"url": ""}, "dataset.url", "required"),
        ({"url": "ftp://example.org/data.npz"}, "dataset.url", "scheme"),
        ({"url": "example.org/data.npz"}, "dataset.url", "scheme"),
        ({"data_format": ""}, "dataset.data_format", "required"),
        ({"realm": ""}, "dataset.realm", "required"),
    ],
    ids=["no-url", "ftp-url", "no-scheme", "no-format", "no-realm"],
)
def test_invalid_datasets_are_refused(
    alice: Client, fields: dict[str, object], field: str, words: str
) -> None:
    with unchanged(alice):
        details = expect_refusal(
            lambda: _create(alice, _dataset(**fields)),
            Code.INVALID_ARGUMENT,
            "DATASET_INVALID",
            field,
        )
    assert words in violation_of(details, field)


def test_a_url_is_registered_once_per_owner(alice: Client, bob: Client) -> None:
    first = _create(alice, _dataset(is_public=True))
    other = _create(alice, _dataset(is_public=True))
    with unchanged(alice):
        details = expect_refusal(
            lambda: _create(alice, _dataset(url=first.url, is_public=True)),
            Code.ALREADY_EXISTS,
            "DATASET_ALREADY_EXISTS",
        )
        assert details.metadata["url"] == first.url
        expect_refusal(
            lambda: _update(alice, dataset_pb2.Dataset(id=other.id, url=first.url), "url"),
            Code.ALREADY_EXISTS,
            "DATASET_ALREADY_EXISTS",
        )
    # Another owner may register the same url.
    assert _create(bob, _dataset(url=first.url, is_public=True)).url == first.url


# --- listing -----------------------------------------------------------------------


def test_list_datasets_pages_through_every_dataset_once(
    alice: Client, bob: Client, site: compute_pb2.Compute
) -> None:
    ids = [_create(alice, _dataset(realm=site.id, is_public=n % 2 == 0)).id for n in range(5)]
    own = pb.ListDatasetsRequest()
    token = check_pagination(alice.datasets.ListDatasets, own, "datasets", lambda d: d.id, ids)
    everyone = pb.ListDatasetsRequest(include_public=True)
    check_pagination(
        alice.datasets.ListDatasets, everyone, "datasets", lambda d: d.id, ids, exclusive=False
    )
    expect_foreign_token(alice.datasets.ListDatasets, everyone, token)
    _create(bob, _dataset())
    expect_foreign_token(bob.datasets.ListDatasets, own, token)


# --- visibility across users ---------------------------------------------------------


def test_another_users_private_dataset_is_invisible(
    alice: Client, bob: Client, site: compute_pb2.Compute
) -> None:
    private = _create(alice, _dataset(realm=site.id, is_public=False))
    with unchanged(alice):
        for call in (
            lambda: _get(bob, private.id),
            lambda: _update(bob, dataset_pb2.Dataset(id=private.id, name="mine"), "name"),
            lambda: bob.datasets.DeleteDataset(pb.DeleteDatasetRequest(dataset_id=private.id)),
        ):
            details = expect_hidden(call, "DATASET_NOT_FOUND", alice.user_id)
            assert details.metadata == {"dataset": private.id}
        assert private.id not in _listed(bob, include_public=True)


def test_another_users_public_dataset_is_readable_not_writable(alice: Client, bob: Client) -> None:
    public = _create(alice, _dataset(is_public=True))
    assert _get(bob, public.id) == public
    assert public.id in _listed(bob, include_public=True)
    assert public.id not in _listed(bob, include_public=False)
    with unchanged(alice):
        for call in (
            lambda: _update(bob, dataset_pb2.Dataset(id=public.id, name="mine"), "name"),
            lambda: _update(bob, dataset_pb2.Dataset(id=public.id, is_public=False), "is_public"),
            lambda: bob.datasets.DeleteDataset(pb.DeleteDatasetRequest(dataset_id=public.id)),
        ):
            expect_hidden(call, "DATASET_NOT_FOUND", alice.user_id)


def test_a_dataset_read_by_a_job_cannot_be_deleted(alice: Client) -> None:
    example = prepare_example(alice, "mnist")
    job = create_job(alice, example.job)
    (dataset_id,) = example.datasets.values()
    with unchanged(alice):
        details = expect_refusal(
            lambda: alice.datasets.DeleteDataset(pb.DeleteDatasetRequest(dataset_id=dataset_id)),
            Code.FAILED_PRECONDITION,
            "DATASET_IN_USE",
        )
    assert details.metadata["jobs"] == "1"
    alice.jobs.DeleteJob(job_pb.DeleteJobRequest(job_id=job.id))
    alice.datasets.DeleteDataset(pb.DeleteDatasetRequest(dataset_id=dataset_id))
