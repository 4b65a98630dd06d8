"""The parts of a task configuration JSON the data plane needs, checked once.

The keys are the original Flame ones (reference/flame-sdk.md §1): `taskid`, `role`,
`job{id,name}`, `backend`, `brokers[{sort,host}]`, `channels[...]` and
`groupAssociation`. Every name that becomes an MQTT topic level is checked here, so
that no `/`, `+` or `#` can change the routing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_GROUP",
    "ChannelSpec",
    "ConfigError",
    "TaskConfig",
    "parse_task_config",
    "resolve_group",
]

DEFAULT_GROUP = "default"

# Task ids are 40 hex digits and job ids 24; role, channel and group names follow the
# controller's name format. One pattern admits all of them as topic levels.
_TOPIC_LEVEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class ConfigError(ValueError):
    """The task configuration lacks a key or holds a value the data plane cannot use."""


@dataclass(frozen=True)
class ChannelSpec:
    """One channel as this task sees it.

    Attributes:
        name: Channel name, unique within the job.
        role: This task's role on the channel.
        other_role: The role whose tasks are this task's ends (the same role on a
            self-loop channel).
        group: This task's group on the channel.
        backend: `mqtt` or `p2p`.
        broker_host: The channel's own broker address (`host[:port]`), or "" to use
            the task's broker for `backend`.
    """

    name: str
    role: str
    other_role: str
    group: str
    backend: str
    broker_host: str


@dataclass(frozen=True)
class TaskConfig:
    """The task's identity and channels.

    Attributes:
        task_id: This task's id: its end id on every channel.
        role: This task's role.
        job_id: The job's id; it scopes every topic.
        job_name: The job's name.
        brokers: Broker address per backend sort, e.g. `{"mqtt": "localhost"}`.
        channels: The channels this task's role is part of, by name.
    """

    task_id: str
    role: str
    job_id: str
    job_name: str
    brokers: Mapping[str, str]
    channels: Mapping[str, ChannelSpec]

    def broker_host(self, channel: ChannelSpec) -> str:
        """The broker address of `channel`: its own, else the task's for its backend."""
        return channel.broker_host or self.brokers.get(channel.backend, "")


def parse_task_config(config: Mapping[str, Any]) -> TaskConfig:
    """Check a parsed task configuration and keep what the data plane needs.

    Channels whose pair does not include the task's role are left out: the task can
    never join them.

    Args:
        config: The task configuration JSON, parsed.

    Returns:
        The task's identity and channels.

    Raises:
        ConfigError: A key is missing, or a name is not usable as a topic level.
    """
    task_id = _level(_get(config, "taskid", str), "taskid")
    role = _level(_get(config, "role", str), "role")
    job = _get(config, "job", dict)
    job_id = _level(_get(job, "id", str, "job."), "job.id")
    default_backend = config.get("backend") or "mqtt"
    brokers = {
        str(entry.get("sort", "")): str(entry.get("host", ""))
        for entry in config.get("brokers") or []
        if isinstance(entry, Mapping)
    }
    associations = config.get("groupAssociation") or {}
    channels: dict[str, ChannelSpec] = {}
    for index, entry in enumerate(config.get("channels") or []):
        spec = _channel(entry, index, role, default_backend, associations)
        if spec is not None:
            channels[spec.name] = spec
    return TaskConfig(task_id, role, job_id, str(job.get("name", "")), brokers, channels)


def resolve_group(name: str, group_by: Mapping[str, Any], associations: Mapping[str, Any]) -> str:
    """The task's group on channel `name`: its association if the channel lists it.

    As in the original SDK, an association the channel's `groupBy.value` does not list
    (or an empty list) puts the task in the `default` group.
    """
    association = associations.get(name)
    values = group_by.get("value") or []
    return str(association) if association in values else DEFAULT_GROUP


def _channel(
    entry: Any,
    index: int,
    role: str,
    default_backend: str,
    associations: Mapping[str, Any],
) -> ChannelSpec | None:
    where = f"channels[{index}]."
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where[:-1]} must be an object")
    name = _level(_get(entry, "name", str, where), f"{where}name")
    pair = _get(entry, "pair", list, where)
    if len(pair) != 2 or not all(isinstance(r, str) for r in pair):
        raise ConfigError(f"{where}pair must name two roles")
    if role not in pair:
        return None
    other = pair[1] if pair[0] == role else pair[0]
    group = resolve_group(name, entry.get("groupBy") or {}, associations)
    return ChannelSpec(
        name=name,
        role=role,
        other_role=_level(other, f"{where}pair"),
        group=_level(group, f"groupAssociation.{name}"),
        backend=str(entry.get("backend") or default_backend),
        broker_host=str(entry.get("brokerHost") or ""),
    )


def _get(mapping: Mapping[str, Any], key: str, kind: type, where: str = "") -> Any:
    value = mapping.get(key)
    if not isinstance(value, kind) or not value:
        raise ConfigError(f"{where}{key} is required and must be a non-empty {kind.__name__}")
    return value


def _level(value: str, field: str) -> str:
    if _TOPIC_LEVEL.fullmatch(value) is None:
        raise ConfigError(f"{field} {value!r} does not match {_TOPIC_LEVEL.pattern}")
    return value
