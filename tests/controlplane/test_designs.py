"""Designs and their schema revisions: CRUD, field masks, pagination, validation
and isolation between users."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from google.protobuf import field_mask_pb2

from flame.design.v1 import design_pb2
from flame.design.v1 import design_service_pb2 as pb
from flame.job.v1 import job_service_pb2 as job_pb
from tests.controlplane.helpers import (
    Client,
    Code,
    check_pagination,
    create_job,
    example_schema,
    expect_foreign_token,
    expect_hidden,
    expect_refusal,
    new_design,
    prepare_example,
    role_code,
    unchanged,
    unique,
    violation_of,
)

pytestmark = pytest.mark.integration


def _schema(revision_name: str = "two tier") -> design_pb2.Schema:
    schema = example_schema("mnist")
    schema.name = revision_name
    return schema


def _create_schema(client: Client, design_id: str, schema: design_pb2.Schema) -> design_pb2.Schema:
    return client.designs.CreateSchema(
        pb.CreateSchemaRequest(design_id=design_id, schema=schema)
    ).schema


def _get(client: Client, design_id: str) -> pb.GetDesignResponse:
    return client.designs.GetDesign(pb.GetDesignRequest(design_id=design_id))


def _update(client: Client, design: design_pb2.Design, *paths: str) -> design_pb2.Design:
    mask = field_mask_pb2.FieldMask(paths=list(paths))
    return client.designs.UpdateDesign(
        pb.UpdateDesignRequest(design=design, update_mask=mask)
    ).design


# --- designs -----------------------------------------------------------------------


def test_design_lifecycle(alice: Client) -> None:
    design_id = unique("mnist")
    created = alice.designs.CreateDesign(
        pb.CreateDesignRequest(
            design=design_pb2.Design(id=design_id, name="MNIST", description="digits", owner="x")
        )
    ).design
    assert (created.id, created.name, created.description) == (design_id, "MNIST", "digits")
    assert created.owner == alice.user_id  # output only: the caller, whatever was sent
    assert (created.latest_schema_revision, created.latest_code_revision) == (0, 0)
    assert created.create_time.seconds > 0 and created.update_time == created.create_time

    fetched = _get(alice, design_id)
    assert fetched.design == created and not fetched.HasField("schema")

    alice.designs.DeleteDesign(pb.DeleteDesignRequest(design_id=design_id))
    expect_refusal(lambda: _get(alice, design_id), Code.NOT_FOUND, "DESIGN_NOT_FOUND")
    expect_refusal(
        lambda: alice.designs.DeleteDesign(pb.DeleteDesignRequest(design_id=design_id)),
        Code.NOT_FOUND,
        "DESIGN_NOT_FOUND",
    )


def test_create_design_refusals(alice: Client) -> None:
    design_id = new_design(alice)
    with unchanged(alice):
        for bad_id in ["", "Has Capitals", "-leading-dash", "x" * 64, "dot.ted"]:
            details = expect_refusal(
                lambda bad_id=bad_id: alice.designs.CreateDesign(
                    pb.CreateDesignRequest(design=design_pb2.Design(id=bad_id))
                ),
                Code.INVALID_ARGUMENT,
                "DESIGN_INVALID",
                "design.id",
            )
            assert details.violations[0].description
        details = expect_refusal(
            lambda: alice.designs.CreateDesign(
                pb.CreateDesignRequest(design=design_pb2.Design(id=design_id, name="again"))
            ),
            Code.ALREADY_EXISTS,
            "DESIGN_ALREADY_EXISTS",
        )
        assert details.metadata["design"] == design_id


def test_update_design_follows_the_field_mask(alice: Client) -> None:
    design_id = new_design(alice)
    original = _get(alice, design_id).design

    changed = _update(
        alice,
        design_pb2.Design(id=design_id, name="ignored", description="only this"),
        "description",
    )
    assert (changed.name, changed.description) == (original.name, "only this")
    assert changed.create_time == original.create_time
    assert changed.update_time.ToDatetime() >= original.update_time.ToDatetime()

    both = _update(alice, design_pb2.Design(id=design_id, name="new name", description=""))
    assert (both.name, both.description) == ("new name", "")
    assert _get(alice, design_id).design == both

    with unchanged(alice):
        for path in ["owner", "id", "latest_schema_revision", "nonsense"]:
            details = expect_refusal(
                lambda path=path: _update(
                    alice, design_pb2.Design(id=design_id, name="x"), "name", path
                ),
                Code.INVALID_ARGUMENT,
                "INVALID_UPDATE_MASK",
                "update_mask.paths[1]",
            )
            assert path in violation_of(details, "update_mask.paths[1]")
        expect_refusal(
            lambda: _update(alice, design_pb2.Design(id=unique("absent"), name="x"), "name"),
            Code.NOT_FOUND,
            "DESIGN_NOT_FOUND",
        )


def test_list_designs_pages_through_every_design_once(alice: Client, bob: Client) -> None:
    ids = sorted(new_design(alice, prefix=f"d{i}") for i in range(5))
    token = check_pagination(
        alice.designs.ListDesigns, pb.ListDesignsRequest(), "designs", lambda d: d.id, ids
    )
    # A token is bound to its query: another user's listing and another call refuse it.
    new_design(bob)
    expect_foreign_token(bob.designs.ListDesigns, pb.ListDesignsRequest(), token)
    expect_foreign_token(alice.jobs.ListJobs, job_pb.ListJobsRequest(), token)


# --- schema revisions --------------------------------------------------------------


def test_schema_revisions(alice: Client) -> None:
    design_id = new_design(alice)
    expect_refusal(
        lambda: alice.designs.GetSchema(pb.GetSchemaRequest(design_id=design_id)),
        Code.NOT_FOUND,
        "SCHEMA_NOT_FOUND",
    )
    stored = [_create_schema(alice, design_id, _schema(f"v{n}")) for n in range(1, 6)]
    assert [schema.revision for schema in stored] == [1, 2, 3, 4, 5]
    assert all(schema.create_time.seconds > 0 for schema in stored)
    assert stored[0].roles == _schema().roles and stored[0].channels == _schema().channels

    latest = alice.designs.GetSchema(pb.GetSchemaRequest(design_id=design_id)).schema
    assert latest == stored[-1]
    first = alice.designs.GetSchema(pb.GetSchemaRequest(design_id=design_id, revision=1)).schema
    assert first == stored[0]
    expect_refusal(
        lambda: alice.designs.GetSchema(pb.GetSchemaRequest(design_id=design_id, revision=9)),
        Code.NOT_FOUND,
        "SCHEMA_NOT_FOUND",
    )
    design = _get(alice, design_id)
    assert design.design.latest_schema_revision == 5 and design.schema == stored[-1]

    request = pb.ListSchemasRequest(design_id=design_id)
    token = check_pagination(
        alice.designs.ListSchemas,
        request,
        "schemas",
        lambda s: str(s.revision),
        ["5", "4", "3", "2", "1"],
    )
    other_design = new_design(alice, schema=_schema())
    expect_foreign_token(
        alice.designs.ListSchemas, pb.ListSchemasRequest(design_id=other_design), token
    )
    expect_foreign_token(
        alice.designs.ListCodeRevisions, pb.ListCodeRevisionsRequest(design_id=design_id), token
    )

    alice.designs.DeleteSchema(pb.DeleteSchemaRequest(design_id=design_id))
    expect_refusal(
        lambda: alice.designs.GetSchema(pb.GetSchemaRequest(design_id=design_id)),
        Code.NOT_FOUND,
        "SCHEMA_NOT_FOUND",
    )
    after = _get(alice, design_id)
    assert after.design.latest_schema_revision == 0 and not after.HasField("schema")
    assert not alice.designs.ListSchemas(request).schemas
    # Numbers are never reused: a job that recorded revision 1 keeps meaning v1.
    assert _create_schema(alice, design_id, _schema("v6")).revision == 6


def _unknown_role_in_pair(schema: design_pb2.Schema) -> None:
    schema.channels[0].pair[1] = "ghost"


def _duplicate_role(schema: design_pb2.Schema) -> None:
    schema.roles.append(schema.roles[1])


def _missing_func_tags(schema: design_pb2.Schema) -> None:
    del schema.channels[0].func_tags["aggregator"]


def _no_data_consumer(schema: design_pb2.Schema) -> None:
    schema.roles[0].is_data_consumer = False


def _unknown_channel_in_association(schema: design_pb2.Schema) -> None:
    schema.roles[1].group_association[0].channel_groups["no-such-channel"] = "us"


def _unknown_group_in_association(schema: design_pb2.Schema) -> None:
    schema.roles[1].group_association[0].channel_groups["param-channel"] = "eu"


def _empty_association(schema: design_pb2.Schema) -> None:
    schema.roles[1].group_association.add()


ASSOCIATION = 'schema.roles[1].group_association[0].channel_groups["param-channel"]'


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (_unknown_role_in_pair, "schema.channels[0].pair[1]", "ghost"),
        (_duplicate_role, "schema.roles[2].name", "aggregator"),
        (_missing_func_tags, 'schema.channels[0].func_tags["aggregator"]', "aggregator"),
        (_no_data_consumer, "schema.roles", "data consumer"),
        (
            _unknown_channel_in_association,
            'schema.roles[1].group_association[0].channel_groups["no-such-channel"]',
            "no-such-channel",
        ),
        (_unknown_group_in_association, ASSOCIATION, "eu"),
        (_empty_association, "schema.roles[1].group_association[1].channel_groups", "channel"),
    ],
)
def test_invalid_schemas_are_refused_and_change_nothing(
    alice: Client, mutate: Callable[[design_pb2.Schema], None], field: str, words: str
) -> None:
    design_id = new_design(alice, schema=_schema())
    schema = _schema("broken")
    mutate(schema)
    with unchanged(alice):
        details = expect_refusal(
            lambda: _create_schema(alice, design_id, schema),
            Code.INVALID_ARGUMENT,
            "SCHEMA_INVALID",
            field,
        )
    assert words in violation_of(details, field)
    assert int(details.metadata["violation_count"]) == len(details.violations)


def test_a_schema_for_a_missing_design_is_refused(alice: Client) -> None:
    with unchanged(alice):
        expect_refusal(
            lambda: _create_schema(alice, unique("absent"), _schema()),
            Code.NOT_FOUND,
            "DESIGN_NOT_FOUND",
        )


# --- deletion while jobs refer to a design -----------------------------------------


def test_delete_design_refuses_while_jobs_refer_to_it(alice: Client) -> None:
    example = prepare_example(alice, "mnist")
    job = create_job(alice, example.job)
    with unchanged(alice):
        details = expect_refusal(
            lambda: alice.designs.DeleteDesign(pb.DeleteDesignRequest(design_id=example.design_id)),
            Code.FAILED_PRECONDITION,
            "DESIGN_IN_USE",
        )
    assert details.metadata == {"design": example.design_id, "jobs": "1"}

    alice.designs.DeleteDesign(pb.DeleteDesignRequest(design_id=example.design_id, force=True))
    expect_refusal(lambda: _get(alice, example.design_id), Code.NOT_FOUND, "DESIGN_NOT_FOUND")
    kept = alice.jobs.GetJob(job_pb.GetJobRequest(job_id=job.id)).job
    assert kept.design_id == example.design_id


def test_delete_design_works_once_its_jobs_are_gone(alice: Client) -> None:
    example = prepare_example(alice, "mnist")
    job = create_job(alice, example.job)
    alice.jobs.DeleteJob(job_pb.DeleteJobRequest(job_id=job.id))
    alice.designs.DeleteDesign(pb.DeleteDesignRequest(design_id=example.design_id))
    expect_refusal(lambda: _get(alice, example.design_id), Code.NOT_FOUND, "DESIGN_NOT_FOUND")
    # Its schema and code went with it: a new design of the same id starts afresh.
    alice.designs.CreateDesign(
        pb.CreateDesignRequest(design=design_pb2.Design(id=example.design_id))
    )
    fresh = _get(alice, example.design_id)
    assert (fresh.design.latest_schema_revision, fresh.design.latest_code_revision) == (0, 0)


# --- isolation ---------------------------------------------------------------------


def test_another_users_design_is_invisible(alice: Client, bob: Client) -> None:
    design_id = new_design(alice, schema=_schema(), code=role_code("trainer", "aggregator"))
    owner = alice.user_id
    calls = {
        "get": lambda: _get(bob, design_id),
        "update": lambda: _update(bob, design_pb2.Design(id=design_id, name="mine"), "name"),
        "delete": lambda: bob.designs.DeleteDesign(
            pb.DeleteDesignRequest(design_id=design_id, force=True)
        ),
        "create schema": lambda: _create_schema(bob, design_id, _schema()),
        "get schema": lambda: bob.designs.GetSchema(pb.GetSchemaRequest(design_id=design_id)),
        "list schemas": lambda: bob.designs.ListSchemas(pb.ListSchemasRequest(design_id=design_id)),
        "delete schema": lambda: bob.designs.DeleteSchema(
            pb.DeleteSchemaRequest(design_id=design_id)
        ),
    }
    with unchanged(alice):
        for name, call in calls.items():
            hidden = expect_hidden(call, "DESIGN_NOT_FOUND", owner)
            # Exactly what a design that does not exist at all answers.
            assert hidden.metadata == {"design": design_id}, name
        assert design_id not in [
            d.id for d in bob.designs.ListDesigns(pb.ListDesignsRequest()).designs
        ]
    # Ids are per owner: bob may have a design of the same id, apart from alice's.
    bob.designs.CreateDesign(
        pb.CreateDesignRequest(design=design_pb2.Design(id=design_id, name="b"))
    )
    assert _get(bob, design_id).design.owner == bob.user_id
    assert _get(alice, design_id).design.owner == alice.user_id
    assert _get(alice, design_id).design.latest_schema_revision == 1
