"""Config: the original task configuration keys, defaults and errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from flame.config import DEFAULT_GROUP, BaseModel, Config, Plugin, Registry
from flame.errors import ConfigError
from tests.sdk.conftest import HIER_TASKS, TASK_ID, hier_task

# The mnist aggregator of the SDK specification (§1.4), with per-channel overrides added.
MNIST_AGGREGATOR: dict[str, Any] = {
    "taskid": "49d06b7526964db86cf37c70e8e0cdb6bd7aa742",
    "backend": "p2p",
    "brokers": [
        {"host": "localhost", "sort": "mqtt"},
        {"host": "localhost:10104", "sort": "p2p"},
    ],
    "groupAssociation": {"param-channel": "default"},
    "channels": [
        {
            "name": "param-channel",
            "pair": ["trainer", "aggregator"],
            "groupBy": {"type": "tag", "value": ["default"]},
            "funcTags": {"aggregator": ["distribute", "aggregate"], "trainer": ["fetch", "upload"]},
            "backend": "mqtt",
            "brokerHost": "broker.example:1883",
        }
    ],
    "hyperparameters": {"batchSize": 32, "learningRate": 0.01, "rounds": 20, "//": "a note"},
    "job": {"id": "622a358619ab59012eabeefb", "name": "mnist"},
    "registry": {"sort": "dummy", "uri": ""},
    "selector": {"sort": "random", "kwargs": {"k": 1}},
    "optimizer": {"sort": "fedavg", "kwargs": {}},
    "maxRunTime": 300,
    "realm": "default",
    "role": "aggregator",
}


def config_with(**changes: Any) -> dict[str, Any]:
    fresh: dict[str, Any] = json.loads(json.dumps(MNIST_AGGREGATOR))
    return fresh | changes


def channel_with(**changes: Any) -> dict[str, Any]:
    return {**MNIST_AGGREGATOR["channels"][0], **changes}


@pytest.mark.parametrize("path", sorted(HIER_TASKS.glob("*.json")), ids=lambda p: p.stem)
def test_every_hier_mnist_task_parses(path: Path) -> None:
    config = Config.from_dict(hier_task(int(path.stem)))

    assert config.task_id == TASK_ID
    assert set(config.channels) == set(config.group_association)
    for name in config.channels:
        assert config.group_of(name) in ("default", "eu", "na")


def test_hier_mnist_trainer(trainer_dict: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(trainer_dict))

    config = Config(path)

    assert (config.role, config.realm, config.backend) == ("trainer", "", "mqtt")
    assert config.job.id == "64145f7b10b9b3b94f5252ac" and config.job.name == "hier_mnist"
    assert dict(config.brokers) == {"mqtt": "localhost", "p2p": "localhost:10104"}
    assert dict(config.func_tag_map) == {"fetch": "param-channel", "upload": "param-channel"}
    channel = config.channels["param-channel"]
    assert channel.pair == ("trainer", "middle-aggregator")
    assert channel.other_role("trainer") == "middle-aggregator"
    assert channel.group_by.value == ("eu", "na")
    assert config.group_of("param-channel") == "na"
    assert (config.max_run_time, config.dataset.endswith("mnist_4.npz")) == (1800, True)


def test_hier_mnist_empty_blocks_get_the_original_defaults(trainer_config: Config) -> None:
    # The builder writes "optimizer": {}, "selector": {}, "baseModel": {}, registry sort "".
    assert trainer_config.selector == Plugin("default", {})
    assert trainer_config.optimizer == Plugin("fedavg", {})
    assert trainer_config.privacy == Plugin("default", {})
    assert trainer_config.datasampler == Plugin("default", {})
    assert trainer_config.registry == Registry("dummy", "")
    assert trainer_config.base_model == BaseModel("", 0)
    hyper = trainer_config.hyperparameters
    assert (hyper.rounds, hyper.epochs, hyper.batch_size) == (1, 1, 16)
    assert hyper.learning_rate is None and dict(hyper.extra) == {}
    assert trainer_config.dependencies == () and trainer_config.task == "local"


def test_middle_aggregator_maps_tags_to_both_channels() -> None:
    config = Config.from_dict(hier_task(1))

    assert dict(config.func_tag_map) == {
        "fetch": "global-channel",
        "upload": "global-channel",
        "distribute": "param-channel",
        "aggregate": "param-channel",
    }
    assert config.channels["global-channel"].other_role("middle-aggregator") == "top-aggregator"
    assert config.group_of("global-channel") == "default"
    assert config.group_of("param-channel") == "eu"


def test_mnist_aggregator_of_the_specification() -> None:
    config = Config.from_dict(MNIST_AGGREGATOR)

    hyper = config.hyperparameters
    assert (hyper.rounds, hyper.epochs, hyper.batch_size) == (20, 1, 32)
    assert hyper.learning_rate == pytest.approx(0.01)
    assert dict(hyper.extra) == {"//": "a note"}
    assert config.selector == Plugin("random", {"k": 1})
    channel = config.channels["param-channel"]
    assert (channel.backend, channel.broker_host) == ("mqtt", "broker.example:1883")
    assert channel.is_bidirectional and channel.description == ""


def test_extra_hyperparameters_read_as_attributes() -> None:
    hyper = {"rounds": 3, "momentum": 0.9, "aggGoal": 2, "weightDecay": 1}
    config = Config.from_dict(config_with(hyperparameters=hyper))

    assert config.hyperparameters.momentum == 0.9
    assert config.hyperparameters.aggregation_goal == 2
    assert config.hyperparameters.weight_decay == 1.0
    with pytest.raises(AttributeError, match="no hyperparameter 'nesterov'"):
        _ = config.hyperparameters.nesterov
    assert dataclasses.replace(config.hyperparameters).momentum == 0.9


def test_datasampler_kwargs_carry_the_hyperparameters_as_in_the_original() -> None:
    sampler = {"sort": "fedbalancer", "kwargs": {"w": 20, "epochs": 99}}
    config = Config.from_dict(config_with(datasampler=sampler))

    assert config.datasampler.sort == "fedbalancer"
    assert dict(config.datasampler.kwargs) == {
        "w": 20,
        "epochs": 1,
        "batchSize": 32,
        "learningRate": 0.01,
        "rounds": 20,
        "//": "a note",
    }


def test_self_loop_channel() -> None:
    ring = channel_with(pair=["aggregator", "aggregator"], funcTags={"aggregator": ["ring"]})
    config = Config.from_dict(config_with(channels=[ring]))

    assert config.channels["param-channel"].other_role("aggregator") == "aggregator"


def test_group_outside_the_channel_groups_is_default() -> None:
    config = Config.from_dict(config_with(groupAssociation={"param-channel": "mars"}))
    assert config.group_of("param-channel") == DEFAULT_GROUP


def test_config_is_frozen_and_keeps_a_copy_of_the_raw_object() -> None:
    raw = config_with()
    config = Config.from_dict(raw)
    raw["role"] = "trainer"
    raw["channels"][0]["name"] = "changed"

    assert config.raw["role"] == "aggregator"
    assert config.raw["channels"][0]["name"] == "param-channel"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.role = "trainer"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.channels["x"] = config.channels["param-channel"]  # type: ignore[index]
    assert Config.from_dict(config_with()) == config


def test_null_optional_keys_mean_absent() -> None:
    config = Config.from_dict(config_with(registry=None, dataset=None, dependencies=None))
    assert (config.registry.sort, config.dataset, config.dependencies) == ("dummy", "", ())


@pytest.mark.parametrize(
    ("changes", "key", "problem"),
    [
        ({"taskid": None}, "taskid", "expected a string"),
        ({"backend": "local-ish"}, "backend", "is not one of"),
        ({"maxRunTime": True}, "maxRunTime", "expected an integer, got True"),
        ({"brokers": [{"sort": "mqtt"}]}, "brokers[0].host", "is required"),
        ({"job": {"id": "j"}}, "job.name", "is required"),
        ({"groupAssociation": {"param-channel": 3}}, "groupAssociation.param-channel", "string"),
        ({"hyperparameters": {"rounds": "20"}}, "hyperparameters.rounds", "an integer"),
        ({"hyperparameters": {"learningRate": "x"}}, "hyperparameters.learningRate", "number"),
        ({"selector": []}, "selector", "expected an object"),
        ({"channels": [channel_with(pair=["a", "b", "c"])]}, "channels[0].pair", "two role"),
        ({"channels": [channel_with(pair=["trainer", "x"])]}, "channels[0].pair", "not in"),
        (
            {"channels": [channel_with(funcTags={"aggregator": "fetch"})]},
            "channels[0].funcTags.aggregator",
            "expected a list",
        ),
        ({"channels": [channel_with(), channel_with()]}, "channels[1].name", "defined twice"),
    ],
)
def test_bad_input_names_the_key(changes: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        Config.from_dict(config_with(**changes))
    assert key in caught.value.key
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("missing", ["taskid", "role", "realm", "backend", "channels", "job"])
def test_required_keys(missing: str) -> None:
    raw = config_with()
    del raw[missing]
    with pytest.raises(ConfigError, match="is required") as caught:
        Config.from_dict(raw)
    assert caught.value.key == missing


def test_own_role_must_be_in_every_func_tags() -> None:
    channel = channel_with(funcTags={"trainer": ["fetch", "upload"]})

    with pytest.raises(ConfigError) as caught:
        Config.from_dict(config_with(channels=[channel]))

    assert caught.value.key == "channels[0].funcTags"
    assert "role 'aggregator'" in str(caught.value)


def test_a_tag_on_two_channels_is_ambiguous() -> None:
    second = channel_with(name="other-channel", pair=["aggregator", "coordinator"])

    with pytest.raises(ConfigError, match="'distribute' of role 'aggregator' is on two"):
        Config.from_dict(config_with(channels=[channel_with(), second]))


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        Config(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ConfigError, match="expected an object"):
        Config(tmp_path / "list.json")
