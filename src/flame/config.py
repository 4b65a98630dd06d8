"""The task configuration: one JSON file per worker, as the original Flame SDK read it.

The control plane writes the file (camelCase keys); `Config(path)` parses it into frozen
dataclasses with snake_case attributes and the original defaults, and raises
`ConfigError`, naming the key, on bad input. Unknown top-level keys are ignored.

Example:
    >>> config = Config("config.json")                    # doctest: +SKIP
    >>> config.role, config.hyperparameters.rounds         # doctest: +SKIP
    ('trainer', 20)
    >>> config.func_tag_map["fetch"]                       # doctest: +SKIP
    'param-channel'
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Final, TypeVar

from flame.errors import ConfigError

__all__ = [
    "BACKENDS",
    "DEFAULT_GROUP",
    "BaseModel",
    "ChannelConfig",
    "Config",
    "GroupBy",
    "Hyperparameters",
    "Job",
    "Plugin",
    "Registry",
]

BACKENDS: Final = frozenset({"mqtt", "p2p", "shm", "local"})
DEFAULT_GROUP: Final = "default"
_DEFAULT_HYPERPARAMETERS: Final[Mapping[str, Any]] = {"rounds": 1, "epochs": 1, "batchSize": 16}
# The JSON keys of the Hyperparameters attributes; the others are kept as given in `extra`.
_HYPERPARAMETER_KEYS: Final = frozenset(
    {"rounds", "epochs", "batchSize", "learningRate", "weightDecay", "aggGoal", "concurrency"}
)
_DEFAULT_REGISTRY: Final = "dummy"
_T = TypeVar("_T")


@dataclass(frozen=True)
class Job:
    """The job the task belongs to.

    Attributes:
        id: Scopes every channel of the job.
        name: The job's name; saved models are named `<name>-<id>`.
    """

    id: str
    name: str


@dataclass(frozen=True)
class GroupBy:
    """How a channel splits its workers into groups.

    Attributes:
        type: `"tag"` in practice.
        value: The group labels that exist on the channel.
    """

    type: str = ""
    value: tuple[str, ...] = ()

    def group_of(self, association: str) -> str:
        """The group a worker associated with `association` joins: itself if it is one
        of `value`, else `DEFAULT_GROUP` (the original `groupable_value`)."""
        return association if association in self.value else DEFAULT_GROUP


@dataclass(frozen=True)
class ChannelConfig:
    """One channel of the job's topology.

    Attributes:
        name: Unique within the job.
        pair: The two roles it connects; both may be the same role (a ring).
        group_by: The channel's groups.
        func_tags: Role -> the function tags it performs on this channel.
        description: Free text.
        is_bidirectional: Parsed, unused (as in the original).
        backend: `mqtt` or `p2p` overriding the task's `backend`; "" for none.
        broker_host: Broker address overriding `brokers[backend]`; "" for none.
    """

    name: str
    pair: tuple[str, str]
    group_by: GroupBy = GroupBy()
    func_tags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    description: str = ""
    is_bidirectional: bool = True
    backend: str = ""
    broker_host: str = ""

    def other_role(self, role: str) -> str:
        """The role at the other side of the channel from `role`."""
        return self.pair[1] if role == self.pair[0] else self.pair[0]


@dataclass(frozen=True)
class Plugin:
    """A pluggable algorithm chosen by name (selector, optimizer, privacy, datasampler).

    Attributes:
        sort: The algorithm's name.
        kwargs: Keyword arguments for its constructor.
    """

    sort: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Registry:
    """The model registry.

    Attributes:
        sort: `dummy`, `local` or `mlflow`.
        uri: The tracking URI.
    """

    sort: str = _DEFAULT_REGISTRY
    uri: str = ""


@dataclass(frozen=True)
class BaseModel:
    """The registered model the job starts from; used when `name` is set and `version` > 0."""

    name: str = ""
    version: int = 0


@dataclass(frozen=True)
class Hyperparameters:
    """Training hyperparameters.

    Keys other than the attributes below are kept, as given, in `extra` and are also
    readable as attributes when they are identifiers (`hyperparameters.momentum`).

    Attributes:
        rounds: Rounds the top aggregator runs.
        epochs: Local epochs per round.
        batch_size: JSON `batchSize`.
        learning_rate: JSON `learningRate`.
        weight_decay: JSON `weightDecay`.
        aggregation_goal: JSON `aggGoal`: updates an asynchronous aggregator buffers.
        concurrency: Concurrency of a coordinated asynchronous coordinator.
        extra: Every other key.
    """

    rounds: int = 1
    epochs: int = 1
    batch_size: int | None = 16
    learning_rate: float | None = None
    weight_decay: float | None = None
    aggregation_goal: int | None = None
    concurrency: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not attributes. `extra` itself may be missing
        # while copy or pickle rebuild the object: never recurse into it then.
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"no hyperparameter {name!r}")


@dataclass(frozen=True, init=False)
class Config:
    """The configuration of one task (worker).

    Args:
        path: The task configuration JSON file.

    Raises:
        ConfigError: The file cannot be read, is not JSON, or a key is missing or invalid;
            the error's `key` names it.

    Attributes:
        task_id: JSON `taskid`: the worker's id, its end id on every channel.
        role: This worker's role.
        realm: Logical location (deprecated; may be "").
        group_association: Channel name -> the group label of this worker.
        backend: Default backend of the channels: `mqtt`, `p2p` (`shm`, `local` parse).
        brokers: Backend sort -> broker address.
        channels: Channel name -> its configuration, in file order.
        func_tag_map: Function tag -> the channel this role performs it on.
        job: The job.
        selector: Selector sort and kwargs (default `default`).
        optimizer: Optimizer sort and kwargs (default `fedavg`).
        privacy: Privacy sort and kwargs (default `default`).
        datasampler: Datasampler sort and kwargs (default `default`); as in the original,
            its kwargs also hold the raw hyperparameters.
        registry: The model registry (default `dummy`).
        hyperparameters: The hyperparameters.
        dataset: Dataset URL of this worker ("" if none).
        max_run_time: JSON `maxRunTime` in seconds (default 300).
        base_model: JSON `baseModel`.
        dependencies: Pip requirement strings.
        task: Unused (default `local`).
        raw: The JSON object as read, for the data plane.
    """

    task_id: str
    role: str
    realm: str
    group_association: Mapping[str, str]
    backend: str
    brokers: Mapping[str, str]
    channels: Mapping[str, ChannelConfig]
    func_tag_map: Mapping[str, str]
    job: Job
    selector: Plugin
    optimizer: Plugin
    privacy: Plugin
    datasampler: Plugin
    registry: Registry
    hyperparameters: Hyperparameters
    dataset: str
    max_run_time: int
    base_model: BaseModel
    dependencies: tuple[str, ...]
    task: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._assign(_parse(_read(path)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Parse an already loaded task configuration (the JSON object).

        Raises:
            ConfigError: A key is missing or invalid.
        """
        config = cls.__new__(cls)
        config._assign(_parse(data))
        return config

    def group_of(self, channel: str) -> str:
        """The group this worker joins on `channel` (a name in `channels`)."""
        association = self.group_association.get(channel, "")
        return self.channels[channel].group_by.group_of(association)

    def _assign(self, values: Mapping[str, Any]) -> None:
        for item in fields(self):
            # The dataclass is frozen: this is its constructor, the only writer.
            object.__setattr__(self, item.name, values[item.name])


def _read(path: str | os.PathLike[str]) -> Any:
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except OSError as exc:
        raise ConfigError("", f"cannot read {os.fspath(path)!r}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError("", f"{os.fspath(path)!r} is not JSON: {exc}") from exc


def _parse(data: Any) -> dict[str, Any]:
    data = _check(data, dict, "")
    role = _required(data, "role", str)
    channels = _channels(_required(data, "channels", list), role)
    hyper_raw = {**_DEFAULT_HYPERPARAMETERS, **_optional(data, "hyperparameters", dict, {})}
    return {
        "task_id": _required(data, "taskid", str),
        "role": role,
        "realm": _required(data, "realm", str),
        "group_association": _str_map(data, "groupAssociation"),
        "backend": _backend(data),
        "brokers": _brokers(_required(data, "brokers", list)),
        "channels": MappingProxyType(channels),
        "func_tag_map": _func_tag_map(channels.values(), role),
        "job": _job(_required(data, "job", dict)),
        "selector": _plugin(data, "selector", "default"),
        "optimizer": _plugin(data, "optimizer", "fedavg"),
        "privacy": _plugin(data, "privacy", "default"),
        "datasampler": _datasampler(data, hyper_raw),
        "registry": _registry(_optional(data, "registry", dict, {})),
        "hyperparameters": _hyperparameters(hyper_raw),
        "dataset": _optional(data, "dataset", str, ""),
        "max_run_time": _optional(data, "maxRunTime", int, 300),
        "base_model": _base_model(_optional(data, "baseModel", dict, {})),
        "dependencies": _str_tuple(_optional(data, "dependencies", list, []), "dependencies"),
        "task": _optional(data, "task", str, "local"),
        "raw": MappingProxyType(copy.deepcopy(data)),
    }


def _check(value: Any, kind: type[_T], key: str) -> _T:
    # JSON has no separate bool: `true` must not pass for an integer.
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(key, f"expected {_KIND_NAMES[kind]}, got {value!r}")
    if kind is float and isinstance(value, int):
        return float(value)  # type: ignore[return-value]
    if not isinstance(value, kind):
        raise ConfigError(key, f"expected {_KIND_NAMES[kind]}, got {value!r}")
    return value


_KIND_NAMES: Final[Mapping[type, str]] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "an object",
}


def _key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _required(data: Mapping[str, Any], key: str, kind: type[_T], prefix: str = "") -> _T:
    if key not in data:
        raise ConfigError(_key(prefix, key), "is required")
    return _check(data[key], kind, _key(prefix, key))


def _optional(
    data: Mapping[str, Any], key: str, kind: type[_T], default: _T, prefix: str = ""
) -> _T:
    # The original read optional keys with `.get(key, None)`: null means absent.
    if data.get(key) is None:
        return default
    return _check(data[key], kind, _key(prefix, key))


def _str_tuple(values: list[Any], key: str) -> tuple[str, ...]:
    return tuple(_check(value, str, f"{key}[{index}]") for index, value in enumerate(values))


def _str_map(data: Mapping[str, Any], key: str) -> Mapping[str, str]:
    mapping = _required(data, key, dict)
    return MappingProxyType({name: _check(v, str, f"{key}.{name}") for name, v in mapping.items()})


def _backend(data: Mapping[str, Any]) -> str:
    backend = _required(data, "backend", str)
    if backend not in BACKENDS:
        raise ConfigError("backend", f"{backend!r} is not one of {sorted(BACKENDS)}")
    return backend


def _brokers(entries: list[Any]) -> Mapping[str, str]:
    brokers: dict[str, str] = {}
    for index, entry in enumerate(entries):
        key = f"brokers[{index}]"
        entry = _check(entry, dict, key)
        brokers[_required(entry, "sort", str, key)] = _required(entry, "host", str, key)
    return MappingProxyType(brokers)


def _job(job: Mapping[str, Any]) -> Job:
    return Job(id=_required(job, "id", str, "job"), name=_required(job, "name", str, "job"))


def _channels(entries: list[Any], role: str) -> dict[str, ChannelConfig]:
    channels: dict[str, ChannelConfig] = {}
    for index, entry in enumerate(entries):
        key = f"channels[{index}]"
        channel = _channel(_check(entry, dict, key), key)
        if channel.name in channels:
            raise ConfigError(f"{key}.name", f"channel {channel.name!r} is defined twice")
        _check_role(channel, role, key)
        channels[channel.name] = channel
    return channels


def _channel(entry: Mapping[str, Any], key: str) -> ChannelConfig:
    return ChannelConfig(
        name=_required(entry, "name", str, key),
        pair=_pair(_required(entry, "pair", list, key), f"{key}.pair"),
        group_by=_group_by(_optional(entry, "groupBy", dict, {}, key), f"{key}.groupBy"),
        func_tags=_func_tags(_optional(entry, "funcTags", dict, {}, key), f"{key}.funcTags"),
        description=_optional(entry, "description", str, "", key),
        is_bidirectional=_optional(entry, "isBidirectional", bool, True, key),
        backend=_optional(entry, "backend", str, "", key),
        broker_host=_optional(entry, "brokerHost", str, "", key),
    )


def _pair(pair: list[Any], key: str) -> tuple[str, str]:
    if len(pair) != 2:
        raise ConfigError(key, f"expected two role names, got {pair!r}")
    return (_check(pair[0], str, f"{key}[0]"), _check(pair[1], str, f"{key}[1]"))


def _group_by(group_by: Mapping[str, Any], key: str) -> GroupBy:
    values = _optional(group_by, "value", list, [], key)
    return GroupBy(
        type=_optional(group_by, "type", str, "", key),
        value=_str_tuple(values, f"{key}.value"),
    )


def _func_tags(func_tags: Mapping[str, Any], key: str) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType(
        {
            role: _str_tuple(_check(tags, list, f"{key}.{role}"), f"{key}.{role}")
            for role, tags in func_tags.items()
        }
    )


def _check_role(channel: ChannelConfig, role: str, key: str) -> None:
    if role not in channel.pair:
        raise ConfigError(
            f"{key}.pair", f"this task's role {role!r} is not in the pair {list(channel.pair)}"
        )
    if role not in channel.func_tags:
        raise ConfigError(
            f"{key}.funcTags",
            f"has no entry for this task's role {role!r}: every channel must list the "
            "function tags the role performs on it (an empty list is allowed)",
        )


def _func_tag_map(channels: Iterable[ChannelConfig], role: str) -> Mapping[str, str]:
    tag_map: dict[str, str] = {}
    for channel in channels:
        for tag in channel.func_tags[role]:
            if tag_map.setdefault(tag, channel.name) != channel.name:
                raise ConfigError(
                    "channels",
                    f"function tag {tag!r} of role {role!r} is on two channels: "
                    f"{tag_map[tag]!r} and {channel.name!r}",
                )
    return MappingProxyType(tag_map)


def _plugin(data: Mapping[str, Any], key: str, default_sort: str) -> Plugin:
    block = _optional(data, key, dict, {})
    return Plugin(
        # The control plane writes `{}` or `"sort": ""` for "not chosen".
        sort=_optional(block, "sort", str, "", key) or default_sort,
        kwargs=MappingProxyType(_optional(block, "kwargs", dict, {}, key)),
    )


def _datasampler(data: Mapping[str, Any], hyper_raw: Mapping[str, Any]) -> Plugin:
    plugin = _plugin(data, "datasampler", "default")
    if "datasampler" not in data:
        return plugin
    # As in the original: the sampler (FedBalancer) takes epochs, batchSize... as kwargs.
    return Plugin(plugin.sort, MappingProxyType({**plugin.kwargs, **hyper_raw}))


def _registry(registry: Mapping[str, Any]) -> Registry:
    return Registry(
        sort=_optional(registry, "sort", str, "", "registry") or _DEFAULT_REGISTRY,
        uri=_optional(registry, "uri", str, "", "registry"),
    )


def _base_model(base_model: Mapping[str, Any]) -> BaseModel:
    return BaseModel(
        name=_optional(base_model, "name", str, "", "baseModel"),
        version=_optional(base_model, "version", int, 0, "baseModel"),
    )


def _hyperparameters(raw: Mapping[str, Any]) -> Hyperparameters:
    key = "hyperparameters"
    return Hyperparameters(
        rounds=_required(raw, "rounds", int, key),
        epochs=_required(raw, "epochs", int, key),
        batch_size=_optional(raw, "batchSize", int, None, key),
        learning_rate=_optional(raw, "learningRate", float, None, key),
        weight_decay=_optional(raw, "weightDecay", float, None, key),
        aggregation_goal=_optional(raw, "aggGoal", int, None, key),
        concurrency=_optional(raw, "concurrency", int, None, key),
        extra=MappingProxyType(
            {name: value for name, value in raw.items() if name not in _HYPERPARAMETER_KEYS}
        ),
    )
