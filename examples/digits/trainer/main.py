"""The digits trainer: trains on its shard each round and uploads the update."""

from __future__ import annotations

import argparse
import torch

from flame.config import Config
from flame.mode.horizontal.syncfl.trainer import Trainer

from digits_model import accuracy, build_model, load_shard


class DigitsTrainer(Trainer):
    def __init__(self, config: Config) -> None:
        self.config = config
        self.model = None
        self.dataset_size = 0

    def initialize(self) -> None:
        self.model = build_model()

    def load_data(self) -> None:
        self.features, self.labels = load_shard(self.config.dataset)
        self.dataset_size = len(self.labels)

    def train(self) -> None:
        hyper = self.config.hyperparameters
        optimizer = torch.optim.SGD(self.model.parameters(), lr=hyper.learning_rate)
        for _ in range(hyper.epochs):
            for batch in torch.randperm(self.dataset_size).split(hyper.batch_size):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(
                    self.model(self.features[batch]), self.labels[batch]
                )
                loss.backward()
                optimizer.step()
        self.update_metrics({"train-loss": loss.item()})

    def evaluate(self) -> None:
        self.update_metrics({"train-accuracy": accuracy(self.model, self.features, self.labels)})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="config.json")
    role = DigitsTrainer(Config(parser.parse_args().config))
    role.compose()
    role.run()
