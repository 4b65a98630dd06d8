"""validate_schema: one test per rule, on the original mnist and hier_mnist schemas."""

from __future__ import annotations

import pytest

from flame.controller.validation import SCHEMA_INVALID, validate_schema
from flame.design.v1 import design_pb2
from flame.rpc.errors import InvalidArgument
from tests.controller.validation.helpers import example_schema, fields, rejected

# mnist: roles [trainer (data), aggregator]; channels [param-channel (us)].
# hier_mnist: roles [trainer (data), middle-aggregator, top-aggregator];
# channels [param-channel (eu, na), global-channel (default)].


def mnist() -> design_pb2.Schema:
    return example_schema("mnist")


def hier() -> design_pb2.Schema:
    return example_schema("hier_mnist")


def ring_channel(name: str = "ring") -> design_pb2.Channel:
    """A valid extra channel: a trainer self-loop in group `us`."""
    return design_pb2.Channel(
        name=name,
        pair=["trainer", "trainer"],
        group_by=design_pb2.GroupBy(type="tag", value=["us"]),
        func_tags={"trainer": design_pb2.FunctionTags(tags=["ring_allreduce"])},
    )


def data_role(name: str) -> design_pb2.Role:
    """A valid extra data-consumer role, needing no channel."""
    return design_pb2.Role(name=name, is_data_consumer=True)


def schema_violations(schema: design_pb2.Schema) -> list[str]:
    return fields(rejected(lambda: validate_schema(schema), SCHEMA_INVALID))


@pytest.mark.parametrize("example", ["mnist", "hier_mnist"])
def test_the_original_examples_are_valid(example: str) -> None:
    validate_schema(example_schema(example))


def test_a_self_loop_channel_is_valid() -> None:
    schema = mnist()
    schema.channels.append(ring_channel())
    validate_schema(schema)


def test_name_is_required() -> None:
    schema = mnist()
    schema.name = ""
    assert schema_violations(schema) == ["schema.name"]


def test_at_least_one_role_is_required() -> None:
    assert schema_violations(design_pb2.Schema(name="empty")) == ["schema.roles"]


@pytest.mark.parametrize("name", ["", "two words", "../up", ".hidden", "a/b", "x" * 64, "é"])
def test_role_names_must_be_safe_folder_names(name: str) -> None:
    schema = mnist()
    schema.roles.append(data_role(name))
    assert schema_violations(schema) == ["schema.roles[2].name"]


@pytest.mark.parametrize("name", ["Trainer", "t", "trainer_2.v-1", "x" * 63])
def test_role_names_in_the_safe_format_are_valid(name: str) -> None:
    schema = mnist()
    schema.roles.append(data_role(name))
    validate_schema(schema)


def test_role_names_are_unique() -> None:
    schema = mnist()
    schema.roles.append(schema.roles[0])
    assert schema_violations(schema) == ["schema.roles[2].name"]


def test_at_least_one_role_is_a_data_consumer() -> None:
    schema = mnist()
    schema.roles[0].is_data_consumer = False
    assert schema_violations(schema) == ["schema.roles"]


@pytest.mark.parametrize("replica", [0, 1, 5])
def test_replica_zero_or_more_is_valid(replica: int) -> None:
    schema = mnist()
    schema.roles[1].replica = replica
    validate_schema(schema)


def test_negative_replica_is_rejected() -> None:
    schema = mnist()
    schema.roles[1].replica = -1
    assert schema_violations(schema) == ["schema.roles[1].replica"]


def test_a_non_data_role_needs_a_group_association() -> None:
    schema = mnist()
    del schema.roles[1].group_association[:]
    assert schema_violations(schema) == ["schema.roles[1].group_association"]


def test_a_data_role_may_lack_group_associations() -> None:
    schema = mnist()
    schema.roles.append(data_role("evaluator"))
    validate_schema(schema)


def test_channel_names_are_required() -> None:
    schema = mnist()
    schema.channels.append(ring_channel(name=""))
    assert schema_violations(schema) == ["schema.channels[1].name"]


def test_channel_names_are_unique() -> None:
    schema = mnist()
    schema.channels.append(ring_channel(name="param-channel"))
    assert schema_violations(schema) == ["schema.channels[1].name"]


def test_channel_names_must_be_safe_topic_levels() -> None:
    schema = mnist()
    schema.channels.append(ring_channel(name="ring/#"))
    assert schema_violations(schema) == ["schema.channels[1].name"]


def test_a_pair_of_three_roles_is_rejected() -> None:
    schema = mnist()
    schema.channels[0].pair.append("aggregator")
    assert schema_violations(schema) == ["schema.channels[0].pair"]


def test_a_pair_of_one_role_is_rejected() -> None:
    schema = mnist()
    channel = ring_channel()
    del channel.pair[1:]
    schema.channels.append(channel)
    assert schema_violations(schema) == ["schema.channels[1].pair"]


def test_pair_roles_must_exist() -> None:
    schema = mnist()
    channel = ring_channel()
    channel.pair[1] = "ghost"
    channel.func_tags["ghost"].tags.append("upload")
    schema.channels.append(channel)
    assert schema_violations(schema) == ["schema.channels[1].pair[1]"]


@pytest.mark.parametrize("group_by_type", ["", "tag"])
def test_group_by_type_tag_or_empty_is_valid(group_by_type: str) -> None:
    schema = mnist()
    schema.channels[0].group_by.type = group_by_type
    validate_schema(schema)


def test_group_by_type_other_than_tag_is_rejected() -> None:
    schema = mnist()
    schema.channels[0].group_by.type = "realm"
    assert schema_violations(schema) == ["schema.channels[0].group_by.type"]


def test_group_by_value_is_required() -> None:
    schema = mnist()
    channel = ring_channel()
    del channel.group_by.value[:]
    schema.channels.append(channel)
    assert schema_violations(schema) == ["schema.channels[1].group_by.value"]


@pytest.mark.parametrize("group", ["", "us", "a/b", "+"])
def test_group_by_values_are_unique_safe_names(group: str) -> None:
    schema = mnist()
    schema.channels[0].group_by.value.append(group)
    assert schema_violations(schema) == ["schema.channels[0].group_by.value[1]"]


def test_func_tags_need_an_entry_for_each_role_of_the_pair() -> None:
    schema = mnist()
    del schema.channels[0].func_tags["aggregator"]
    assert schema_violations(schema) == ['schema.channels[0].func_tags["aggregator"]']


def test_func_tags_only_name_roles_of_the_pair() -> None:
    schema = mnist()
    schema.channels[0].func_tags["observer"].tags.append("watch")
    assert schema_violations(schema) == ['schema.channels[0].func_tags["observer"]']


@pytest.mark.parametrize("backend", ["", "mqtt", "p2p"])
def test_channel_backend_mqtt_p2p_or_empty_is_valid(backend: str) -> None:
    schema = mnist()
    schema.channels[0].backend = backend
    validate_schema(schema)


def test_channel_backend_other_is_rejected() -> None:
    schema = mnist()
    schema.channels[0].backend = "hybrid"
    assert schema_violations(schema) == ["schema.channels[0].backend"]


def test_group_association_channels_must_exist() -> None:
    schema = mnist()
    schema.roles[0].group_association[0].channel_groups["nope"] = "us"
    assert schema_violations(schema) == [
        'schema.roles[0].group_association[0].channel_groups["nope"]'
    ]


def test_group_association_channels_must_connect_the_role() -> None:
    schema = hier()
    schema.roles[2].group_association[0].channel_groups["param-channel"] = "eu"
    assert schema_violations(schema) == [
        'schema.roles[2].group_association[0].channel_groups["param-channel"]'
    ]


def test_group_association_groups_must_be_in_the_channel_group_by() -> None:
    schema = hier()
    schema.roles[1].group_association[1].channel_groups["param-channel"] = "asia"
    assert schema_violations(schema) == [
        'schema.roles[1].group_association[1].channel_groups["param-channel"]'
    ]


def test_a_group_association_entry_is_not_empty() -> None:
    schema = mnist()
    schema.roles[1].group_association.add()
    assert schema_violations(schema) == ["schema.roles[1].group_association[1].channel_groups"]


def test_every_violation_is_reported_at_once() -> None:
    schema = hier()
    schema.name = ""
    schema.roles[2].replica = -3
    schema.channels[0].pair[1] = "ghost"
    assert schema_violations(schema) == [
        "schema.name",
        "schema.roles[2].replica",
        "schema.channels[0].pair[1]",
        'schema.channels[0].func_tags["ghost"]',
        'schema.channels[0].func_tags["middle-aggregator"]',
        'schema.roles[1].group_association[0].channel_groups["param-channel"]',
        'schema.roles[1].group_association[1].channel_groups["param-channel"]',
    ]


def test_the_reported_violations_stay_within_the_transport_budget() -> None:
    # 300 violations would overflow the gRPC trailer; the count survives in metadata.
    schema = mnist()
    schema.roles.extend(data_role(f"bad name {i}") for i in range(300))
    with pytest.raises(InvalidArgument) as caught:
        validate_schema(schema)
    shown = caught.value.violations
    assert 1 <= len(shown) < 300
    assert sum(len(v.field) + len(v.description) for v in shown) <= 4096
    assert caught.value.metadata == {"violation_count": "300"}
    assert caught.value.message.endswith("(and 299 more)")
