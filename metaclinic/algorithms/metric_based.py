"""What the metric-based algorithms share: a backbone, compared across support and query embeddings."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from metaclinic.algorithms.base import EpisodicModule
from metaclinic.models.normalization import normalises_per_episode


class MetricModule(EpisodicModule):
    """An episodic module that classifies queries by comparing embeddings; nothing is adapted per task.

    It works for any number of ways and shots, also different from those seen in training.

    Args:
        backbone: maps inputs to embeddings.
        optimizer: builds the optimizer from the parameters.
        scheduler: optional learning-rate scheduler, stepped every meta-batch.
        init_from: checkpoint of a finished run whose backbone weights meta-training starts from.
    """

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__(optimizer, scheduler, init_from)
        self.backbone = backbone

    @property
    def backward_per_task(self) -> bool:
        """Task by task when each episode is embedded on its own anyway (its normalisation takes the
        episode's moments): each task's graph is then separate and its loss a mean over its queries (see
        ``training_loss``)."""
        return normalises_per_episode(self.backbone)

    @property
    def embedding_size(self) -> int:
        return self.backbone.out_features
