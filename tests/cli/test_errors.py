"""The message flamectl prints for each refusal, chosen by the ErrorInfo reason."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from flame.cli.errors import CallContext, describe
from flame.rpc.errors import ErrorDetails, FieldViolation

CALL = CallContext(
    endpoint="api.example:443",
    timeout=12.5,
    config_path=Path("/home/u/.flame/config.yaml"),
    subjects={"design": "mnist", "job": "j1", "url": "s3://b/k", "realm": "eu1"},
)


def details(
    reason: str,
    *,
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
    message: str = "server says no",
    metadata: dict[str, str] | None = None,
    violations: list[FieldViolation] | None = None,
) -> ErrorDetails:
    return ErrorDetails(code, message, reason, metadata or {}, violations or [])


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("DESIGN_NOT_FOUND", "design 'mnist' not found"),
        ("SCHEMA_NOT_FOUND", "design 'mnist' has no schema"),
        ("CODE_NOT_FOUND", "design 'mnist' has no code"),
        ("JOB_NOT_FOUND", "job 'j1' not found"),
        ("DESIGN_ALREADY_EXISTS", "design 'mnist' already exists"),
        ("DATASET_ALREADY_EXISTS", "you already have a dataset at 's3://b/k'"),
        ("DESIGN_IN_USE", "design 'mnist' is used by jobs: remove them first, or pass --force"),
        ("REALM_NOT_RESOLVED", "realm 'eu1' matches no registered compute"),
        ("CODE_TOO_LARGE", "the code bundle is too large: server says no"),
        ("PERMISSION_DENIED", "permission denied: server says no"),
        ("INVALID_UPDATE_MASK", "these fields cannot be updated: server says no"),
        ("DATASET_INVALID", "invalid dataset: server says no"),
        ("SOMETHING_NEW", "server says no"),
    ],
)
def test_each_reason_has_its_sentence(reason: str, expected: str) -> None:
    assert describe(details(reason), CALL) == expected


def test_the_server_metadata_names_a_resource_the_request_did_not() -> None:
    found = details("DATASET_NOT_FOUND", metadata={"dataset": "abc123"})
    assert describe(found, CALL) == "dataset 'abc123' not found"


def test_a_missing_revision_is_named() -> None:
    missing = details("CODE_NOT_FOUND", metadata={"design": "mnist", "revision": "7"})
    assert describe(missing, CALL) == "design 'mnist' has no code revision 7"


def test_an_unnamed_resource_falls_back_to_the_server_message() -> None:
    assert describe(details("TASK_NOT_FOUND", message="no task t9"), CALL) == "no task t9"


def test_violations_follow_the_first_line() -> None:
    invalid = details(
        "JOB_INVALID",
        violations=[FieldViolation("job.backend", "must be mqtt or p2p")],
    )
    assert describe(invalid, CALL) == "invalid job:\n  job.backend: must be mqtt or p2p"


def test_violations_the_server_left_out_are_counted() -> None:
    invalid = details(
        "CODE_ROLE_MISSING",
        metadata={"violation_count": "3"},
        violations=[FieldViolation("schema.roles[0]", "no folder 'trainer/'")],
    )
    assert describe(invalid, CALL).splitlines() == [
        "the code bundle lacks roles of the schema:",
        "  schema.roles[0]: no folder 'trainer/'",
        "  (and 2 more)",
    ]


@pytest.mark.parametrize("reason", ["TOKEN_INVALID", "TOKEN_MISSING", "UNAUTHENTICATED", ""])
def test_authentication_failures_point_to_the_config(reason: str) -> None:
    failed = details(reason, code=grpc.StatusCode.UNAUTHENTICATED)
    assert describe(failed, CALL) == (
        "not authenticated: run flamectl up or check the token in /home/u/.flame/config.yaml"
    )


def test_transport_failures_name_the_endpoint_and_the_deadline() -> None:
    unavailable = details("", code=grpc.StatusCode.UNAVAILABLE)
    late = details("", code=grpc.StatusCode.DEADLINE_EXCEEDED)
    assert describe(unavailable, CALL) == "cannot reach the apiserver at api.example:443"
    assert describe(late, CALL) == "the apiserver did not answer within 12.5 s"


def test_an_unavailable_controller_behind_the_apiserver_keeps_the_server_message() -> None:
    behind = details("CONTROLLER_UNAVAILABLE", code=grpc.StatusCode.UNAVAILABLE)
    assert describe(behind, CALL) == "server says no"


def test_an_illegal_transition_names_the_action_and_the_state() -> None:
    refused = details("ILLEGAL_STATE_TRANSITION", metadata={"state": "STATE_COMPLETED"})
    stopping = CallContext(
        CALL.endpoint, CALL.timeout, CALL.config_path, {"job": "j1", "action": "stop"}
    )
    assert describe(refused, stopping) == "cannot stop job 'j1' while it is completed"
    assert describe(refused, CALL) == "server says no"
