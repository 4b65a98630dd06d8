"""The failures flamectl reports, and the sentence it prints for each server refusal.

Hierarchy::

    click.ClickException
    └── CliError            exit 1: the server refused, or could not be reached
        └── InputError      exit 2: a local file or the configuration is wrong

Both print one `flamectl: ...` line on stderr (plus one indented line per field
violation). The sentence for a refusal is chosen by the `ErrorInfo` reason the
server sent, never by matching its message text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click
import grpc

from flame.rpc.errors import ErrorDetails

__all__ = ["CallContext", "CliError", "InputError", "describe"]


class CliError(click.ClickException):
    """A failure reported as `flamectl: MESSAGE` on stderr, with exit status 1."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the message the flamectl way instead of click's `Error: ...`."""
        click.echo(f"flamectl: {self.format_message()}", file=file, err=file is None)


class InputError(CliError):
    """A local input is wrong (a JSON file, the configuration): a usage error, exit 2."""

    exit_code = 2


@dataclass(frozen=True)
class CallContext:
    """What a command knows when a call fails: where it called, and what it asked about.

    `subjects` names the resources of the request by kind (`design`, `dataset`,
    `job`, `task`, `user`, `token`, `realm`, `url`), so a refusal can name them
    even when the server's ErrorInfo metadata does not; `action` is the verb of
    a job state change (`start`, `stop`, `update`, `remove`).
    """

    endpoint: str
    timeout: float
    config_path: Path
    subjects: Mapping[str, str] = field(default_factory=dict)

    def subject(self, kind: str, details: ErrorDetails) -> str:
        """The id of the `kind` resource: from the server's metadata, else from the request."""
        return details.metadata.get(kind) or self.subjects.get(kind, "")


_Describe = Callable[[ErrorDetails, CallContext], str]


def _named(kind: str, template: str) -> _Describe:
    """A sentence naming the `kind` resource; the server's message when its id is unknown."""

    def describe(details: ErrorDetails, call: CallContext) -> str:
        subject = call.subject(kind, details)
        return template.format(subject) if subject else details.message

    return describe


def _with_violations(first_line: str) -> _Describe:
    """`first_line`, then one indented line per field violation (the message when none)."""

    def describe(details: ErrorDetails, call: CallContext) -> str:
        if not details.violations:
            return f"{first_line}: {details.message}"
        lines = [f"{first_line}:"]
        lines += [f"  {v.field}: {v.description}" for v in details.violations]
        # The server sends only the violations that fit in a status trailer.
        count = details.metadata.get("violation_count", "")
        total = int(count) if count.isdigit() else 0
        if total > len(details.violations):
            lines.append(f"  (and {total - len(details.violations)} more)")
        return "\n".join(lines)

    return describe


def _prefixed(prefix: str) -> _Describe:
    return lambda details, call: f"{prefix}: {details.message}"


def _missing_revision(what: str) -> _Describe:
    def describe(details: ErrorDetails, call: CallContext) -> str:
        design = call.subject("design", details)
        revision = details.metadata.get("revision", "0")
        suffix = f" revision {revision}" if revision not in ("", "0") else ""
        return f"design '{design}' has no {what}{suffix}" if design else details.message

    return describe


def _illegal_transition(details: ErrorDetails, call: CallContext) -> str:
    # The server sends the enum name (STATE_RUNNING); people know the short one.
    state = details.metadata.get("state", "").removeprefix("STATE_").lower()
    job, action = call.subject("job", details), call.subjects.get("action")
    if not (job and state and action):
        return details.message
    return f"cannot {action} job '{job}' while it is {state}"


def _unauthenticated(details: ErrorDetails, call: CallContext) -> str:
    return f"not authenticated: run flamectl up or check the token in {call.config_path}"


_BY_REASON: dict[str, _Describe] = {
    "DESIGN_NOT_FOUND": _named("design", "design '{}' not found"),
    "SCHEMA_NOT_FOUND": _missing_revision("schema"),
    "CODE_NOT_FOUND": _missing_revision("code"),
    "DATASET_NOT_FOUND": _named("dataset", "dataset '{}' not found"),
    "JOB_NOT_FOUND": _named("job", "job '{}' not found"),
    "TASK_NOT_FOUND": _named("task", "task '{}' not found"),
    "USER_NOT_FOUND": _named("user", "user '{}' not found"),
    "TOKEN_NOT_FOUND": _named("token", "token '{}' not found"),
    "DESIGN_ALREADY_EXISTS": _named("design", "design '{}' already exists"),
    "DATASET_ALREADY_EXISTS": _named("url", "you already have a dataset at '{}'"),
    "USER_ALREADY_EXISTS": _named("user", "user '{}' already exists"),
    "DESIGN_INVALID": _with_violations("invalid design"),
    "SCHEMA_INVALID": _with_violations("invalid schema"),
    "CODE_INVALID": _with_violations("invalid code bundle"),
    "CODE_ROLE_MISSING": _with_violations("the code bundle lacks roles of the schema"),
    "DATASET_INVALID": _with_violations("invalid dataset"),
    "JOB_INVALID": _with_violations("invalid job"),
    "USER_INVALID": _with_violations("invalid user"),
    "INVALID_ARGUMENT": _with_violations("invalid request"),
    "CODE_TOO_LARGE": _prefixed("the code bundle is too large"),
    "REALM_NOT_RESOLVED": _named("realm", "realm '{}' matches no registered compute"),
    "DESIGN_IN_USE": _named(
        "design", "design '{}' is used by jobs: remove them first, or pass --force"
    ),
    "ILLEGAL_STATE_TRANSITION": _illegal_transition,
    "PERMISSION_DENIED": _prefixed("permission denied"),
    "UNAUTHENTICATED": _unauthenticated,
    "TOKEN_INVALID": _unauthenticated,
    "TOKEN_MISSING": _unauthenticated,
    "INVALID_PAGE_TOKEN": _prefixed("the server refused the page token; run the command again"),
    "INVALID_UPDATE_MASK": _prefixed("these fields cannot be updated"),
}


def describe(details: ErrorDetails, call: CallContext) -> str:
    """The message flamectl prints for a failed call.

    Args:
        details: What the server sent: code, message, ErrorInfo reason, metadata
            and field violations (see `flame.rpc.errors.error_details`).
        call: Where the call went and which resources it named.

    Returns:
        One line, plus one indented line per field violation.

    Example:
        >>> describe(ErrorDetails(grpc.StatusCode.NOT_FOUND, "...", "DESIGN_NOT_FOUND"),
        ...          CallContext("h:1", 30, Path("c.yaml"), {"design": "x"}))
        "design 'x' not found"
    """
    if details.reason in _BY_REASON:
        return _BY_REASON[details.reason](details, call)
    if details.code == grpc.StatusCode.UNAUTHENTICATED:
        return _unauthenticated(details, call)
    if details.code == grpc.StatusCode.UNAVAILABLE and not details.reason:
        return f"cannot reach the apiserver at {call.endpoint}"
    if details.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the apiserver did not answer within {call.timeout:g} s"
    if details.code == grpc.StatusCode.UNIMPLEMENTED:
        return f"the apiserver at {call.endpoint} does not offer this call"
    return details.message or details.code.name.lower().replace("_", " ")
