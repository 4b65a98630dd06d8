"""Validation of a job specification against its design's schema and datasets."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from flame.controller.validation._report import map_key, raise_if_any
from flame.controller.validation.names import validate_identifier
from flame.data.v1 import dataset_pb2
from flame.design.v1 import design_pb2
from flame.job.v1 import job_pb2
from flame.rpc.errors import FieldViolation

__all__ = ["JOB_INVALID", "validate_job_spec"]

JOB_INVALID = "JOB_INVALID"


def validate_job_spec(
    job: job_pb2.Job,
    schema: design_pb2.Schema,
    *,
    datasets: Mapping[str, dataset_pb2.Dataset | None],
    supported_backends: Collection[str] = ("mqtt", "p2p"),
) -> None:
    """Check a job before its tasks are expanded.

    The original builder turned several of these mistakes into missing tasks or
    tasks without a group association, silently; here each is a violation. Field
    paths start at `job`, the field of `CreateJobRequest`.

    Args:
        job: The job as sent by the user.
        schema: The schema revision the job runs.
        datasets: Every dataset id of `job.data_spec` to the dataset, or to None
            when it does not exist or the caller may not use it.
        supported_backends: The data-plane backends this deployment offers.

    Raises:
        InvalidArgument: reason `JOB_INVALID`, with one violation per problem.
    """
    violations = _header_violations(job, supported_backends)
    violations += _data_spec_violations(job.data_spec, schema, datasets)
    raise_if_any(JOB_INVALID, "invalid job", violations)


def _header_violations(
    job: job_pb2.Job, supported_backends: Collection[str]
) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    if bad := validate_identifier(job.design_id, "job.design_id", "design id"):
        violations.append(bad)
    if not job.backend:
        violations.append(FieldViolation("job.backend", "backend is required"))
    elif job.backend not in supported_backends:
        supported = ", ".join(sorted(supported_backends))
        violations.append(
            FieldViolation("job.backend", f"backend {job.backend!r} is not one of {supported}")
        )
    if job.max_run_time_seconds < 0:
        violations.append(
            FieldViolation("job.max_run_time_seconds", "max run time must be 0 or more seconds")
        )
    # Proto3 enums are open: an unknown number parses, so reject it here.
    if job.priority not in job_pb2.Job.Priority.values():
        violations.append(FieldViolation("job.priority", f"unknown priority {job.priority}"))
    return violations


def _data_spec_violations(
    data_spec: Iterable[job_pb2.RoleDatasets],
    schema: design_pb2.Schema,
    datasets: Mapping[str, dataset_pb2.Dataset | None],
) -> list[FieldViolation]:
    roles = {role.name: role for role in schema.roles}
    violations: list[FieldViolation] = []
    first_index: dict[str, int] = {}
    for i, entry in enumerate(data_spec):
        path = f"job.data_spec[{i}]"
        problem = _role_problem(entry.role, roles)
        if problem:
            violations.append(FieldViolation(f"{path}.role", problem))
        if entry.role and entry.role in first_index:
            violations.append(
                FieldViolation(
                    f"{path}.role",
                    f"role {entry.role!r} is also listed in data_spec[{first_index[entry.role]}]",
                )
            )
        first_index.setdefault(entry.role, i)
        # Groups are checked against the associations of a data-consumer role only.
        role = None if problem else roles[entry.role]
        violations += _group_violations(entry, role, path, datasets)
    violations += [
        FieldViolation("job.data_spec", f"data-consumer role {name!r} has no datasets in data_spec")
        for name, role in roles.items()
        if role.is_data_consumer and name not in first_index
    ]
    return violations


def _role_problem(name: str, roles: Mapping[str, design_pb2.Role]) -> str | None:
    if not name:
        return "role is required"
    if name not in roles:
        return f"role {name!r} is not in the schema"
    if not roles[name].is_data_consumer:
        return f"role {name!r} is not a data consumer"
    return None


def _group_violations(
    entry: job_pb2.RoleDatasets,
    role: design_pb2.Role | None,
    path: str,
    datasets: Mapping[str, dataset_pb2.Dataset | None],
) -> list[FieldViolation]:
    path = f"{path}.dataset_groups"
    if not entry.dataset_groups:
        return [FieldViolation(path, f"role {entry.role!r} needs at least one dataset group")]
    # The builder gives a data task the first association naming its group; the
    # original silently used none when no association matched.
    associated = {
        group
        for association in (role.group_association if role else [])
        for group in association.channel_groups.values()
    }
    violations: list[FieldViolation] = []
    seen: set[str] = set()
    for group in sorted(entry.dataset_groups):
        group_path = map_key(path, group)
        if role is not None and group not in associated:
            violations.append(
                FieldViolation(
                    group_path,
                    f"group {group!r} is in no group_association entry of role {role.name!r}",
                )
            )
        ids = entry.dataset_groups[group].dataset_ids
        if not ids:
            violations.append(
                FieldViolation(f"{group_path}.dataset_ids", "at least one dataset id is required")
            )
        for k, dataset_id in enumerate(ids):
            if problem := _dataset_problem(dataset_id, seen, datasets):
                violations.append(FieldViolation(f"{group_path}.dataset_ids[{k}]", problem))
            seen.add(dataset_id)
    return violations


def _dataset_problem(
    dataset_id: str, seen: set[str], datasets: Mapping[str, dataset_pb2.Dataset | None]
) -> str | None:
    if not dataset_id:
        return "dataset id is required"
    if dataset_id in seen:
        return f"dataset {dataset_id!r} is listed twice for this role"
    # None stands for "not visible to the caller" too; both read as not found.
    if datasets.get(dataset_id) is None:
        return f"dataset {dataset_id} not found"
    return None
