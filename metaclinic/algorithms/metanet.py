"""Meta Networks: Munkhdalai and Yu, "Meta Networks", ICML 2017, https://arxiv.org/abs/1703.00837.

Slow weights are learned across tasks; fast weights are generated for one task from loss gradients (the
"meta information") by small networks. A representation loss on the support set (do two support examples
share a class? a cross-entropy on the cosine similarity of their keys) gives the gradient of the key
network's slow layer, which ``d`` turns into the task's fast key weights. Each support example's task loss
(cross-entropy of the slow base learner) gives its own gradients of the base learner's layers, which ``m``
turns into that example's fast weights, stored in a memory slot under the example's key. A query reads its
fast weights as a softmax over the cosine similarities of its key with the support keys, applied to the
memory; every layer adds the activation of its fast part to that of its slow part (layer augmentation).
Each query reads the memory on its own, so scoring is inductive.

Simplified against the paper: the key network and the base learner share the backbone and only their
final layers have fast weights (the paper augments its convolutional layers too); ``m`` and ``d`` are MLPs
applied to every gradient coordinate, preprocessed into log-magnitude and sign as Andrychowicz et al. (2016)
do (the paper's ``d`` is an LSTM), made odd in the gradient and starting at zero (see
:class:`FastWeightGenerator`); the representation loss takes every support pair instead of T sampled ones.
The output layer has a fixed ``n_way`` width, as the paper's softmax has.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaclinic.algorithms.adapted import AdaptedHead
from metaclinic.algorithms.base import EpisodicModule, full_precision
from metaclinic.algorithms.pooling import cosine_logits
from metaclinic.data.task import Task, TaskBatch


def preprocess(gradient: Tensor, p: float = 10.0) -> Tensor:
    """Every coordinate as ``(log|g| / p, sign g)``, or ``(-1, e^p g)`` below ``e^-p`` (Andrychowicz et al.):
    gradients of any scale become inputs of a similar range. ``(...)`` -> ``(..., 2)``."""
    large = gradient.abs() >= math.exp(-p)
    magnitude = torch.where(large, gradient.abs().clamp_min(math.exp(-p)).log() / p, -1.0)
    direction = torch.where(large, gradient.sign(), math.exp(p) * gradient)
    return torch.stack([magnitude, direction], -1)


class FastWeightGenerator(nn.Module):
    """``m`` or ``d``: a small MLP from each preprocessed gradient coordinate to a fast weight.

    Our choices, not the paper's: it is odd in the gradient, ``(mlp(g) - mlp(-g)) / 2``, so a zero gradient
    gives a zero fast weight (a free MLP gave every coordinate a common offset that made all keys nearly
    parallel and all logits alike); and its last layer starts at zero, so a new model is its slow network.
    On the synthetic 5-way tasks of tests/test_algorithms.py (60 steps, four seeds), a random start left one
    seed near chance (ReLU 24%, its loss stuck at log 5; tanh 33%); the zero start gave 59-75% on all four.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1, bias=False))
        nn.init.zeros_(self.mlp[-1].weight)

    def forward(self, gradient: Tensor) -> Tensor:
        features = preprocess(gradient)
        mirrored = features * features.new_tensor([1.0, -1.0])  # preprocess(-gradient)
        mine, theirs = self.mlp(torch.stack([features, mirrored])).squeeze(-1)
        return (mine - theirs) / 2


class AugmentedLinear(nn.Module):
    """A layer with slow weights of its own and fast weights given with the input:
    ``act(slow(x)) + act(fast(x))`` (ReLU in hidden layers, none where the output is logits or keys)."""

    def __init__(self, in_features: int, out_features: int, relu: bool) -> None:
        super().__init__()
        self.slow, self.relu = nn.Linear(in_features, out_features), relu

    def activation(self, x: Tensor) -> Tensor:
        return F.relu(x) if self.relu else x

    def forward(self, x: Tensor, fast_weight: Tensor) -> Tensor:
        """``x (rows, in)``; ``fast_weight (out, in)`` for every row, or ``(rows, out, in)`` one per row."""
        fast = (fast_weight @ x.unsqueeze(-1)).squeeze(-1)
        return self.activation(self.slow(x)) + self.activation(fast)


def per_example_weight_gradients(output_gradients: Tensor, inputs: Tensor) -> Tensor:
    """Each row's gradient ``(rows, out, in)`` of a linear layer's weight: output gradient times input."""
    return output_gradients.unsqueeze(-1) * inputs.unsqueeze(-2)


def read(attention: Tensor, memory: Tensor) -> Tensor:
    """Each query's fast weights: its attention ``(q, slots)`` over the memory ``(slots, out, in)``."""
    return (attention @ memory.flatten(1).to(attention.dtype)).unflatten(-1, memory.shape[1:])


class MetaNetwork(EpisodicModule):
    """Meta Networks with a fast-weight memory of one slot per support example.

    Args:
        backbone: maps inputs to embeddings; must expose ``out_features``.
        n_way: width of the output layer; episodes must have this many classes.
        hidden: width of the base learner's hidden layer.
        key_size: width of the keys the memory is indexed by.
        generator_hidden: hidden units of the fast-weight generators ``m`` and ``d``.
        temperature: scale of the cosine similarities (attention and representation loss); the paper uses 1.
        **kwargs: ``optimizer``, ``scheduler`` and ``init_from``.
    """

    fixed_ways = True

    def __init__(
        self,
        backbone: nn.Module,
        n_way: int = 5,
        hidden: int = 64,
        key_size: int = 64,
        generator_hidden: int = 20,
        temperature: float = 10.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.backbone, self.n_way, self.temperature = backbone, n_way, temperature
        self.key_layer = AugmentedLinear(backbone.out_features, key_size, relu=False)  # u's last layer
        self.hidden_layer = AugmentedLinear(backbone.out_features, hidden, relu=True)  # the base learner b
        self.output_layer = AugmentedLinear(hidden, n_way, relu=False)
        self.example_weights = FastWeightGenerator(generator_hidden)  # m: support example -> memory slot
        self.task_weights = FastWeightGenerator(generator_hidden)  # d: representation loss -> key weights

    def representation_loss(self, keys: Tensor, labels: Tensor) -> Tensor:
        """Whether each pair of support examples shares a class, from the cosine similarity of their keys."""
        similarity = cosine_logits(keys, keys, self.temperature)
        same = (labels.unsqueeze(0) == labels.unsqueeze(1)).to(similarity.dtype)
        pairs = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        return F.binary_cross_entropy_with_logits(similarity[pairs], same[pairs])

    def meta_information(self, support: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Loss gradients of the slow layers: the key layer's ``(key, d)`` over the support set, and every
        support example's of the hidden ``(n, hidden, d)`` and output ``(n, n_way, hidden)`` layers.

        Differentiated through in training (second order); in evaluation only gradients are turned on, and
        only here (in full precision: the log of tiny half-precision gradients is noise).
        """
        self.require_autograd()
        with torch.enable_grad(), full_precision(support.device):
            support = support.to(self.key_layer.slow.weight.dtype)  # float32 under mixed precision
            keys, hidden_in = self.key_layer.slow(support), self.hidden_layer.slow(support)
            hidden = F.relu(hidden_in)
            logits = self.output_layer.slow(hidden)
            # summed: example i's task loss depends on its own row alone, so row i of each gradient is its own
            task_loss = F.cross_entropy(logits, labels, reduction="sum")
            loss = self.representation_loss(keys, labels) + task_loss
            key_out, hidden_out, logits_out = torch.autograd.grad(
                loss, (keys, hidden_in, logits), create_graph=self.training
            )
        return (
            key_out.T @ support,
            per_example_weight_gradients(hidden_out, support),
            per_example_weight_gradients(logits_out, hidden),
        )

    def adapt(self, task: Task) -> nn.Module:
        if self.transductive:  # batch statistics: normalised with the query set, as evaluation does
            support = self.embed_episodes(self.backbone, TaskBatch.of(task))[0][0]
        else:  # the support set's own moments, as in the adapted model's joint embedding
            support = self.backbone(task.support_x)
        return self.memorise(support, task)

    def memorise(self, support: Tensor, task: Task) -> AdaptedHead:
        """The adapted model of ``task`` from its support embeddings ``(n, d)``: ``d`` writes the fast key
        weights, ``m`` one memory slot per support example."""
        key_gradient, hidden_gradients, output_gradients = self.meta_information(support, task.support_y)
        key_weight = self.task_weights(key_gradient)
        memory = self.example_weights(hidden_gradients), self.example_weights(output_gradients)
        keys = self.key_layer(support, key_weight)
        return AdaptedHead(self.backbone, FastWeights(self, key_weight, keys, *memory), task.support_x)

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        """Every task's adapted model on its query embeddings, the meta-batch embedded once (called on inputs,
        the adapted model embeds its support set again with them: the same numbers, with more work)."""
        support, query = self.embed_episodes(self.backbone, batch)
        adapted = (self.memorise(s, task) for s, task in zip(support, batch, strict=True))
        return torch.stack([model.head(q) for model, q in zip(adapted, query, strict=True)])


class FastWeights(nn.Module):
    """The slow layers and one task's fast weights, from embeddings to logits: each input reads its own.

    Buffers: the fast key weights, and per support example one key and one memory slot (the hidden and the
    output layer's fast weights). The adapted model is the backbone with this head (:class:`AdaptedHead`).
    """

    def __init__(
        self,
        network: MetaNetwork,
        key_weight: Tensor,
        support_keys: Tensor,
        hidden_memory: Tensor,
        output_memory: Tensor,
    ) -> None:
        super().__init__()
        self.key_layer, self.hidden_layer = network.key_layer, network.hidden_layer
        self.output_layer, self.temperature = network.output_layer, network.temperature
        self.register_buffer("key_weight", key_weight)
        self.register_buffer("support_keys", support_keys)
        self.register_buffer("hidden_memory", hidden_memory)
        self.register_buffer("output_memory", output_memory)

    def attention(self, embeddings: Tensor) -> Tensor:
        """Each input's softmax ``(q, slots)`` over the cosine similarities of its key and the slots' keys."""
        keys = self.key_layer(embeddings, self.key_weight)
        return torch.softmax(cosine_logits(keys, self.support_keys, self.temperature), -1)

    def forward(self, embeddings: Tensor) -> Tensor:
        """Logits ``(q, n_way)`` of the inputs' embeddings ``(q, d)``."""
        attention = self.attention(embeddings)
        hidden = self.hidden_layer(embeddings, read(attention, self.hidden_memory))
        return self.output_layer(hidden, read(attention, self.output_memory))
