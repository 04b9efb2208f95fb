"""Normalisation for few-shot episodes: what decides whether a query's prediction depends on other queries.

Batch norm on the statistics of the current batch (the original MAML code, ``norm="transductive"``) normalises
an episode's support and query sets together, so a patient's prediction changes with which other patients are
scored with it, and one case predicted alone is normalised with its own activations. metaclinic's default,
``norm="support"``, is the "MetaBN"/context batch norm of Bronskill et al.: every layer normalises support
*and* query activations with the moments of the support set alone, so a query's output depends only on the
support set and the query itself. ``norm="task_norm"`` is their TaskNorm-I, which blends those moments with
the query's own instance moments. The moments are those of the episode's support set at the current weights:
a network called on support and query together (``support_rows``, ``embed_jointly``) takes them from the
support rows; one called on the support set alone (an inner-loop step) from the whole batch. Adapted models
(and their exports) keep the support set and call the network this way too, so they compute exactly what
evaluation computes.

Bronskill, Gordon, Requeima, Nowozin and Turner, "TaskNorm: Rethinking Batch Normalization for
Meta-Learning", ICML 2020, https://arxiv.org/abs/2003.03284.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor, nn

Norm = Literal["support", "task_norm", "transductive", "running"]
NORMS = ("support", "task_norm", "transductive", "running")


class EpisodeNorm(nn.Module):
    """Batch norm whose moments come from the support set of the episode (and, for TaskNorm-I, the example).

    Works on ``(batch, channels)`` and ``(batch, channels, *spatial)`` activations. ``support_rows`` (set by
    :func:`support_rows`) says how many leading rows of the input are the support set; ``None`` means all
    of them. TaskNorm-I's blending weight ``alpha = sigmoid(scale * n_support + offset)`` is learned per
    layer; both start at 0 (alpha = 0.5), our choice.

    Args:
        num_features: channels.
        mode: ``"support"`` or ``"task_norm"``.
        eps: added to the variance.
    """

    def __init__(
        self, num_features: int, mode: Literal["support", "task_norm"] = "support", eps: float = 1e-5
    ) -> None:
        super().__init__()
        if mode not in ("support", "task_norm"):
            raise ValueError(f"EpisodeNorm mode must be 'support' or 'task_norm', got {mode!r}")
        self.num_features, self.mode, self.eps = num_features, mode, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        if mode == "task_norm":
            self.alpha_scale = nn.Parameter(torch.zeros(1))
            self.alpha_offset = nn.Parameter(torch.zeros(1))
        self.support_rows: int | None = None

    def extra_repr(self) -> str:
        return f"{self.num_features}, mode={self.mode}, eps={self.eps}"

    def forward(self, x: Tensor) -> Tensor:
        # One formula for every pass, also for the support set alone: with torch's fused batch-norm kernel
        # there, second-order MAML under DDP ended 1e-2 away from one process after 6 steps (4e-8 with this).
        shape = (1, -1) + (1,) * (x.dim() - 2)
        reduce = [0, *range(2, x.dim())]
        rows = (x if self.support_rows is None else x[: self.support_rows]).float()
        mean, var = rows.mean(reduce, keepdim=True), rows.var(reduce, unbiased=False, keepdim=True)
        count = torch.full((1,), float(rows.shape[0]), device=x.device)
        xf = x.float()
        if self.mode == "task_norm":
            if x.dim() < 3:
                raise ValueError("task_norm needs spatial activations (batch, channels, ...); use 'support'")
            alpha = torch.sigmoid(self.alpha_scale * count + self.alpha_offset)
            own = list(range(2, x.dim()))
            own_mean, own_var = xf.mean(own, keepdim=True), xf.var(own, unbiased=False, keepdim=True)
            blended = alpha * mean + (1 - alpha) * own_mean
            var = alpha * (var + (mean - blended) ** 2) + (1 - alpha) * (own_var + (own_mean - blended) ** 2)
            mean = blended
        normalised = (xf - mean) * torch.rsqrt(var + self.eps)
        return (normalised * self.weight.view(shape) + self.bias.view(shape)).to(x.dtype)


def make_norm(norm: Norm, num_features: int, dims: int) -> nn.Module:
    """The normalisation layer ``norm`` for ``dims``-dimensional activations (1: features, 2: images)."""
    if norm in ("support", "task_norm"):
        return EpisodeNorm(num_features, mode=norm)
    batch_norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims]
    if norm == "transductive":
        return batch_norm(num_features, track_running_stats=False)
    if norm == "running":
        return batch_norm(num_features)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")


def episode_norms(module: nn.Module) -> list[EpisodeNorm]:
    return [m for m in module.modules() if isinstance(m, EpisodeNorm)]


def uses_batch_statistics(module: nn.Module) -> bool:
    """Whether some batch norm layer of ``module`` normalises with the current batch even in eval mode.

    Such a network is transductive: its output for one input depends on the other inputs of its batch.
    """
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats for m in module.modules()
    )


def normalises_per_episode(module: nn.Module) -> bool:
    """Whether ``module`` must see one episode at a time (its moments come from that episode)."""
    return uses_batch_statistics(module) or bool(episode_norms(module))


@contextlib.contextmanager
def support_rows(module: nn.Module, n_support: int) -> Iterator[None]:
    """Within the block, ``module``'s episode norms take their moments from the first ``n_support`` rows."""
    layers = episode_norms(module)
    previous = [layer.support_rows for layer in layers]
    for layer in layers:
        layer.support_rows = n_support
    try:
        yield
    finally:
        for layer, rows in zip(layers, previous, strict=True):
            layer.support_rows = rows


def forward_queries(network: nn.Module, support_x: Tensor, query_x: Tensor) -> Tensor:
    """``network``'s outputs for ``query_x``, normalised with the support set's moments where it does so.

    A network with episode norms is called on support and query together (the support rows set the
    moments); any other is called on the queries alone.
    """
    if not episode_norms(network):
        return network(query_x)
    with support_rows(network, support_x.shape[0]):
        return network(torch.cat([support_x.to(query_x.dtype), query_x]))[support_x.shape[0] :]


def embed_jointly(backbone: nn.Module, support_x: Tensor, query_x: Tensor) -> tuple[Tensor, Tensor]:
    """Support and query embeddings ``(tasks, n_support, d)``, ``(tasks, n_queries, d)`` from one call.

    ``support_x (tasks, n_support, *example)``, ``query_x (tasks, n_queries, *example)``; episode norms take
    their moments from the support rows (of all ``tasks`` together: give one task where they must not mix).
    """
    (tasks, n_support), n_queries = support_x.shape[:2], query_x.shape[1]
    with support_rows(backbone, tasks * n_support):
        embeddings = backbone(torch.cat([support_x.flatten(0, 1).to(query_x.dtype), query_x.flatten(0, 1)]))
    support, query = embeddings.split([tasks * n_support, tasks * n_queries])
    return support.view(tasks, n_support, -1), query.view(tasks, n_queries, -1)
