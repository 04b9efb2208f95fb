"""Class-wise pooling of support embeddings and the scores of queries against the pooled classes.

Shared by prototypes, relation scores, the no-learning nearest centroid and the adapted models, so that
evaluation and an exported model compute the same numbers by the same code.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor


def class_means(embeddings: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Mean embedding of each class: ``(tasks, n, d)``, ``(tasks, n)`` -> ``(tasks, n_way, d)``.

    Works for any order of the support set and any number of shots per class.
    """
    one_hot = F.one_hot(labels, n_way).to(embeddings.dtype)  # (tasks, n, n_way)
    sums = one_hot.transpose(1, 2) @ embeddings
    return sums / one_hot.sum(1).unsqueeze(-1)


def cosine_logits(x: Tensor, weight: Tensor, scale: float) -> Tensor:
    """Scaled cosine similarities of the rows of ``x (..., n, d)`` to the classes ``(..., c, d)``."""
    return scale * F.normalize(x, dim=-1) @ F.normalize(weight, dim=-1).transpose(-1, -2)


def prototype_logits(
    query: Tensor,
    prototypes: Tensor,
    distance: Literal["euclidean", "cosine"] = "euclidean",
    temperature: float = 1.0,
) -> Tensor:
    """Logits of queries ``(..., q, d)`` against class prototypes ``(..., c, d)``: ``(..., q, c)``.

    ``euclidean``: negative squared distances (Snell et al. 2017); ``cosine``: ``temperature`` times the
    cosine similarity. Squared distances are computed by their definition rather than ``torch.cdist``, whose
    algorithm changes with the number of rows (a matrix product above 25), which ``torch.export`` cannot
    keep for every batch size and which would make a case's score depend on how many are scored with it.
    """
    if distance == "cosine":
        return cosine_logits(query, prototypes, temperature)
    return -(query.unsqueeze(-2) - prototypes.unsqueeze(-3)).pow(2).sum(-1)
