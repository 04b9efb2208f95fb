"""What the metric-based algorithms share: a backbone and class-wise pooling of support embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from metaclinic.algorithms.base import EpisodicModule


def class_means(embeddings: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Mean embedding of each class: ``(tasks, n, d)``, ``(tasks, n)`` -> ``(tasks, n_way, d)``.

    Works for any order of the support set and any number of shots per class.
    """
    one_hot = F.one_hot(labels, n_way).to(embeddings.dtype)  # (tasks, n, n_way)
    sums = one_hot.transpose(1, 2) @ embeddings
    return sums / one_hot.sum(1).unsqueeze(-1)


class MetricModule(EpisodicModule):
    """An episodic module that classifies queries by comparing embeddings; nothing is adapted per task.

    It works for any number of ways and shots, also different from those seen in training.

    Args:
        backbone: maps inputs to embeddings.
        optimizer: builds the optimizer from the parameters.
        scheduler: optional learning-rate scheduler, stepped every meta-batch.
    """

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.backbone = backbone

    @property
    def embedding_size(self) -> int:
        return self.backbone.out_features
