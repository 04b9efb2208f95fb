"""MetaGAN: Zhang, Che, Ghahramani, Bengio and Song, "MetaGAN: An Adversarial Approach to Few-Shot Learning",
NeurIPS 2018, https://papers.nips.cc/paper/7504-metagan-an-adversarial-approach-to-few-shot-learning.

A generator conditioned on the task (noise, the episode's mean support embedding and its mean support input)
makes fake examples of the episode's input shape, and the few-shot classifier, as discriminator, gets an extra
(N+1)-th "fake" class (the semi-supervised GAN of Salimans et al. 2016): real queries are classified among the
N classes (the supervised loss, the base algorithm's own) and as real, generated ones as fake. Fakes near the
real classes teach sharper class boundaries. The generator learns by feature matching (Salimans et al.): the
mean embedding of its fakes should be that of the episode's real queries. Queries are scored with the N real
classes' logits only, so evaluation, ``adapt`` and the export are those of an N-way classifier; the generator
is not used there.

``base``: ``protonet`` (prototype logits, see ``fake_logits``) or ``maml`` (an N+1-way head, adapted to the
support set by the inner loop). Simplified: a two-layer MLP generator whose fakes are an offset from the mean
support input in tanh space (metaclinic's image range (-1, 1)); MAML's inner loop adapts on the real support
set only, the fakes enter the outer loss; no unlabelled data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaclinic.algorithms._learn2learn import learn2learn as l2l
from metaclinic.algorithms.adapted import AdaptedHead
from metaclinic.algorithms.base import EpisodicModule, full_precision
from metaclinic.algorithms.inner_loop import InnerLoopModule
from metaclinic.algorithms.pooling import class_means, prototype_logits
from metaclinic.data.task import Task, TaskBatch
from metaclinic.models.normalization import embed_jointly, normalises_per_episode

# Inputs (tasks, m, *example) scored as each task's queries -> the support embeddings (tasks, n_support, d),
# the inputs' embeddings (tasks, m, d) and their scores (tasks, m, n_way + 1), the fake class's last.
Discriminator = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


def realness(scores: Tensor) -> Tensor:
    """Log-odds of real over fake from ``n_way + 1`` scores: ``logsumexp(real classes) - fake``."""
    return scores[..., :-1].logsumexp(-1) - scores[..., -1]


class TaskGenerator(nn.Module):
    """Fake examples ``(tasks, count, *input_shape)`` in (-1, 1) around an episode's mean support input.

    An offset from noise and the task embedding, added to the mean support input in tanh space: the mean
    input tells the generator where the episode's data lie (with support-set normalisation, the mean support
    embedding is much the same for every episode and cannot), and its fakes start between the classes.
    """

    def __init__(self, input_shape: tuple[int, ...], condition_size: int, noise_size: int, hidden: int):
        super().__init__()
        self.input_shape, self.noise_size = tuple(input_shape), noise_size
        self.net = nn.Sequential(
            nn.Linear(noise_size + condition_size, hidden),
            nn.ReLU(),
            nn.Linear(hidden, math.prod(self.input_shape)),
        )

    def forward(self, centre: Tensor, condition: Tensor, count: int) -> Tensor:
        """``centre (tasks, *input_shape)``, ``condition (tasks, d)``: the episode's mean support input and
        embedding."""
        noise = torch.randn(*condition.shape[:-1], count, self.noise_size, device=condition.device)
        conditions = condition.unsqueeze(-2).expand(*noise.shape[:-1], -1)
        offset = self.net(torch.cat([noise, conditions.to(noise.dtype)], -1)).unflatten(-1, self.input_shape)
        return torch.tanh(centre.clamp(-0.999, 0.999).atanh().unsqueeze(1) + offset)


class RealClasses(nn.Module):
    """An adapted ``n_way + 1``-way network without its fake class: the N-way classifier to evaluate."""

    def __init__(self, adapted: nn.Module) -> None:
        super().__init__()
        self.adapted = adapted

    def forward(self, x: Tensor) -> Tensor:
        return self.adapted(x)[..., :-1]


class MetaGAN(EpisodicModule):
    """MetaGAN on ProtoNet or MAML; one optimizer for classifier and generator (see ``adversarial_loss``).

    Args:
        backbone: maps inputs to embeddings; must expose ``out_features`` and ``input_shape``.
        base: the few-shot classifier that is also the discriminator.
        n_way: ways of the episodes (``maml``: the head has ``n_way + 1`` outputs; ``protonet``: unused).
        adversarial_weight: weight of the real-vs-fake losses beside the classification loss; 0: the
            base algorithm exactly (no generator runs).
        noise_size: noise dimensions of the generator.
        generator_hidden: width of the generator's hidden layer.
        inner_lr, train_steps, eval_steps, eval_inner_lr, first_order: ``maml``'s inner loop, as in
            :class:`InnerLoopModule`.
        **kwargs: ``optimizer``, ``scheduler`` and ``init_from``.
    """

    # MAML's inner loop without InnerLoopModule's fixed N-way head and its refusal of other ways (protonet).
    inner_loop, inner_step = InnerLoopModule.inner_loop, InnerLoopModule.inner_step

    def __init__(
        self,
        backbone: nn.Module,
        base: Literal["protonet", "maml"] = "protonet",
        n_way: int = 5,
        adversarial_weight: float = 1.0,
        noise_size: int = 32,
        generator_hidden: int = 128,
        inner_lr: float = 0.01,
        train_steps: int = 5,
        eval_steps: int = 10,
        eval_inner_lr: float | None = None,
        first_order: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.base, self.n_way, self.adversarial_weight = base, n_way, adversarial_weight
        self.inner_lr, self.first_order = inner_lr, first_order
        self.train_steps, self.eval_steps = train_steps, eval_steps
        self.eval_inner_lr = inner_lr if eval_inner_lr is None else eval_inner_lr
        self.backbone = backbone
        if base == "maml":
            self.head = nn.Linear(backbone.out_features, n_way + 1)
        else:
            self.log_fake_radius = nn.Parameter(torch.tensor(math.log(0.25)))
        shape, size = backbone.input_shape, backbone.out_features
        self.generator = TaskGenerator(shape, size, noise_size, generator_hidden)

    @property
    def fixed_ways(self) -> bool:
        return self.base == "maml"  # an N+1-way head; ProtoNet takes any ways

    def adapted_head(self, task: Task) -> AdaptedHead:
        """MAML: the backbone and N+1-way head after the inner loop on ``task``'s support set."""
        wrapper = l2l.algorithms.MAML(nn.Sequential(self.backbone, self.head), lr=self.inner_lr)
        network = self.inner_loop(wrapper, task.support_x, task.support_y).module
        return AdaptedHead(network[0], network[1], task.support_x)

    def discriminator(self, batch: TaskBatch) -> Discriminator:
        """Every task's classifier after it has seen its support set (inputs scored as its queries)."""
        if self.base == "maml":
            heads = [self.adapted_head(task) for task in batch]

            def adapted(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
                pairs = zip(heads, x, strict=True)
                embedded = [embed_jointly(h.backbone, h.support_x[None], q[None]) for h, q in pairs]
                support, features = (torch.cat(parts) for parts in zip(*embedded, strict=True))
                return (
                    support,
                    features,
                    torch.stack([h.head(f) for h, f in zip(heads, features, strict=True)]),
                )

            return adapted

        def protonet(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            support, features = self.embed_episodes(self.backbone, dataclasses.replace(batch, query_x=x))
            prototypes = class_means(support, batch.support_y, batch.n_way)
            logits = prototype_logits(features, prototypes)
            return support, features, torch.cat([logits, self.fake_logits(prototypes, logits)], -1)

        return protonet

    def fake_logits(self, prototypes: Tensor, logits: Tensor) -> Tensor:
        """ProtoNet's fake-class logit, one per episode: ``-r`` times the mean squared distance between its
        prototypes, ``r`` learned (from 1/4). A sample is real when it is closer to some prototype than about
        ``sqrt(r)`` times the classes' spacing: a threshold at the scale of the embedding from the start. A
        plain learned bias (from 0) lagged that scale: the embedding shrank to meet it, and 5-way accuracy
        after the registry's 60 test steps fell to 50-67% (ProtoNet 69-74%; with this, 75-89%)."""
        n_way = prototypes.shape[-2]
        spacing = -prototype_logits(prototypes, prototypes).sum((-1, -2)) / (n_way * (n_way - 1))
        fake = -self.log_fake_radius.exp() * spacing
        return fake.to(logits.dtype)[:, None, None].expand_as(logits[..., :1])

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        return self.discriminator(batch)(batch.query_x)[2]

    def class_logits(self, scores: Tensor, batch: TaskBatch) -> Tensor:
        return scores[..., :-1].contiguous()  # in memory as the base algorithm's logits: the same rounding

    def query_loss(self, scores: Tensor, batch: TaskBatch) -> Tensor:
        """The supervised loss: cross-entropy among the N real classes (Salimans et al.'s L_supervised)."""
        return super().query_loss(self.class_logits(scores, batch), batch)

    def adapt(self, task: Task) -> nn.Module:
        return RealClasses(self.adapted_head(task)) if self.base == "maml" else super().adapt(task)

    @property
    def backward_per_task(self) -> bool:
        """As the base algorithm: task by task for MAML, and for ProtoNet if episodes are embedded alone."""
        return self.base == "maml" or normalises_per_episode(self.backbone)

    def training_scores(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The scores and ``adversarial_weight`` times the real-vs-fake game, added to the supervised loss."""
        self.check_episode(batch)
        discriminator = self.discriminator(batch)
        support, features, scores = discriminator(batch.query_x)
        if not self.adversarial_weight:
            return scores, {}
        adversarial = self.adversarial_loss(batch, discriminator, support, features, scores)
        return scores, {"adversarial": self.adversarial_weight * adversarial}

    def adversarial_loss(
        self,
        batch: TaskBatch,
        discriminator: Discriminator,
        support: Tensor,
        real_features: Tensor,
        real_scores: Tensor,
    ) -> Tensor:
        """The discriminator's real-vs-fake loss, plus a term of value 0 carrying the generator's gradient.

        One optimizer, one backward: the discriminator sees the fakes detached, and the generator's
        feature-matching gradient (taken with respect to its own parameters alone, so it never trains the
        discriminator) enters as ``s - s.detach()``, ``s = sum(parameter * gradient)``, the base class's
        meta-gradient trick; it is scaled like the returned loss, as in ``EpisodicModule.training_loss``.
        """
        centre, condition = batch.support_x.mean(1), support.mean(1).detach()
        fakes = self.generator(centre, condition, support.shape[1]).to(batch.query_x.dtype)
        fake_realness = realness(discriminator(fakes.detach())[2])
        real_loss, fake_loss = F.softplus(-realness(real_scores)).mean(), F.softplus(fake_realness).mean()
        matching = (real_features.detach().mean(1) - discriminator(fakes)[1].mean(1)).pow(2).sum(-1).mean()
        params, scale = list(self.generator.parameters()), self.loss_scale()
        with full_precision(matching.device):
            grads = torch.autograd.grad(matching * scale, params)
        carried = sum((p * (g / scale)).sum() for p, g in zip(params, grads, strict=True))
        return real_loss + fake_loss + carried - carried.detach()
