"""The job builder: expands a job over its design's topology (TAG) into tasks.

Pure functions, no I/O: the caller loads the job, the schema and the datasets the
job's data spec names, and stores the plans this module returns.

Expansion follows the original Flame builder (control-plane spec §4.5/§4.6), with
its silent holes turned into `JOB_INVALID` errors: a non-data role without group
associations, a dataset group that matches no association of its role, a
data-consumer role without datasets and an unknown dataset id. Field validity of
the job alone (backend, priority, run time) is the job validator's concern; this
module checks how the job, the schema and the datasets fit together.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, struct_pb2

from flame.data.v1 import dataset_pb2
from flame.design.v1 import design_pb2
from flame.job.v1 import job_pb2
from flame.rpc.errors import FieldViolation, InvalidArgument

__all__ = [
    "DEFAULT_MAX_RUN_TIME_SECONDS",
    "Broker",
    "PlatformParams",
    "Registry",
    "TaskPlan",
    "config_json",
    "expand_job",
]

DEFAULT_MAX_RUN_TIME_SECONDS = 600
"""Job timer used when the job sets none (the original applied no default)."""

_DEFAULT_COMPUTE = "default"

Json = dict[str, Any]


@dataclass(frozen=True)
class Broker:
    """A data-plane broker: its backend sort (`mqtt`, `p2p`) and address."""

    sort: str
    host: str


@dataclass(frozen=True)
class Registry:
    """The model registry handed to the role code (`sort` such as `mlflow`)."""

    sort: str = ""
    uri: str = ""


@dataclass(frozen=True)
class PlatformParams:
    """Settings of the control plane copied into every task config."""

    brokers: tuple[Broker, ...]
    registry: Registry


@dataclass(frozen=True)
class TaskPlan:
    """One task to create: a worker of one role, with its config.

    Attributes:
        index: Position in expansion order, starting at 0.
        task_id: 40 lowercase hex digits, unique within the job.
        role: Role name.
        compute_id: The compute whose deployer runs the task.
        group_association: Channel name to group name; never empty.
        dataset_id: The consumed dataset's id; empty for non-data roles.
        dataset_url: The consumed dataset's URL; empty for non-data roles.
        config: The task config object with the original camelCase keys, without
            `taskid` (the agent adds it).
    """

    index: int
    task_id: str
    role: str
    compute_id: str
    group_association: dict[str, str]
    dataset_id: str
    dataset_url: str
    config: dict[str, Any]


@dataclass(frozen=True)
class _Slot:
    """One placement of a role before it becomes a task."""

    group_association: dict[str, str]
    dataset_id: str = ""
    dataset: dataset_pb2.Dataset | None = None


def expand_job(
    job: job_pb2.Job,
    schema: design_pb2.Schema,
    datasets: Mapping[str, dataset_pb2.Dataset],
    params: PlatformParams,
) -> list[TaskPlan]:
    """Expand a job into its tasks.

    Roles are taken in alphabetical order. A non-data role yields
    `max(replica, 1) * len(group_association)` tasks on compute `default`. A
    data-consumer role yields one task per dataset, groups in sorted order and
    datasets in data-spec order, on the dataset's compute, with the role's first
    group association that names the dataset's group.

    Args:
        job: The stored job; its `id` must be set, since task ids derive from it.
        schema: The schema revision the job runs.
        datasets: Every dataset the job's data spec names, by id.
        params: Brokers and registry of the control plane.

    Returns:
        The task plans in expansion order. Equal inputs give equal plans.

    Raises:
        InvalidArgument: `JOB_INVALID`, with one field violation per problem, when
            the job does not fit the schema or names an unknown dataset.
    """
    violations = _violations(job, schema, datasets)
    if violations:
        raise InvalidArgument(
            "JOB_INVALID", "the job cannot be expanded over its schema", violations=violations
        )
    job_config = _job_config(job, params)
    plans: list[TaskPlan] = []
    for role in sorted(schema.roles, key=lambda r: r.name):
        role_config = {"role": role.name, "realm": "", "channels": _channels(schema, role.name)}
        for slot in _slots(role, job, datasets):
            plans.append(_plan(job.id, len(plans), role.name, {**job_config, **role_config}, slot))
    return plans


def config_json(config: Mapping[str, Any]) -> str:
    """Render a task config as canonical JSON: sorted keys, compact separators.

    Args:
        config: A task config as produced in `TaskPlan.config`.

    Returns:
        The JSON text stored with the task and hashed into its id.
    """
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def _plan(job_id: str, index: int, role: str, base: Json, slot: _Slot) -> TaskPlan:
    # Deep copy so that no two plans share nested objects a caller might mutate.
    config = copy.deepcopy({**base, "groupAssociation": slot.group_association})
    if slot.dataset is not None:
        config["dataset"] = slot.dataset.url
    # Replicas of a role have equal configs: the index keeps their ids apart.
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(f"{job_id}-{index}-{config_json(config)}".encode())
    return TaskPlan(
        index=index,
        task_id=digest.hexdigest(),
        role=role,
        compute_id=_compute_id(slot.dataset),
        group_association=dict(slot.group_association),
        dataset_id=slot.dataset_id,
        dataset_url=slot.dataset.url if slot.dataset is not None else "",
        config=config,
    )


def _compute_id(dataset: dataset_pb2.Dataset | None) -> str:
    # Datasets decide where data tasks run; everything else runs on `default`.
    if dataset is None or not dataset.compute_id:
        return _DEFAULT_COMPUTE
    return dataset.compute_id


def _slots(
    role: design_pb2.Role, job: job_pb2.Job, datasets: Mapping[str, dataset_pb2.Dataset]
) -> Iterator[_Slot]:
    if not role.is_data_consumer:
        for _ in range(max(role.replica, 1)):
            for association in role.group_association:
                yield _Slot(dict(association.channel_groups))
        return
    entry = next(e for e in job.data_spec if e.role == role.name)
    for group in sorted(entry.dataset_groups):
        placement = _association_for(role, group)
        assert placement is not None  # _violations rejects groups without one
        for dataset_id in entry.dataset_groups[group].dataset_ids:
            yield _Slot(placement, dataset_id, datasets[dataset_id])


def _association_for(role: design_pb2.Role, group: str) -> dict[str, str] | None:
    """The role's first group association that places it in `group` on some channel."""
    for association in role.group_association:
        if group in association.channel_groups.values():
            return dict(association.channel_groups)
    return None


# --- validation -------------------------------------------------------------


def _violations(
    job: job_pb2.Job, schema: design_pb2.Schema, datasets: Mapping[str, dataset_pb2.Dataset]
) -> list[FieldViolation]:
    roles = {role.name: role for role in schema.roles}
    return _role_violations(schema) + _data_spec_violations(job, roles, datasets)


def _role_violations(schema: design_pb2.Schema) -> list[FieldViolation]:
    violations = []
    for i, role in enumerate(schema.roles):
        path = f"schema.roles[{i}].group_association"
        if not role.is_data_consumer and not role.group_association:
            violations.append(
                FieldViolation(path, f"role {role.name!r} has no group association, so no task")
            )
        for k, association in enumerate(role.group_association):
            if not association.channel_groups:
                violations.append(FieldViolation(f"{path}[{k}]", "the association is empty"))
    return violations


def _data_spec_violations(
    job: job_pb2.Job,
    roles: Mapping[str, design_pb2.Role],
    datasets: Mapping[str, dataset_pb2.Dataset],
) -> list[FieldViolation]:
    violations = []
    covered: set[str] = set()
    for j, entry in enumerate(job.data_spec):
        path = f"job.data_spec[{j}]"
        role = roles.get(entry.role)
        if role is None or not role.is_data_consumer:
            description = f"{entry.role!r} is not a data-consumer role of the schema"
            violations.append(FieldViolation(f"{path}.role", description))
        elif entry.role in covered:
            violations.append(FieldViolation(f"{path}.role", f"role {entry.role!r} is repeated"))
        else:
            covered.add(entry.role)
            violations += _group_violations(path, role, entry, datasets)
    for name in sorted(roles):
        if roles[name].is_data_consumer and name not in covered:
            description = f"data-consumer role {name!r} has no datasets"
            violations.append(FieldViolation("job.data_spec", description))
    return violations


def _group_violations(
    path: str,
    role: design_pb2.Role,
    entry: job_pb2.RoleDatasets,
    datasets: Mapping[str, dataset_pb2.Dataset],
) -> list[FieldViolation]:
    if not entry.dataset_groups:
        return [FieldViolation(f"{path}.dataset_groups", f"role {role.name!r} has no datasets")]
    violations = []
    for group in sorted(entry.dataset_groups):
        # JSON-quoted so that a key holding `"` or `]` still reads as one map key.
        group_path = f"{path}.dataset_groups[{json.dumps(group, ensure_ascii=False)}]"
        if _association_for(role, group) is None:
            description = f"group {group!r} is in no group association of role {role.name!r}"
            violations.append(FieldViolation(group_path, description))
        dataset_ids = entry.dataset_groups[group].dataset_ids
        if not dataset_ids:
            violations.append(FieldViolation(f"{group_path}.dataset_ids", "the group is empty"))
        for k, dataset_id in enumerate(dataset_ids):
            if dataset_id not in datasets:
                description = f"dataset {dataset_id!r} not found"
                violations.append(FieldViolation(f"{group_path}.dataset_ids[{k}]", description))
    return violations


# --- config rendering -------------------------------------------------------


def _job_config(job: job_pb2.Job, params: PlatformParams) -> Json:
    """The config keys shared by every task of the job."""
    spec = job.model_spec
    config: Json = {"backend": job.backend}
    if params.brokers:
        config["brokers"] = [{"sort": b.sort, "host": b.host} for b in params.brokers]
    config["registry"] = {"sort": params.registry.sort, "uri": params.registry.uri}
    config["job"] = {"id": job.id, "name": job.design_id}
    # Always emitted: without it the SDK assumes 300 s while the job timer says 600.
    config["maxRunTime"] = job.max_run_time_seconds or DEFAULT_MAX_RUN_TIME_SECONDS
    config["baseModel"] = _base_model(spec.base_model)
    hyperparameters = _struct(spec.hyperparameters, "job.model_spec.hyperparameters")
    if hyperparameters:
        config["hyperparameters"] = hyperparameters
    if spec.dependencies:
        config["dependencies"] = list(spec.dependencies)
    # The SDK requires `selector`; `optimizer` is kept for parity with the original.
    config["optimizer"] = _plugin(spec.optimizer, "optimizer")
    config["selector"] = _plugin(spec.selector, "selector")
    for name in ("privacy", "datasampler"):
        plugin = _plugin(getattr(spec, name), name)
        if plugin:
            config[name] = plugin
    return config


def _base_model(model: job_pb2.BaseModel) -> Json:
    rendered: Json = {}
    if model.name:
        rendered["name"] = model.name
    if model.version:
        rendered["version"] = model.version
    return rendered


def _plugin(plugin: job_pb2.Plugin, name: str) -> Json:
    if not plugin.sort and not plugin.kwargs.fields:
        return {}
    kwargs = _struct(plugin.kwargs, f"job.model_spec.{name}.kwargs")
    return {"sort": plugin.sort, "kwargs": kwargs}


def _struct(struct: struct_pb2.Struct, path: str) -> Json:
    try:
        rendered: Json = json_format.MessageToDict(struct)
    except ValueError as error:  # NaN or infinity, which JSON cannot carry
        violation = FieldViolation(path, str(error))
        raise InvalidArgument("JOB_INVALID", str(error), violations=[violation]) from None
    return {key: _integral(value) for key, value in rendered.items()}


def _integral(value: Any) -> Any:
    """Turn integral floats back into ints, recursively.

    Struct keeps every number as a double, but role code expects `rounds: 5`, not `5.0`.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def _channels(schema: design_pb2.Schema, role: str) -> list[Json]:
    """The channels the role uses, by name (a self-loop once)."""
    used = [channel for channel in schema.channels if role in channel.pair]
    return [_channel(channel) for channel in sorted(used, key=lambda c: c.name)]


def _channel(channel: design_pb2.Channel) -> Json:
    group_by = channel.group_by
    rendered: Json = {
        "name": channel.name,
        "description": channel.description,
        "pair": list(channel.pair),
        # An empty groupBy would leave the SDK without a group: use the original's default.
        "groupBy": (
            {"type": group_by.type, "value": list(group_by.value)}
            if group_by.value
            else {"type": "tag", "value": ["default"]}
        ),
        "funcTags": {role: list(tags.tags) for role, tags in channel.func_tags.items()},
    }
    if channel.backend:
        rendered["backend"] = channel.backend
    if channel.broker_host:
        rendered["brokerHost"] = channel.broker_host
    if channel.is_unidirectional:
        rendered["isUnidirectional"] = True
    return rendered
