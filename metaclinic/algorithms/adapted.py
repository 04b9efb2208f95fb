"""Adapted models: a meta-trained model after adapting to one support set, as a plain ``nn.Module``.

:meth:`EpisodicModule.adapt` returns one of these for a task; its ``forward`` maps query inputs
``(queries, *example)`` to class logits ``(queries, n_way)``. It is the evaluation path itself, not a second
form of it: an algorithm either scores its episodes through its adapted models (the default
``score_tasks``: MAML, ANIL, Baseline), or its adapted model scores through the algorithm's own
``score_tasks`` (:class:`SupportSetClassifier`: ProtoNet, Matching, Relation and Siamese networks).
``metaclinic.adapt`` predicts with the same module and exports it with ``torch.export`` (after
:func:`frozen`), so the exported model cannot compute something other than what evaluation scored.

Adapted models keep their support set and embed it together with the inputs (``forward_queries``,
``embed_jointly``), as evaluation does: support-statistics normalisation then takes its moments from the
support rows, so every case is scored from the support set and itself alone. With transductive batch norm
(batch statistics) the inputs are normalised together, exactly as evaluation normalises a query set.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from metaclinic.data.task import Task, TaskBatch
from metaclinic.models.normalization import embed_jointly, forward_queries


def one_episode(support_x: Tensor, support_y: Tensor, query_x: Tensor, n_way: int) -> Task:
    """The episode whose query set is ``query_x`` (its labels are placeholders, unused)."""
    return Task(
        support_x=support_x,
        support_y=support_y,
        query_x=query_x,
        query_y=query_x.new_zeros(query_x.shape[0], dtype=torch.long),
        classes=torch.arange(n_way, device=query_x.device),
    )


def frozen(adapted: nn.Module) -> nn.Module:
    """A copy of ``adapted`` holding plain tensors: learn2learn's adapted weights (non-leaf tensors with a
    graph back to the meta-parameters) become constant parameters, so the copy can be saved and exported."""
    for module in adapted.modules():
        for name, tensor in list(module._parameters.items()):
            if tensor is not None and not tensor.is_leaf:
                module._parameters[name] = nn.Parameter(tensor.detach().clone(), requires_grad=False)
    return copy.deepcopy(adapted).requires_grad_(False)


class CalibratedProbabilities(nn.Module):
    """An adapted model's logits divided by the temperature (:mod:`metaclinic.evaluation.calibration`)."""

    def __init__(self, adapted: nn.Module, temperature: float) -> None:
        super().__init__()
        self.adapted, self.temperature = adapted, temperature

    def forward(self, x: Tensor) -> Tensor:
        return (self.adapted(x).float() / self.temperature).softmax(-1)


class AdaptedNetwork(nn.Module):
    """A whole network with adapted weights (MAML, FOMAML, Meta-SGD, Reptile), called with its support set."""

    def __init__(self, network: nn.Module, support_x: Tensor) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("support_x", support_x)

    def forward(self, x: Tensor) -> Tensor:
        return forward_queries(self.network, self.support_x, x)


class AdaptedHead(nn.Module):
    """A meta-learned (or pretrained) backbone with a head fitted to the support set (ANIL, Baseline)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, support_x: Tensor) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.register_buffer("support_x", support_x)

    def forward(self, x: Tensor) -> Tensor:
        _, query = embed_jointly(self.backbone, self.support_x.unsqueeze(0), x.unsqueeze(0))
        return self.head(query[0])


class SupportSetClassifier(nn.Module):
    """An algorithm and one support set: every call scores the inputs as that episode's query set.

    The adapted model of algorithms that compare queries with the support set (and batch over tasks in
    ``score_tasks``): evaluation's own ``score_tasks`` and ``class_logits`` on the episode.
    """

    def __init__(self, algorithm: nn.Module, task: Task) -> None:
        super().__init__()
        self.algorithm = algorithm
        self.register_buffer("support_x", task.support_x)
        self.register_buffer("support_y", task.support_y)
        self.register_buffer("classes", task.classes)
        self.episode_index = None if task.episode_index is None else int(task.episode_index)

    def episode(self, x: Tensor) -> TaskBatch:
        """The meta-batch of this support set with ``x`` as its query set."""
        task = one_episode(self.support_x, self.support_y, x, len(self.classes))
        task.classes = self.classes
        if self.episode_index is not None:
            task.episode_index = torch.tensor(self.episode_index)
        return TaskBatch.of(task)

    def forward(self, x: Tensor) -> Tensor:
        batch = self.episode(x)
        return self.algorithm.class_logits(self.algorithm.score_tasks(batch), batch)[0]
