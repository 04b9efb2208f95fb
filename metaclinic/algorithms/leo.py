"""LEO: Rusu, Rao, Sygnowski, Vinyals, Pascanu, Osindero and Hadsell, "Meta-Learning with Latent Embedding
Optimization", ICLR 2019, https://arxiv.org/abs/1807.05960.

LEO adapts a low-dimensional code of the classifier instead of the classifier. An encoder maps every support
embedding to a code; a relation network reads every pair of codes, and a class's latent Gaussian (mean,
log-variance) is the mean of the relation outputs of its examples with every support example (the paper's
eq. 3). A latent ``z`` per class (sampled in training, the mean in evaluation) is decoded into a Gaussian over
that class's weight vector (sampled in training); logits are ``query_embedding @ weights^T``, so any number of
ways and shots works. The inner loop takes gradient steps on ``z`` on the support loss of the decoded
classifier, then fine-tunes the decoded weights themselves. The outer loss adds the paper's penalties:
KL(q(z | support) || N(0, I)), the encoder penalty ``||stopgrad(z') - z||^2``, the orthogonality of the
decoder's latent directions, and L2 on LEO's own weights.

As in the authors' code: no biases, a relation network of three layers of width ``2 * latent_size``,
per-dimension step sizes that are meta-learned (from ``inner_lr`` and ``finetune_lr``), a second-order
meta-gradient. Simplified or ours: the backbone is meta-learned jointly (the paper fixes pretrained
embeddings; ``init_from`` starts from a pretrained backbone); no dropout; the KL in closed form (the code: a
one-sample estimate); a sample's variance is capped (see ``sample``), the weights' at the Glorot scale the
code starts from; evaluation adapts first order, with gradients enabled only in the inner loop. ``z`` is
differentiated with plain ``torch.autograd.grad``: learn2learn's wrappers adapt modules, not latent tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaclinic.algorithms.adapted import AdaptedHead
from metaclinic.algorithms.base import EpisodicModule, full_precision
from metaclinic.algorithms.pooling import class_means
from metaclinic.data.task import Task, TaskBatch


class LatentPenalties(NamedTuple):
    """The meta-batch means of the per-task penalties: KL to the prior, and the encoder penalty."""

    kl: Tensor
    encoder: Tensor


def kl_to_standard_normal(mean: Tensor, log_var: Tensor) -> Tensor:
    """Mean over elements of KL(N(mean, exp(log_var)) || N(0, 1)); 0 exactly at the prior."""
    return 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).mean()


def orthogonality_penalty(weight: Tensor) -> Tensor:
    """Mean squared difference between the correlation matrix of the rows of ``weight`` and the identity."""
    rows = F.normalize(weight, dim=1)
    return (rows @ rows.T - torch.eye(len(weight), dtype=weight.dtype, device=weight.device)).pow(2).mean()


def sample(mean: Tensor, log_var: Tensor, scale: float = 1.0) -> Tensor:
    """A reparametrised sample of N(mean, scale^2 exp(log_var)), its variance capped at ``scale^2``.

    The cap (ours): with the log-variance unbounded, the noise of the decoded weights grew with the latents
    and the latent steps diverged to NaN within 15 meta-steps on the tests' tasks (the authors' code clips
    gradients and skips NaN steps instead).
    """
    return mean + scale * (0.5 * log_var.clamp(max=0.0)).exp() * torch.randn_like(mean)


class ClassWeights(nn.Module):
    """The adapted classifier: one weight vector per class (a buffer), logits ``x @ weight^T``."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.T


class LEO(EpisodicModule):
    """Latent Embedding Optimization on the backbone's embeddings, for any ways and shots.

    Args:
        backbone: maps inputs to embeddings; must expose ``out_features``.
        latent_size: size of a class's latent code ``z``.
        latent_steps: inner-loop steps on ``z``.
        finetune_steps: inner-loop steps on the decoded weights after those.
        inner_lr: initial step size of the latent steps (meta-learned per latent dimension).
        finetune_lr: initial step size of the fine-tuning steps (meta-learned per embedding dimension).
        kl_weight: weight of KL(q(z | support) || N(0, I)) in the outer loss.
        encoder_penalty_weight: weight of ``||stopgrad(z adapted) - z||^2``.
        orthogonality_weight: weight of the decoder's orthogonality penalty.
        l2_weight: weight of the squared norm of the encoder, relation and decoder weights.
        **kwargs: ``optimizer``, ``scheduler`` and ``init_from``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        latent_size: int = 64,
        latent_steps: int = 5,
        finetune_steps: int = 5,
        inner_lr: float = 0.3,
        finetune_lr: float = 0.001,
        kl_weight: float = 1.0,
        encoder_penalty_weight: float = 1e-9,
        orthogonality_weight: float = 0.001,
        l2_weight: float = 1e-6,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.backbone, size, width = backbone, backbone.out_features, 2 * latent_size
        self.latent_steps, self.finetune_steps = latent_steps, finetune_steps
        self.penalty_weights = dict(
            kl=kl_weight,
            encoder_penalty=encoder_penalty_weight,
            orthogonality=orthogonality_weight,
            l2=l2_weight,
        )
        self.encoder = nn.Linear(size, latent_size, bias=False)
        self.relation = nn.Sequential(
            nn.Linear(width, width, bias=False), nn.ReLU(),
            nn.Linear(width, width, bias=False), nn.ReLU(),
            nn.Linear(width, width, bias=False),
        )  # fmt: skip
        self.decoder = nn.Linear(latent_size, 2 * size, bias=False)  # a weight vector's mean and log-variance
        for layer in self.leo_layers():
            nn.init.xavier_uniform_(layer.weight)
        self.latent_step_sizes = nn.Parameter(torch.full((latent_size,), inner_lr))
        self.weight_step_sizes = nn.Parameter(torch.full((size,), finetune_lr))

    def leo_layers(self) -> list[nn.Linear]:
        return [self.encoder, *(m for m in self.relation if isinstance(m, nn.Linear)), self.decoder]

    def latent_distribution(self, support: Tensor, support_y: Tensor, n_way: int) -> tuple[Tensor, Tensor]:
        """Each class's latent mean and log-variance ``(tasks, n_way, latent)`` from support embeddings."""
        codes = self.encoder(support)  # (tasks, n, latent)
        n = codes.shape[1]
        pairs = torch.cat(
            [codes.unsqueeze(2).expand(-1, -1, n, -1), codes.unsqueeze(1).expand(-1, n, -1, -1)], -1
        )
        relations = self.relation(pairs).mean(2)  # every example against every support example
        return class_means(relations, support_y, n_way).chunk(2, dim=-1)

    def decode(self, z: Tensor) -> Tensor:
        """Class weights ``(tasks, n_way, d)`` of latents ``(tasks, n_way, latent)``, sampled in training."""
        mean, log_var = self.decoder(z).chunk(2, dim=-1)
        if not self.training:
            return mean
        return sample(mean, log_var, math.sqrt(2 / (mean.shape[-1] + mean.shape[-2])))  # Glorot-sized

    @staticmethod
    def support_loss(support: Tensor, support_y: Tensor, weights: Tensor) -> Tensor:
        """The sum over tasks of each task's mean support cross-entropy: each task's gradient is its own."""
        logits = support @ weights.transpose(1, 2)
        return (
            F.cross_entropy(logits.flatten(0, 1), support_y.flatten(), reduction="sum") / support_y.shape[1]
        )

    @staticmethod
    def descend(
        x: Tensor, step_sizes: Tensor, loss_of: Callable[[Tensor], Tensor], keep_graph: bool
    ) -> Tensor:
        """One gradient step on ``x``; without ``keep_graph``, first order from a detached copy."""
        if not keep_graph:
            x = x.detach().requires_grad_()
        (grad,) = torch.autograd.grad(loss_of(x), x, create_graph=keep_graph)
        return x - step_sizes * grad

    def class_weights(self, support: Tensor, support_y: Tensor, n_way: int) -> tuple[Tensor, LatentPenalties]:
        """Every task's adapted weights ``(tasks, n_way, d)`` and the penalties, from support embeddings.

        Second order in training; in evaluation first order, with gradients on only for the inner loop and
        the result detached. Runs without autocast, in the precision of the parameters (as ``inner_loop.py``).
        """
        self.require_autograd()
        keep_graph = self.training and torch.is_grad_enabled()
        with full_precision(support.device):
            support = support.to(self.decoder.weight.dtype)
            mean, log_var = self.latent_distribution(support, support_y, n_way)
            z = start = sample(mean, log_var) if self.training else mean

            def loss_of_weights(weights: Tensor) -> Tensor:
                return self.support_loss(support, support_y, weights)

            with torch.enable_grad():
                for _ in range(self.latent_steps):
                    z = self.descend(
                        z, self.latent_step_sizes, lambda z: loss_of_weights(self.decode(z)), keep_graph
                    )
                weights = self.decode(z)
                for _ in range(self.finetune_steps):
                    weights = self.descend(weights, self.weight_step_sizes, loss_of_weights, keep_graph)
        penalties = LatentPenalties(kl_to_standard_normal(mean, log_var), (z.detach() - start).pow(2).mean())
        return (weights if keep_graph else weights.detach()), penalties

    def adapt(self, task: Task) -> nn.Module:
        support, _ = self.embed_episodes(self.backbone, TaskBatch.of(task))
        weights, _ = self.class_weights(support, task.support_y.unsqueeze(0), task.n_way)
        return AdaptedHead(self.backbone, ClassWeights(weights[0]), task.support_x)

    def penalties(self, latent: LatentPenalties) -> dict[str, Tensor]:
        """The outer loss's penalties, weighted, by name."""
        terms = dict(
            kl=latent.kl,
            encoder_penalty=latent.encoder,
            orthogonality=orthogonality_penalty(self.decoder.weight.T),  # rows: the latent directions
            l2=sum(layer.weight.pow(2).sum() for layer in self.leo_layers()),
        )
        return {name: self.penalty_weights[name] * value for name, value in terms.items()}

    def training_scores(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The query logits and the penalties, the whole meta-batch in one inner loop (batched over tasks)."""
        self.check_episode(batch)
        support, query = self.embed_episodes(self.backbone, batch)
        weights, latent = self.class_weights(support, batch.support_y, batch.n_way)
        return query @ weights.transpose(1, 2), self.penalties(latent)
