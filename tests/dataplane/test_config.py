"""Task configuration, broker settings and the topic scheme."""

from __future__ import annotations

from typing import Any

import pytest

from flame.flamelet.dataplane import BrokerSettings, ConfigError, parse_task_config
from flame.flamelet.dataplane.topics import ChannelTopics
from flame.flamelet.dataplane.transport import Endpoint
from tests.dataplane.support import task_config


def hierarchical(role: str, association: str) -> dict[str, Any]:
    """A middle aggregator's view of the hier_mnist example, abridged."""
    return {
        "taskid": "a" * 40,
        "role": role,
        "job": {"id": "64145f7b10b9b3b94f5252ac", "name": "hier_mnist"},
        "backend": "mqtt",
        "brokers": [{"sort": "mqtt", "host": "mq.example"}, {"sort": "p2p", "host": "meta:10104"}],
        "groupAssociation": {"param-channel": association, "global-channel": "default"},
        "channels": [
            {
                "name": "param-channel",
                "pair": ["trainer", "middle-aggregator"],
                "groupBy": {"type": "tag", "value": ["eu", "na"]},
            },
            {
                "name": "global-channel",
                "pair": ["top-aggregator", "middle-aggregator"],
                "groupBy": {"type": "tag", "value": ["default"]},
                "backend": "p2p",
                "brokerHost": "meta2:10104",
            },
        ],
    }


def test_channels_resolve_role_group_backend_and_broker() -> None:
    task = parse_task_config(hierarchical("middle-aggregator", "eu"))
    param, glob = task.channels["param-channel"], task.channels["global-channel"]
    assert (param.role, param.other_role, param.group, param.backend) == (
        "middle-aggregator",
        "trainer",
        "eu",
        "mqtt",
    )
    assert (glob.other_role, glob.group, glob.backend) == ("top-aggregator", "default", "p2p")
    assert task.broker_host(param) == "mq.example"
    assert task.broker_host(glob) == "meta2:10104"
    assert (task.task_id, task.job_id, task.job_name) == (
        "a" * 40,
        "64145f7b10b9b3b94f5252ac",
        "hier_mnist",
    )


def test_an_unlisted_association_means_the_default_group() -> None:
    task = parse_task_config(hierarchical("middle-aggregator", "asia"))
    assert task.channels["param-channel"].group == "default"


def test_channels_without_the_role_are_left_out() -> None:
    task = parse_task_config(hierarchical("trainer", "eu"))
    assert list(task.channels) == ["param-channel"]
    assert task.channels["param-channel"].other_role == "middle-aggregator"


def test_a_self_loop_pairs_the_role_with_itself() -> None:
    config = task_config("b" * 40, "trainer", job="j1", pair=("trainer", "trainer"))
    assert parse_task_config(config).channels["param-channel"].other_role == "trainer"


@pytest.mark.parametrize(
    "change",
    [
        {"taskid": ""},
        {"role": "trainer/+"},
        {"job": {"name": "no id"}},
        {"job": {"id": "a/#"}},
        {"groupAssociation": {"param-channel": "eu/west"}},
        {"channels": [{"name": "c", "pair": ["trainer"]}]},
        {"channels": ["not an object"]},
    ],
)
def test_names_unsafe_as_topic_levels_are_refused(change: dict[str, Any]) -> None:
    config = task_config("b" * 40, "trainer", job="j1", groups=("eu/west",))
    with pytest.raises(ConfigError):
        parse_task_config({**config, **change})


def test_broker_addresses() -> None:
    base = BrokerSettings.for_job("job1", "pw")
    assert (base.username, base.password, base.port) == ("job1", "pw", 1883)
    assert (base.at("mq").host, base.at("mq").port) == ("mq", 1883)
    assert (base.at("mq:8883").host, base.at("mq:8883").port) == ("mq", 8883)
    assert base.at("mq:8883").username == "job1"


def test_topics_are_namespaced_by_job_channel_and_group() -> None:
    topics = ChannelTopics(Endpoint("job1", "param", "eu", "trainer", "aggregator", "t1"))
    assert topics.own_presence == "flame/job1/param/eu/presence/trainer/t1"
    assert topics.own_leave == "flame/job1/param/eu/leave/trainer/t1"
    assert topics.data("a1") == "flame/job1/param/eu/data/a1"
    assert topics.ack("a1") == "flame/job1/param/eu/ack/a1"
    assert topics.subscriptions() == [
        "flame/job1/param/eu/presence/aggregator/+",
        "flame/job1/param/eu/leave/aggregator/+",
        "flame/job1/param/eu/data/t1",
        "flame/job1/param/eu/ack/t1",
    ]
    assert topics.parse("flame/job1/param/eu/presence/aggregator/a1") == (
        "presence",
        "aggregator",
        "a1",
    )
    assert topics.parse("flame/job1/param/eu/data/t1") == ("data", "", "t1")
    for foreign in (
        "flame/job1/param/eu/presence/trainer/t2",  # Not the other role.
        "flame/job1/param/eu/data/t2",  # Not addressed to this end.
        "flame/job1/param/us/data/t1",  # Another group.
        "flame/job2/param/eu/data/t1",  # Another job.
        "flame/job1/param/eu/data/t1/extra",
    ):
        assert topics.parse(foreign) is None
