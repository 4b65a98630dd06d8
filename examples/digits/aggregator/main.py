"""The digits aggregator: averages the trainers' updates and tests the global model."""

from __future__ import annotations

import argparse
from flame.config import Config
from flame.mode.horizontal.syncfl.top_aggregator import TopAggregator

from digits_model import accuracy, build_model, test_split


class DigitsAggregator(TopAggregator):
    def __init__(self, config: Config) -> None:
        self.config = config
        self.model = None
        self.dataset = None

    def initialize(self) -> None:
        self.model = build_model()

    def load_data(self) -> None:
        self.features, self.labels = test_split()

    def train(self) -> None:
        pass

    def evaluate(self) -> None:
        score = accuracy(self.model, self.features, self.labels)
        print(f"round {self._round}: test accuracy {score:.3f}", flush=True)
        self.update_metrics({"test-accuracy": score})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="config.json")
    role = DigitsAggregator(Config(parser.parse_args().config))
    role.compose()
    role.run()
