"""Server-side aggregation algorithms (optimizers) and their trainer-side regularizers.

Build one from the configuration with `flame.optimizers.create_optimizer(sort, **kwargs)`.
"""

from __future__ import annotations

from flame.optimizer.fedadagrad import FedAdaGrad
from flame.optimizer.fedadam import FedAdam
from flame.optimizer.fedavg import FedAvg
from flame.optimizer.fedopt import FedOpt
from flame.optimizer.fedprox import FedProx, FedProxRegularizer
from flame.optimizer.fedyogi import FedYogi
from flame.optimizer.optimizer import Optimizer, Regularizer

__all__ = [
    "FedAdaGrad",
    "FedAdam",
    "FedAvg",
    "FedOpt",
    "FedProx",
    "FedProxRegularizer",
    "FedYogi",
    "Optimizer",
    "Regularizer",
]
