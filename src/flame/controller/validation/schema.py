"""Validation of a design's topology schema (roles and channels)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from flame.controller.validation._report import map_key, raise_if_any
from flame.controller.validation.names import NameKind, validate_name
from flame.design.v1 import design_pb2
from flame.rpc.errors import FieldViolation

__all__ = ["SCHEMA_INVALID", "validate_schema"]

SCHEMA_INVALID = "SCHEMA_INVALID"

_BACKENDS = ("", "mqtt", "p2p")
_GROUP_BY_TYPES = ("", "tag")


def validate_schema(schema: design_pb2.Schema) -> None:
    """Check a schema before it is stored as a design's next revision.

    Field paths start at `schema`, the field of `CreateSchemaRequest`.

    Args:
        schema: The schema as sent by the user.

    Raises:
        InvalidArgument: reason `SCHEMA_INVALID`, with one violation per problem.
    """
    violations: list[FieldViolation] = []
    if not schema.name:
        violations.append(FieldViolation("schema.name", "schema name is required"))
    violations += _role_violations(schema.roles)
    violations += _channel_violations(schema)
    violations += _association_violations(schema)
    raise_if_any(SCHEMA_INVALID, "invalid schema", violations)


def _role_violations(roles: Sequence[design_pb2.Role]) -> list[FieldViolation]:
    if not roles:
        return [FieldViolation("schema.roles", "at least one role is required")]
    violations = _unique_name_violations([r.name for r in roles], "schema.roles", "role")
    for i, role in enumerate(roles):
        path = f"schema.roles[{i}]"
        if role.replica < 0:
            violations.append(
                FieldViolation(f"{path}.replica", f"replica must be 0 or more, not {role.replica}")
            )
        # The original builder silently expanded such a role into zero tasks.
        if not role.is_data_consumer and not role.group_association:
            violations.append(
                FieldViolation(
                    f"{path}.group_association",
                    f"role {role.name!r} is not a data consumer, so it needs at least one "
                    "group association to get tasks",
                )
            )
    if not any(role.is_data_consumer for role in roles):
        violations.append(
            FieldViolation("schema.roles", "at least one role must be a data consumer")
        )
    return violations


def _unique_name_violations(names: list[str], path: str, kind: NameKind) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    first_index: dict[str, int] = {}
    for i, name in enumerate(names):
        field = f"{path}[{i}].name"
        if bad := validate_name(name, field, kind):
            violations.append(bad)
        elif name in first_index:
            violations.append(
                FieldViolation(field, f"{kind} name {name!r} is also used by [{first_index[name]}]")
            )
        else:
            first_index[name] = i
    return violations


def _channel_violations(schema: design_pb2.Schema) -> list[FieldViolation]:
    names = [c.name for c in schema.channels]
    violations = _unique_name_violations(names, "schema.channels", "channel")
    role_names = {role.name for role in schema.roles}
    for i, channel in enumerate(schema.channels):
        path = f"schema.channels[{i}]"
        violations += _pair_violations(channel, path, role_names)
        violations += _group_by_violations(channel.group_by, f"{path}.group_by")
        violations += _func_tag_violations(channel, f"{path}.func_tags")
        if channel.backend not in _BACKENDS:
            violations.append(
                FieldViolation(
                    f"{path}.backend",
                    f"backend {channel.backend!r} is not one of mqtt, p2p (or empty)",
                )
            )
    return violations


def _pair_violations(
    channel: design_pb2.Channel, path: str, role_names: set[str]
) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    if len(channel.pair) != 2:
        violations.append(
            FieldViolation(
                f"{path}.pair", f"pair must name exactly 2 roles, not {len(channel.pair)}"
            )
        )
    for k, role in enumerate(channel.pair):
        if role not in role_names:
            violations.append(FieldViolation(f"{path}.pair[{k}]", f"unknown role {role!r}"))
    return violations


def _group_by_violations(group_by: design_pb2.GroupBy, path: str) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    if group_by.type not in _GROUP_BY_TYPES:
        violations.append(
            FieldViolation(f"{path}.type", f"type {group_by.type!r} is not 'tag' (or empty)")
        )
    if not group_by.value:
        violations.append(FieldViolation(f"{path}.value", "at least one group is required"))
    seen: set[str] = set()
    for k, group in enumerate(group_by.value):
        field = f"{path}.value[{k}]"
        if bad := validate_name(group, field, "group"):
            violations.append(bad)
        elif group in seen:
            violations.append(FieldViolation(field, f"group {group!r} is listed twice"))
        seen.add(group)
    return violations


def _func_tag_violations(channel: design_pb2.Channel, path: str) -> list[FieldViolation]:
    # The SDK indexes func_tags by its own role and fails without an entry.
    missing = [role for role in dict.fromkeys(channel.pair) if role not in channel.func_tags]
    extra = [role for role in sorted(channel.func_tags) if role not in channel.pair]
    return [
        FieldViolation(map_key(path, role), f"role {role!r} of the pair needs function tags")
        for role in missing
    ] + [
        FieldViolation(map_key(path, role), f"role {role!r} is not in the channel's pair")
        for role in extra
    ]


def _association_violations(schema: design_pb2.Schema) -> list[FieldViolation]:
    # On duplicate channel names the first one counts; the duplicate is reported already.
    channels: dict[str, design_pb2.Channel] = {}
    for channel in schema.channels:
        channels.setdefault(channel.name, channel)
    violations: list[FieldViolation] = []
    for i, role in enumerate(schema.roles):
        for j, association in enumerate(role.group_association):
            path = f"schema.roles[{i}].group_association[{j}].channel_groups"
            if not association.channel_groups:
                violations.append(FieldViolation(path, "an association needs at least one channel"))
            violations += _channel_group_violations(
                role.name, association.channel_groups, channels, path
            )
    return violations


def _channel_group_violations(
    role: str,
    channel_groups: Mapping[str, str],
    channels: Mapping[str, design_pb2.Channel],
    path: str,
) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    for name in sorted(channel_groups):
        field, group = map_key(path, name), channel_groups[name]
        channel = channels.get(name)
        if channel is None:
            violations.append(FieldViolation(field, f"unknown channel {name!r}"))
            continue
        if role not in channel.pair:
            violations.append(
                FieldViolation(field, f"channel {name!r} does not connect role {role!r}")
            )
        if group not in channel.group_by.value:
            violations.append(
                FieldViolation(
                    field, f"group {group!r} is not in the group_by.value of channel {name!r}"
                )
            )
    return violations
