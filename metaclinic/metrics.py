"""Per-episode metrics of query predictions, computed with torchmetrics.

Few-shot results are means over episodes with a confidence interval, so every function here returns one
value per episode: ``logits (tasks, queries, n_way)``, ``labels (tasks, queries)`` -> ``(tasks,)``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, multiclass_accuracy, multiclass_auroc


def episode_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of each episode's queries whose highest-scoring class is their label."""
    return multiclass_accuracy(
        logits.argmax(-1),
        labels,
        num_classes=logits.shape[-1],
        average="micro",
        multidim_average="samplewise",
    )


def episode_auroc(logits: Tensor, labels: Tensor) -> Tensor:
    """Area under the ROC curve of each episode, from softmax probabilities.

    Binary episodes score class 1 against class 0 (which class is "1" does not change the value); episodes
    with more classes average the one-vs-rest AUROCs of their classes (macro).
    """
    probabilities = logits.detach().float().softmax(-1)
    n_way = logits.shape[-1]
    values = [
        binary_auroc(p[:, 1], y) if n_way == 2 else multiclass_auroc(p, y, num_classes=n_way, average="macro")
        for p, y in zip(probabilities, labels, strict=True)
    ]
    return torch.stack(values)
