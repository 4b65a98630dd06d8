"""The role base: required attributes, flow checks, settings from hyperparameters."""

from __future__ import annotations

import pytest

from flame.config import Hyperparameters
from flame.errors import ConfigError
from flame.mode.horizontal.middle_aggregator import MiddleAggregator as MiddleAlias
from flame.mode.horizontal.syncfl.middle_aggregator import MiddleAggregator
from flame.mode.horizontal.syncfl.top_aggregator import TopAggregator
from flame.mode.horizontal.syncfl.trainer import Trainer
from flame.mode.horizontal.top_aggregator import TopAggregator as TopAlias
from flame.mode.horizontal.trainer import Trainer as TrainerAlias
from flame.mode.settings import RoundSettings
from tests.sdk.modes.roles import LinearTrainer, channel, task_config

CONFIG = task_config(
    "t1",
    "trainer",
    [channel("param-channel", ("aggregator", "trainer"), ["default"])],
    {"param-channel": "default"},
)


class ForgetfulTrainer(LinearTrainer):
    def __init__(self) -> None:  # assigns no config, model or dataset_size
        pass


def test_run_names_the_attributes_init_did_not_assign() -> None:
    trainer = ForgetfulTrainer()
    trainer.compose()

    with pytest.raises(TypeError) as raised:
        trainer.run()

    assert str(raised.value) == (
        "ForgetfulTrainer.__init__ must assign self.config, self.model, self.dataset_size "
        "(None is allowed until initialize() sets it)"
    )


def test_run_needs_compose_first() -> None:
    with pytest.raises(RuntimeError, match=r"call LinearTrainer.compose\(\) before run\(\)"):
        LinearTrainer(CONFIG, seed=0, size=1).run()


def test_the_four_hooks_are_abstract() -> None:
    class Incomplete(Trainer):
        def initialize(self) -> None:
            pass

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


def test_function_tags_and_original_aliases() -> None:
    assert Trainer.get_func_tags() == ["fetch", "upload"]
    assert TopAggregator.get_func_tags() == ["distribute", "aggregate"]
    assert set(MiddleAggregator.get_func_tags()) == {"fetch", "upload", "distribute", "aggregate"}
    assert (TrainerAlias, TopAlias, MiddleAlias) == (Trainer, TopAggregator, MiddleAggregator)
    with pytest.raises(ValueError, match="not 'aggregate'"):
        LinearTrainer(CONFIG, seed=0, size=1).get("aggregate")


def test_settings_defaults_and_overrides() -> None:
    assert RoundSettings.from_hyperparameters(Hyperparameters()) == RoundSettings(
        join_timeout=60.0, aggregation_timeout=300.0, fetch_timeout=900.0, min_trainers=1
    )
    extra = {"joinTimeout": 5, "aggregationTimeout": 1.5, "fetchTimeout": 9, "minTrainers": 2}
    assert RoundSettings.from_hyperparameters(Hyperparameters(extra=extra)) == RoundSettings(
        join_timeout=5.0, aggregation_timeout=1.5, fetch_timeout=9.0, min_trainers=2
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [("joinTimeout", 0), ("fetchTimeout", "600"), ("minTrainers", 0), ("minTrainers", 1.5)],
)
def test_settings_refuse_bad_values(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"hyperparameters.{key}"):
        RoundSettings.from_hyperparameters(Hyperparameters(extra={key: value}))
