"""Supervised-pretraining baselines: a backbone trained as an ordinary classifier, then used few-shot.

- SimpleShot: Wang, Chao, Weinberger and van der Maaten, "SimpleShot: Revisiting Nearest-Neighbor
  Classification for Few-Shot Learning", 2019, https://arxiv.org/abs/1911.04623.
- Baseline and Baseline++: Chen, Liu, Kira, Wang and Huang, "A Closer Look at Few-shot Classification",
  ICLR 2019, https://arxiv.org/abs/1904.04232.

They read the same episodic stream as the meta-learners (same examples, same number of steps), but label
every example of a meta-batch, support and query alike, with its pool-wide class and minimise cross-entropy
over all meta-train classes: plain supervised learning, no episode structure. Evaluation runs on the same
fixed episodes as every algorithm, for any number of ways and shots.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaclinic.algorithms.adapted import AdaptedHead
from metaclinic.algorithms.base import EpisodicModule, full_precision
from metaclinic.algorithms.finetune import EmbeddingScores, SupportFineTuning
from metaclinic.algorithms.pooling import class_means, cosine_logits
from metaclinic.baselines.self_supervised import ContrastiveObjective
from metaclinic.data.task import Task, TaskBatch
from metaclinic.errors import DataError


class CosineClassifier(nn.Module):
    """Baseline++'s classifier: scaled cosine similarity to one learned weight vector per class."""

    def __init__(self, in_features: int, out_features: int, scale: float) -> None:
        super().__init__()
        self.out_features, self.scale = out_features, scale
        self.weight = nn.Parameter(nn.Linear(in_features, out_features).weight.detach())

    def forward(self, x: Tensor) -> Tensor:
        return cosine_logits(x, self.weight, self.scale)


class SupervisedPretraining(EpisodicModule):
    """Trains ``backbone`` with a classifier over all meta-train classes; subclasses score the episodes.

    Args:
        backbone: maps inputs to embeddings of size ``backbone.out_features``.
        num_classes: outputs of the pretraining classifier, one per meta-train class; ``None`` takes the
            number from the datamodule at setup and records it, so a checkpoint reloads without it.
        unlabelled_weight: weight of the contrastive loss on unlabelled target-domain images
            (``batch.unlabelled_x``, :mod:`metaclinic.baselines.self_supervised`); 0: none.
        **kwargs: ``optimizer`` and ``scheduler``.
    """

    is_baseline = True

    def __init__(
        self, backbone: nn.Module, num_classes: int | None = None, unlabelled_weight: float = 0.0, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.classifier = None if num_classes is None else self.make_classifier(num_classes)
        self.unlabelled_weight = unlabelled_weight
        self.contrastive = ContrastiveObjective(backbone.out_features) if unlabelled_weight > 0 else None

    def make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.backbone.out_features, num_classes)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        data = self.trainer.datamodule
        if data is None:
            if self.classifier is None:
                raise ValueError(f"{type(self).__name__} needs num_classes when trained without a datamodule")
            return
        num_classes = data.pools["meta_train"].num_classes
        if self.classifier is None:
            self.classifier = self.make_classifier(num_classes).to(self.device)
            self.hparams["num_classes"] = num_classes
        elif self.classifier.out_features != num_classes:
            raise DataError(
                f"{type(self).__name__} has a {self.classifier.out_features}-class pretraining head but "
                f"meta_train has {num_classes} classes; leave model.init_args.num_classes null"
            )

    def supervised_loss(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """Cross-entropy over all meta-train classes of every example of ``batch``, with its pool-wide label.

        Returns the loss and, per episode, the accuracy of the classifier over all meta-train classes.
        """
        support, query = self.embed_episodes(self.backbone, batch)
        logits = self.classifier(torch.cat([support, query], 1))  # (tasks, examples, num_classes)
        labels = batch.classes.gather(1, torch.cat([batch.support_y, batch.query_y], 1))
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return loss, (logits.argmax(-1) == labels).float().mean(1)

    def training_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        loss, accuracy = self.supervised_loss(batch)
        self.log_training(loss, accuracy)
        if self.contrastive is not None:
            if batch.unlabelled_x is None:
                raise DataError(
                    f"{type(self).__name__}: unlabelled_weight > 0 needs unlabelled images with every "
                    "meta-batch: set data.unlabelled and data.unlabelled_batch_size"
                )
            contrastive = self.contrastive(self.backbone, batch.unlabelled_x, batch.meta_batch_index)
            self.log("train/contrastive_loss", contrastive, batch_size=len(batch))
            loss = loss + self.unlabelled_weight * contrastive
        return loss


class SimpleShot(EmbeddingScores, SupervisedPretraining):
    """SimpleShot: nearest class centroid of CL2N-normalised embeddings, by Euclidean distance.

    CL2N centres embeddings and L2-normalises them. The paper centres with the mean embedding of the
    meta-train set; here the centre is the mean support embedding of the episode. With batch norm on batch
    statistics (Conv4's default), embeddings are normalised per episode, so a meta-train mean computed over
    other batches would sit in a differently normalised space; the support mean uses only the episode's
    labelled examples (no query statistics), needs no state, and leaves each episode's score independent of
    everything else. Logits are negative distances.

    Args:
        backbone: maps inputs to embeddings.
        num_classes: outputs of the pretraining classifier (default: the meta-train classes).
        support_finetuning: fine-tune the backbone on each support set at validation and test (P>M>F,
            :mod:`metaclinic.algorithms.finetune`); ``None``: score with the pretrained backbone.
        **kwargs: ``optimizer`` and ``scheduler``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        support_finetuning: SupportFineTuning | None = None,
        **kwargs,
    ) -> None:
        super().__init__(backbone, num_classes, **kwargs)
        self.support_finetuning = support_finetuning

    def episode_logits(self, support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
        centre = support.mean(1, keepdim=True)
        support, query = F.normalize(support - centre, dim=-1), F.normalize(query - centre, dim=-1)
        centroids = class_means(support, support_y, n_way)
        # By definition rather than torch.cdist, whose algorithm changes with the batch size (above 25 rows),
        # which torch.export cannot follow: the adapted model then exports for any number of cases.
        return -(query.unsqueeze(2) - centroids.unsqueeze(1)).norm(dim=-1)


class Baseline(SupervisedPretraining):
    """Baseline: the backbone is frozen and a new linear head is fine-tuned on each support set.

    Every episode's head starts from a fixed initialisation seeded by its episode index (so the score does not
    depend on evaluation order or batching) and takes ``finetune_steps`` full-batch Adam steps on the
    cross-entropy of the support embeddings, in float32 and with autograd on only there.

    Args:
        backbone: maps inputs to embeddings.
        num_classes: outputs of the pretraining classifier (default: the meta-train classes).
        finetune_steps: Adam steps of the new head on each support set.
        finetune_lr: their learning rate.
        **kwargs: ``optimizer`` and ``scheduler``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        finetune_steps: int = 100,
        finetune_lr: float = 0.01,
        **kwargs,
    ) -> None:
        super().__init__(backbone, num_classes, **kwargs)
        self.finetune_steps, self.finetune_lr = finetune_steps, finetune_lr

    def head_logits(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """Logits of each episode's head.

        ``x (tasks, n, d)``, ``weight (tasks, n_way, d)``, ``bias (tasks, n_way)`` -> ``(tasks, n, n_way)``.
        """
        return x @ weight.transpose(1, 2) + bias.unsqueeze(1)

    def new_head(self, weight: Tensor, bias: Tensor) -> nn.Module:
        """The fine-tuned head of one episode as a module (for the adapted model)."""
        head = nn.Linear(weight.shape[1], weight.shape[0])
        head.load_state_dict({"weight": weight, "bias": bias})
        return head

    def adapt(self, task: Task) -> nn.Module:
        with torch.no_grad():
            support, _ = self.embed_episodes(self.backbone, TaskBatch.of(task))
        weight, bias = self.finetune_heads(support, TaskBatch.of(task))
        return AdaptedHead(self.backbone, self.new_head(weight[0], bias[0]), task.support_x)

    def finetune_heads(self, support: Tensor, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """Weights and biases of every episode's head, fine-tuned on its support embeddings.

        All heads of the meta-batch train at once: the loss is a sum over episodes and Adam acts per
        element, so each head follows exactly its own episode's gradient.
        """
        dim, bound = support.shape[-1], 1 / math.sqrt(support.shape[-1])  # nn.Linear's initialisation
        seeds = [torch.Generator().manual_seed(i) for i in batch.episode_index.tolist()]
        inits = [(torch.rand(batch.n_way, dim + 1, generator=g) * 2 - 1) * bound for g in seeds]
        # A clone outside inference mode is an ordinary tensor: this works under any Trainer(inference_mode).
        with torch.inference_mode(False), torch.enable_grad(), full_precision(support.device):
            support, labels = support.detach().float().clone(), batch.support_y.flatten().clone()
            head = torch.stack(inits).to(support.device).requires_grad_()
            optimizer = torch.optim.Adam([head], lr=self.finetune_lr)
            for _ in range(self.finetune_steps):
                logits = self.head_logits(support, head[..., :-1], head[..., -1])
                loss = F.cross_entropy(logits.flatten(0, 1), labels, reduction="sum")
                optimizer.zero_grad()
                (loss / support.shape[1]).backward()
                optimizer.step()
        head = head.detach()
        return head[..., :-1], head[..., -1]


class BaselinePlusPlus(Baseline):
    """Baseline++: Baseline with a cosine classifier, in pretraining and in fine-tuning.

    Logits are ``scale`` times the cosine similarity of an embedding to each class's weight vector; the
    default 2 is what the authors' code uses for up to 200 classes (it did better than 10 on the test data).

    Args:
        backbone: maps inputs to embeddings.
        num_classes: outputs of the pretraining classifier (default: the meta-train classes).
        scale: multiplies cosine similarities before the softmax.
        **kwargs: ``finetune_steps``, ``finetune_lr``, ``optimizer`` and ``scheduler`` of :class:`Baseline`.
    """

    def __init__(
        self, backbone: nn.Module, num_classes: int | None = None, scale: float = 2.0, **kwargs
    ) -> None:
        self.scale = scale  # before super().__init__, which builds the classifier when num_classes is given
        super().__init__(backbone, num_classes, **kwargs)

    def make_classifier(self, num_classes: int) -> nn.Module:
        return CosineClassifier(self.backbone.out_features, num_classes, self.scale)

    def head_logits(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return cosine_logits(x, weight, self.scale)  # no bias, as in the paper

    def new_head(self, weight: Tensor, bias: Tensor) -> nn.Module:
        head = CosineClassifier(weight.shape[1], weight.shape[0], self.scale)
        head.weight.data.copy_(weight)
        return head
