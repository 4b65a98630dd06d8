"""The user's JSON files, in the original Flame formats, to protobuf messages and back.

- `schema.json` ↔ `design_pb2.Schema`: a role's `groupAssociation` is a list of
  `{channel: group}` objects, a channel's `funcTags` maps a role to its list of tags.
- `dataset.json` → `dataset_pb2.Dataset`.
- `job.json` → `job_pb2.Job`: `dataSpecPath` and `modelSpecPath` name files
  relative to `job.json`, merged into `data_spec` and `model_spec`.

Keys starting with `//` are comments and are ignored. Keys the server assigns
(`id`, `revision`, `createTime`...) are ignored too, so that what `flamectl get
... -o json` prints can be loaded again. Keys of the original formats that this
platform does not support (`registry`, `connectors`) are dropped with a warning.
Any other key is an error naming the file and the key, as the original server
rejected unknown fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NamedTuple, NoReturn, TypeVar

import click
from google.protobuf.message import Message

from flame.cli.errors import InputError
from flame.data.v1 import dataset_pb2
from flame.design.v1 import design_pb2
from flame.job.v1 import job_pb2

__all__ = ["Loaded", "load_dataset", "load_job", "load_schema", "schema_to_dict"]

M = TypeVar("M", bound=Message)

_COMMENT = "//"


class Loaded(NamedTuple, Generic[M]):
    """A message read from a file, and the proto names of the fields the file set."""

    message: M
    fields: list[str]


@dataclass(frozen=True)
class _Keys:
    """The keys one kind of JSON object may have."""

    known: frozenset[str]
    server_assigned: frozenset[str] = frozenset()
    unsupported: frozenset[str] = frozenset()


_SCHEMA = _Keys(
    frozenset({"name", "description", "roles", "channels"}),
    server_assigned=frozenset({"revision", "createTime"}),
    unsupported=frozenset({"connectors"}),
)
_ROLE = _Keys(frozenset({"name", "description", "isDataConsumer", "replica", "groupAssociation"}))
_CHANNEL = _Keys(
    frozenset(
        {
            "name",
            "description",
            "pair",
            "groupBy",
            "funcTags",
            "backend",
            "brokerHost",
            "isUnidirectional",
        }
    )
)
_GROUP_BY = _Keys(frozenset({"type", "value"}))

# dataset.json key -> Dataset field.
_DATASET_FIELDS = {
    "name": "name",
    "description": "description",
    "url": "url",
    "dataFormat": "data_format",
    "realm": "realm",
    "isPublic": "is_public",
}
_DATASET = _Keys(
    frozenset(_DATASET_FIELDS),
    server_assigned=frozenset({"id", "userId", "owner", "computeId", "createTime", "updateTime"}),
)

# job.json key -> Job field.
_JOB_FIELDS = {
    "name": "name",
    "designId": "design_id",
    "schemaVersion": "schema_revision",
    "codeVersion": "code_revision",
    "priority": "priority",
    "backend": "backend",
    "maxRunTime": "max_run_time_seconds",
    "dataSpecPath": "data_spec",
    "modelSpecPath": "model_spec",
}
_JOB = _Keys(frozenset(_JOB_FIELDS), server_assigned=frozenset({"id", "userId"}))
_ROLE_DATASETS = _Keys(frozenset({"role", "datasetGroups"}))
_PLUGINS = ("optimizer", "selector", "privacy", "datasampler")
_MODEL_SPEC = _Keys(
    frozenset({"baseModel", "hyperparameters", "dependencies", *_PLUGINS}),
    unsupported=frozenset({"registry"}),
)
_BASE_MODEL = _Keys(frozenset({"name", "version"}))
_PLUGIN = _Keys(frozenset({"sort", "kwargs"}))
_PRIORITIES = {
    "low": job_pb2.Job.PRIORITY_LOW,
    "medium": job_pb2.Job.PRIORITY_MEDIUM,
    "high": job_pb2.Job.PRIORITY_HIGH,
}


def load_schema(path: Path) -> design_pb2.Schema:
    """Read a `schema.json` file.

    Args:
        path: The file.

    Returns:
        The schema; its revision is left to the server.

    Raises:
        InputError: The file cannot be read, is not JSON, has an unknown key or a
            value of the wrong type.

    Example:
        >>> [role.name for role in load_schema(Path("schema.json")).roles]
        ['trainer', 'aggregator']
    """
    source = _Source(path)
    data = source.object(source.read(), "", _SCHEMA)
    return design_pb2.Schema(
        name=source.text(data, "name", ""),
        description=source.text(data, "description", ""),
        roles=[
            _role(source, item, f"roles[{i}]")
            for i, item in enumerate(source.array(data, "roles", ""))
        ],
        channels=[
            _channel(source, item, f"channels[{i}]")
            for i, item in enumerate(source.array(data, "channels", ""))
        ],
    )


def _role(source: _Source, value: Any, where: str) -> design_pb2.Role:
    data = source.object(value, where, _ROLE)
    associations = source.array(data, "groupAssociation", where)
    return design_pb2.Role(
        name=source.text(data, "name", where),
        description=source.text(data, "description", where),
        is_data_consumer=source.flag(data, "isDataConsumer", where),
        replica=source.integer(data, "replica", where),
        group_association=[
            design_pb2.GroupAssociation(
                channel_groups=source.text_map(item, f"{where}.groupAssociation[{i}]")
            )
            for i, item in enumerate(associations)
        ],
    )


def _channel(source: _Source, value: Any, where: str) -> design_pb2.Channel:
    data = source.object(value, where, _CHANNEL)
    channel = design_pb2.Channel(
        name=source.text(data, "name", where),
        description=source.text(data, "description", where),
        pair=source.texts(data, "pair", where),
        backend=source.text(data, "backend", where),
        broker_host=source.text(data, "brokerHost", where),
        is_unidirectional=source.flag(data, "isUnidirectional", where),
    )
    if "groupBy" in data:
        group_by = source.object(data["groupBy"], f"{where}.groupBy", _GROUP_BY)
        channel.group_by.type = source.text(group_by, "type", f"{where}.groupBy")
        channel.group_by.value.extend(source.texts(group_by, "value", f"{where}.groupBy"))
    func_tags = source.mapping(data, "funcTags", where)
    for role in func_tags:
        channel.func_tags[role].tags.extend(source.texts(func_tags, role, f"{where}.funcTags"))
    return channel


def schema_to_dict(schema: design_pb2.Schema) -> dict[str, Any]:
    """A schema in the `schema.json` format, with its revision and creation time.

    Fields at their default value are left out, as in the files users write, so
    `load_schema` reads the result back into an equal schema.

    Args:
        schema: The schema.

    Returns:
        JSON-ready data.
    """
    create_time = schema.create_time.ToJsonString() if schema.HasField("create_time") else ""
    return _without_defaults(
        {
            "revision": schema.revision,
            "createTime": create_time,
            "name": schema.name,
            "description": schema.description,
            "roles": [_role_to_dict(role) for role in schema.roles],
            "channels": [_channel_to_dict(channel) for channel in schema.channels],
        }
    )


def _role_to_dict(role: design_pb2.Role) -> dict[str, Any]:
    return _without_defaults(
        {
            "name": role.name,
            "description": role.description,
            "isDataConsumer": role.is_data_consumer,
            "replica": role.replica,
            "groupAssociation": [dict(a.channel_groups) for a in role.group_association],
        }
    )


def _channel_to_dict(channel: design_pb2.Channel) -> dict[str, Any]:
    group_by = {"type": channel.group_by.type, "value": list(channel.group_by.value)}
    return _without_defaults(
        {
            "name": channel.name,
            "description": channel.description,
            "pair": list(channel.pair),
            "groupBy": group_by if channel.HasField("group_by") else {},
            "funcTags": {role: list(tags.tags) for role, tags in channel.func_tags.items()},
            "backend": channel.backend,
            "brokerHost": channel.broker_host,
            "isUnidirectional": channel.is_unidirectional,
        }
    )


def _without_defaults(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if value not in ("", 0, False, [], {})}


def load_dataset(path: Path) -> Loaded[dataset_pb2.Dataset]:
    """Read a `dataset.json` file.

    Args:
        path: The file.

    Returns:
        The dataset, and the fields the file set (the update mask of `update dataset`).

    Raises:
        InputError: The file cannot be read, is not JSON, has an unknown key or a
            value of the wrong type.
    """
    source = _Source(path)
    data = source.object(source.read(), "", _DATASET)
    dataset = dataset_pb2.Dataset(
        name=source.text(data, "name", ""),
        description=source.text(data, "description", ""),
        url=source.text(data, "url", ""),
        data_format=source.text(data, "dataFormat", ""),
        realm=source.text(data, "realm", ""),
        is_public=source.flag(data, "isPublic", ""),
    )
    return Loaded(dataset, [_DATASET_FIELDS[key] for key in data])


def load_job(path: Path) -> Loaded[job_pb2.Job]:
    """Read a `job.json` file with the data spec and model spec files it names.

    Args:
        path: The job file. Its `dataSpecPath` and `modelSpecPath` are relative
            to its folder.

    Returns:
        The job, and the fields the file set (the update mask of `update job`).

    Raises:
        InputError: One of the files cannot be read, is not JSON, has an unknown
            key or a value of the wrong type.

    Example:
        >>> load_job(Path("job.json")).message.model_spec.hyperparameters["rounds"]
        5.0
    """
    source = _Source(path)
    data = source.object(source.read(), "", _JOB)
    job = job_pb2.Job(
        name=source.text(data, "name", ""),
        design_id=source.text(data, "designId", ""),
        schema_revision=source.revision(data, "schemaVersion"),
        code_revision=source.revision(data, "codeVersion"),
        priority=_priority(source, data),
        backend=source.text(data, "backend", ""),
        max_run_time_seconds=source.integer(data, "maxRunTime", ""),
    )
    if "dataSpecPath" in data:
        job.data_spec.extend(_data_spec(source.beside(data, "dataSpecPath")))
    if "modelSpecPath" in data:
        job.model_spec.CopyFrom(_model_spec(source.beside(data, "modelSpecPath")))
    return Loaded(job, [_JOB_FIELDS[key] for key in data])


def _priority(source: _Source, data: dict[str, Any]) -> job_pb2.Job.Priority.ValueType:
    name = source.text(data, "priority", "")
    if not name:
        return job_pb2.Job.PRIORITY_UNSPECIFIED
    if name.lower() not in _PRIORITIES:
        source.fail("priority", f"expected low, medium or high, not '{name}'")
    return _PRIORITIES[name.lower()]


def _data_spec(source: _Source) -> list[job_pb2.RoleDatasets]:
    items = source.read()
    if not isinstance(items, list):
        source.fail("", "expected an array of {role, datasetGroups} objects")
    result = []
    for i, item in enumerate(items):
        data = source.object(item, f"[{i}]", _ROLE_DATASETS)
        groups = source.mapping(data, "datasetGroups", f"[{i}]")
        where = f"[{i}].datasetGroups"
        result.append(
            job_pb2.RoleDatasets(
                role=source.text(data, "role", f"[{i}]"),
                dataset_groups={
                    group: job_pb2.DatasetGroup(dataset_ids=source.texts(groups, group, where))
                    for group in groups
                },
            )
        )
    return result


def _model_spec(source: _Source) -> job_pb2.ModelSpec:
    data = source.object(source.read(), "", _MODEL_SPEC)
    spec = job_pb2.ModelSpec(dependencies=source.texts(data, "dependencies", ""))
    if "baseModel" in data:
        base = source.object(data["baseModel"], "baseModel", _BASE_MODEL)
        spec.base_model.name = source.text(base, "name", "baseModel")
        spec.base_model.version = source.integer(base, "version", "baseModel")
    spec.hyperparameters.update(source.mapping(data, "hyperparameters", ""))
    for name in _PLUGINS:
        if name in data:
            plugin = source.object(data[name], name, _PLUGIN)
            target = getattr(spec, name)
            target.sort = source.text(plugin, "sort", name)
            target.kwargs.update(source.mapping(plugin, "kwargs", name))
    return spec


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _without_comments(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {key: value for key, value in pairs if not key.startswith(_COMMENT)}


class _Source:
    """One JSON file being read: typed access to its values, and errors that name
    the file and the key path (`roles[0].replica`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> NoReturn:
        raise InputError(f"{self.path}: {where}: {problem}" if where else f"{self.path}: {problem}")

    def read(self) -> Any:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"{self.path}: cannot read the file: {error}") from None
        try:
            return json.loads(text, object_pairs_hook=_without_comments)
        except json.JSONDecodeError as error:
            raise InputError(
                f"{self.path}: invalid JSON at line {error.lineno}, column {error.colno}: "
                f"{error.msg}"
            ) from None

    def beside(self, data: dict[str, Any], key: str) -> _Source:
        """The file that `data[key]` names, relative to this file's folder."""
        return _Source(self.path.parent / self.text(data, key, ""))

    def object(self, value: Any, where: str, keys: _Keys) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, "expected an object")
        known = {}
        for key, item in value.items():
            if key in keys.known:
                known[key] = item
            elif key in keys.unsupported:
                click.echo(
                    f"flamectl: warning: {self.path}: ignored key '{_join(where, key)}' "
                    "(not supported)",
                    err=True,
                )
            elif key not in keys.server_assigned:
                self.fail("", f"unknown key '{_join(where, key)}'")
        return known

    def _value(self, data: dict[str, Any], key: str, where: str, kind: type, default: Any) -> Any:
        value = data.get(key, default)
        # bool is an int in Python; JSON true is not a number.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(_join(where, key), f"expected {_KIND_NAMES[kind]}")
        return value

    def text(self, data: dict[str, Any], key: str, where: str) -> str:
        return str(self._value(data, key, where, str, ""))

    def flag(self, data: dict[str, Any], key: str, where: str) -> bool:
        return bool(self._value(data, key, where, bool, False))

    def integer(self, data: dict[str, Any], key: str, where: str) -> int:
        return int(self._value(data, key, where, int, 0))

    def array(self, data: dict[str, Any], key: str, where: str) -> list[Any]:
        return list(self._value(data, key, where, list, []))

    def mapping(self, data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
        return dict(self._value(data, key, where, dict, {}))

    def texts(self, data: dict[str, Any], key: str, where: str) -> list[str]:
        values = self.array(data, key, where)
        if not all(isinstance(value, str) for value in values):
            self.fail(_join(where, key), "expected an array of strings")
        return values

    def text_map(self, value: Any, where: str) -> dict[str, str]:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            self.fail(where, "expected an object of strings")
        return dict(value)

    def revision(self, data: dict[str, Any], key: str) -> int:
        """A revision number, written as a number or, in the original files, a string."""
        value = data.get(key, 0)
        if isinstance(value, str) and (value.isdigit() or not value):
            return int(value or 0)
        return self.integer(data, key, "")


_KIND_NAMES = {
    str: "a string",
    bool: "true or false",
    int: "an integer",
    list: "an array",
    dict: "an object",
}
