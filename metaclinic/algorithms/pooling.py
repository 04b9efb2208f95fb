"""Class-wise pooling of support embeddings, shared by prototypes, relation scores and adapted models."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def class_means(embeddings: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Mean embedding of each class: ``(tasks, n, d)``, ``(tasks, n)`` -> ``(tasks, n_way, d)``.

    Works for any order of the support set and any number of shots per class.
    """
    one_hot = F.one_hot(labels, n_way).to(embeddings.dtype)  # (tasks, n, n_way)
    sums = one_hot.transpose(1, 2) @ embeddings
    return sums / one_hot.sum(1).unsqueeze(-1)
