"""MANN: Santoro, Bartunov, Botvinick, Wierstra and Lillicrap, "Meta-Learning with Memory-Augmented Neural
Networks", ICML 2016, https://proceedings.mlr.press/v48/santoro16.html (https://arxiv.org/abs/1605.06065).

An LSTM controller reads an episode as a sequence: at step t it sees the embedding of x_t and the one-hot
label of the *previous* example, y_{t-1}, so it must predict y_t before it is told, and learns to bind each
example to its label (which arrives one step later) in an external memory of ``memory_slots`` rows. Reads
are a softmax over the cosine similarities of a key to the rows; writes use least-recently-used access
(LRUA): a learned gate mixes the rows read last step with the least-used row, which is cleared first; usage
decays by ``usage_decay``. The logits are a linear map of the controller's state and the read vector.

Here the sequence is the support set, shuffled per episode (seeded by its index). Every query is then one
more step from the state after the support set, with the last support label as its label input; the queries
are batched side by side, so none writes into the memory another reads (inductive scoring).

Changed vs the paper, so that it learns within a few hundred episodes (the paper trains on 10^5): each term
of the LRUA write weights writes a vector of its own, the key (from the controller state and, skipped past
the LSTM, the embedding) to the least-used row, an ``add`` vector (from the controller state and the previous
label) to the rows read last step, where the previous example's key went. With one vector through both terms
(the paper writes the key) nothing was learned on our synthetic 5-way tasks within ~4000 episodes. The read
is sharpened (``key_strength``; paper: 1). One read head (paper: four). The sequence is an N-way K-shot
support set rather than 50 draws of 5 classes; the loss is on the queries, plus ``support_loss_weight`` times
that of the support steps (the paper's loss on every step; it slowed early learning in our runs, so it is
off by default).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaclinic.algorithms.adapted import AdaptedHead
from metaclinic.algorithms.base import EpisodicModule
from metaclinic.data.task import Task, TaskBatch


class MemoryState(NamedTuple):
    """What the controller carries from one step to the next, each ``(batch, ...)``."""

    hidden: Tensor  # LSTM hidden state
    cell: Tensor  # LSTM cell state
    read: Tensor  # the last read vector r_{t-1}, an input of the next step
    memory: Tensor  # (batch, slots, memory_size)
    read_weights: Tensor  # (batch, slots): w^r_{t-1}
    usage: Tensor  # (batch, slots): w^u_{t-1}


class MemoryController(nn.Module):
    """The LSTM controller, its read and write heads (LRUA) and the output layer: one step at a time."""

    def __init__(
        self, embedding_size: int, n_way: int, controller_size: int, memory_slots: int, memory_size: int,
        usage_decay: float, key_strength: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.slots, self.usage_decay, self.key_strength = memory_slots, usage_decay, key_strength
        self.lstm = nn.LSTMCell(embedding_size + n_way + memory_size, controller_size)  # nn.LSTMCell exports
        self.key = nn.Linear(controller_size + embedding_size, memory_size)  # what to store and look up
        self.add = nn.Linear(controller_size + n_way, memory_size)  # binds the late label to its example
        self.gate = nn.Linear(controller_size + embedding_size + n_way, 1)  # alpha: read rows vs least used
        self.output = nn.Linear(controller_size + memory_size, n_way)

    def initial_state(self, batch: int, like: Tensor) -> MemoryState:
        """Empty memory, nothing read or used (the first key goes to row 0)."""
        zeros = lambda *shape: like.new_zeros(batch, *shape)  # noqa: E731
        size = self.key.out_features
        return MemoryState(
            zeros(self.lstm.hidden_size), zeros(self.lstm.hidden_size), zeros(size),
            zeros(self.slots, size), zeros(self.slots), zeros(self.slots),
        )  # fmt: skip

    def step(self, embedding: Tensor, label: Tensor, state: MemoryState) -> tuple[Tensor, MemoryState]:
        """Logits ``(batch, n_way)`` for inputs ``embedding`` with the previous labels ``label`` (one-hot)."""
        label = label.to(embedding.dtype)
        hidden, cell = self.lstm(torch.cat([embedding, label, state.read], -1), (state.hidden, state.cell))
        key = torch.tanh(self.key(torch.cat([hidden, embedding], -1)))
        add = torch.tanh(self.add(torch.cat([hidden, label], -1)))
        gate = torch.sigmoid(self.gate(torch.cat([hidden, embedding, label], -1)))
        least_used = torch.zeros_like(state.usage).scatter(-1, state.usage.argmin(-1, keepdim=True), 1.0)
        to_read, to_least_used = gate * state.read_weights, (1 - gate) * least_used  # w^w_t, term by term
        memory = (
            state.memory * (1 - least_used).unsqueeze(-1)  # the least-used row is cleared before the write
            + to_read.unsqueeze(-1) * add.unsqueeze(-2)
            + to_least_used.unsqueeze(-1) * key.unsqueeze(-2)
        )
        similarity = (F.normalize(memory, dim=-1) @ F.normalize(key, dim=-1).unsqueeze(-1)).squeeze(-1)
        read_weights = torch.softmax(self.key_strength * similarity, dim=-1)
        read = (read_weights.unsqueeze(-1) * memory).sum(-2)
        usage = self.usage_decay * state.usage + read_weights + to_read + to_least_used
        logits = self.output(torch.cat([hidden, read.to(hidden.dtype)], -1))
        return logits, MemoryState(hidden, cell, read, memory, read_weights, usage)


def sequence_order(n_support: int, episode_index: Tensor) -> Tensor:
    """The order ``(tasks, n_support)`` in which each task's support set is presented: a permutation seeded
    by the episode index, so reproducible, and free of the class-sorted order the data layer gives."""
    seeded = lambda i: torch.Generator().manual_seed(int(i))  # noqa: E731
    return torch.stack([torch.randperm(n_support, generator=seeded(i)) for i in episode_index])


def query_steps(controller: MemoryController, query: Tensor, state: MemoryState, label: Tensor) -> Tensor:
    """Logits ``(tasks, q, n_way)``: each query embedding ``(tasks, q, d)`` one step from its task's state
    ``(tasks, ...)``, label input ``label (tasks, n_way)``; the queries side by side (none sees another)."""
    tasks, queries = query.shape[:2]
    side_by_side = lambda t: t.unsqueeze(1).expand(tasks, queries, *t.shape[1:]).flatten(0, 1)  # noqa: E731
    state = MemoryState(*(side_by_side(t) for t in state))
    logits, _ = controller.step(query.flatten(0, 1), side_by_side(label), state)
    return logits.view(tasks, queries, -1)


class MemoryReadout(nn.Module):
    """The controller's state after a support set, from embeddings ``(q, d)`` to logits: each input is one
    more step from it (the head of the adapted model, :class:`AdaptedHead`)."""

    def __init__(self, controller: MemoryController, state: MemoryState, last_label: Tensor) -> None:
        super().__init__()
        self.controller = controller
        self.register_buffer("last_label", last_label)  # (1, n_way): every query's label input
        for name, tensor in state._asdict().items():
            self.register_buffer(name, tensor)  # (1, ...)

    def forward(self, embeddings: Tensor) -> Tensor:
        state = MemoryState(*(getattr(self, name) for name in MemoryState._fields))
        return query_steps(self.controller, embeddings.unsqueeze(0), state, self.last_label)[0]


class MANN(EpisodicModule):
    """Memory-augmented neural network with an LSTM controller and LRUA memory, for ``n_way`` episodes.

    Scores are the support steps' logits (in the support set's order) followed by the queries'; the
    prediction and ``val/loss`` are the queries'.

    Args:
        backbone: maps inputs to embeddings; must expose ``out_features``.
        n_way: width of the label input and of the output; episodes must have this many classes.
        controller_size: LSTM units.
        memory_slots: rows of the memory.
        memory_size: width of a row (and of the read vector).
        usage_decay: gamma, the decay of the usage weights.
        key_strength: scale of the cosine similarities before the read softmax.
        support_loss_weight: weight of the support steps' cross-entropy in training (0: queries only).
        **kwargs: ``optimizer``, ``scheduler`` and ``init_from``.
    """

    fixed_ways = True

    def __init__(
        self, backbone: nn.Module, n_way: int = 5, controller_size: int = 200, memory_slots: int = 128,
        memory_size: int = 40, usage_decay: float = 0.95, key_strength: float = 4.0,
        support_loss_weight: float = 0.0, **kwargs,
    ) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.backbone, self.n_way, self.support_loss_weight = backbone, n_way, support_loss_weight
        sizes = (controller_size, memory_slots, memory_size)
        self.controller = MemoryController(backbone.out_features, n_way, *sizes, usage_decay, key_strength)

    def read_support(
        self, support: Tensor, support_y: Tensor, episode_index: Tensor
    ) -> tuple[MemoryState, Tensor, Tensor]:
        """Runs every task's support sequence (in ``sequence_order``), the tasks side by side: the state after
        it, the last label ``(tasks, n_way)`` and the support steps' logits ``(tasks, n_support, n_way)`` put
        back in the support set's order."""
        tasks, n_support = support_y.shape
        order = sequence_order(n_support, episode_index).to(support_y.device)
        inputs = support.gather(1, order.unsqueeze(-1).expand_as(support))
        labels = F.one_hot(support_y.gather(1, order), self.n_way).to(support.dtype)
        state, previous = self.controller.initial_state(tasks, support), torch.zeros_like(labels[:, 0])
        logits = []
        for t in range(n_support):
            step_logits, state = self.controller.step(inputs[:, t], previous, state)
            logits.append(step_logits)
            previous = labels[:, t]
        in_support_order = order.argsort(-1).unsqueeze(-1).expand(tasks, n_support, self.n_way)
        return state, previous, torch.stack(logits, 1).gather(1, in_support_order)

    def adapt(self, task: Task) -> nn.Module:
        batch = TaskBatch.of(task)
        support, _ = self.embed_episodes(self.backbone, batch)
        state, last_label, _ = self.read_support(support, batch.support_y, batch.episode_index)
        return AdaptedHead(self.backbone, MemoryReadout(self.controller, state, last_label), task.support_x)

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        support, query = self.embed_episodes(self.backbone, batch)
        state, last_label, support_logits = self.read_support(support, batch.support_y, batch.episode_index)
        return torch.cat([support_logits, query_steps(self.controller, query, state, last_label)], 1)

    def class_logits(self, scores: Tensor, batch: TaskBatch) -> Tensor:
        return scores[:, batch.support_y.shape[1] :]

    def query_loss(self, scores: Tensor, batch: TaskBatch) -> Tensor:
        loss = F.cross_entropy(self.class_logits(scores, batch).flatten(0, 1), batch.query_y.flatten())
        if self.training and self.support_loss_weight:
            support = scores[:, : batch.support_y.shape[1]].flatten(0, 1)
            loss = loss + self.support_loss_weight * F.cross_entropy(support, batch.support_y.flatten())
        return loss
