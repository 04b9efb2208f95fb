"""Test-time fine-tuning of a metric-based learner's backbone on each support set.

Hu, Li, Stühmer, Kim and Hospedales, "Pushing the Limits of Simple Pipelines for Few-Shot Learning:
External Data and Fine-Tuning Make a Difference" (P>M>F), CVPR 2022: when the test domain is far from the
training domains (CT organs to blood-cell microscopy here), a few steps of fine-tuning the whole backbone on
the support set, with augmented copies of the support images as pseudo-queries scored against the
prototypes of the plain ones, recover much of the gap. Guo et al., "A Broader Study of Cross-Domain
Few-Shot Learning", ECCV 2020, found fine-tuning the strongest method on their medical domains too.

Every episode's backbone starts from the meta-trained weights; its augmentation is seeded by the support
set's content, so the adapted model is a function of the support set alone: an episode's scores do not
depend on its index or on what else is evaluated, and ``metaclinic.adapt`` exports exactly what evaluation
scored. Queries are never seen during fine-tuning.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaclinic.algorithms.adapted import SupportSetClassifier
from metaclinic.algorithms.base import EpisodicModule, full_precision
from metaclinic.data.task import Task, TaskBatch
from metaclinic.models.augmentation import ImageAugmentation
from metaclinic.models.normalization import embed_jointly

# (support embeddings (1, n, d), support labels (1, n), query embeddings (1, q, d), n_way) -> (1, q, n_way)
EpisodeLogits = Callable[[Tensor, Tensor, Tensor, int], Tensor]


def support_seed(support_x: Tensor) -> int:
    """A seed that is a function of the support images' values (the same on any device)."""
    digest = hashlib.sha256(support_x.detach().float().cpu().contiguous().numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "little")


class SupportFineTuning:
    """Fine-tunes a copy of the backbone on one support set before its queries are scored.

    Each step embeds the support set and an augmented copy of it (normalised with the support set's
    moments where the backbone does so), and minimises the cross-entropy of the copy's logits against the
    plain support set, scored by the algorithm's own rule (prototypes, CL2N centroids). SGD with momentum
    as in P>M>F; gradients and float32 only inside, evaluation otherwise unchanged.

    Args:
        steps: optimisation steps per support set (0: no fine-tuning).
        lr: SGD learning rate.
        momentum: SGD momentum.
        augmentation: how pseudo-queries are made from the support images (default: ``ImageAugmentation()``,
            crops, horizontal flips and mild colour jitter).
    """

    def __init__(
        self,
        steps: int = 20,
        lr: float = 0.01,
        momentum: float = 0.9,
        augmentation: ImageAugmentation | None = None,
    ) -> None:
        if steps < 0 or lr <= 0:
            raise ValueError(f"support fine-tuning needs steps >= 0 and lr > 0, got steps={steps}, lr={lr}")
        self.steps, self.lr, self.momentum = steps, lr, momentum
        self.augmentation = ImageAugmentation() if augmentation is None else augmentation

    def tuned_backbone(
        self, backbone: nn.Module, support_x: Tensor, support_y: Tensor, n_way: int, logits: EpisodeLogits
    ) -> nn.Module:
        """A copy of ``backbone`` fine-tuned on ``support_x (n, *example)``, ``support_y (n,)``."""
        seed = support_seed(support_x)
        # Clones made outside inference mode are ordinary tensors: works under any Trainer(inference_mode).
        with torch.inference_mode(False), torch.enable_grad(), full_precision(support_x.device):
            tuned = copy.deepcopy(backbone).float().requires_grad_(True)
            optimizer = torch.optim.SGD(tuned.parameters(), lr=self.lr, momentum=self.momentum)
            support, labels = support_x.float().clone().unsqueeze(0), support_y.clone().unsqueeze(0)
            for step in range(self.steps):
                pseudo = self.augmentation(support, seed, torch.tensor([step]))
                embedded, pseudo_embedded = embed_jointly(tuned, support, pseudo)
                loss = F.cross_entropy(logits(embedded, labels, pseudo_embedded, n_way)[0], labels[0])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return tuned.requires_grad_(False).to(next(backbone.parameters()).dtype)


class EmbeddingScores:
    """For algorithms that score queries from support and query embeddings by ``episode_logits``
    (ProtoNet, SimpleShot): plain scoring in training, and with ``support_finetuning`` set, a backbone
    fine-tuned on each support set in evaluation and in the exported adapted model."""

    support_finetuning: SupportFineTuning | None
    backbone: nn.Module

    def episode_logits(self, support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
        """``(tasks, n, d)``, ``(tasks, n)``, ``(tasks, q, d)`` -> query logits ``(tasks, q, n_way)``."""
        raise NotImplementedError

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        if self.support_finetuning is not None and not self.training:  # every episode's own backbone
            return EpisodicModule.score_tasks(self, batch)
        return self.embedding_scores(self.backbone, batch)

    def embedding_scores(self, backbone: nn.Module, batch: TaskBatch) -> Tensor:
        """Query logits of every task of ``batch`` with its embeddings by ``backbone``."""
        support, query = self.embed_episodes(backbone, batch)
        return self.episode_logits(support, batch.support_y, query, batch.n_way)

    def adapt(self, task: Task) -> nn.Module:
        if self.support_finetuning is None or self.training:
            return EpisodicModule.adapt(self, task)
        tuned = self.support_finetuning.tuned_backbone(
            self.backbone, task.support_x, task.support_y, task.n_way, self.episode_logits
        )
        return TunedEmbeddings(self, tuned, task)


class TunedEmbeddings(nn.Module):
    """An embedding-scores algorithm whose backbone was fine-tuned on one support set (its adapted model)."""

    def __init__(self, algorithm: EmbeddingScores, backbone: nn.Module, task: Task) -> None:
        super().__init__()
        self.scorer = SupportSetClassifier(algorithm, task)
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        batch = self.scorer.episode(x)
        return self.scorer.algorithm.embedding_scores(self.backbone, batch)[0]
