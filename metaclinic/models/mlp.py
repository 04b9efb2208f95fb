"""A multilayer perceptron backbone for tabular patient features."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from metaclinic.models.normalization import make_norm

Normalization = Literal["none", "layer", "support", "transductive", "running"]


class MLP(nn.Module):
    """``depth`` blocks of linear, normalisation, ReLU and dropout, mapping a feature vector to an embedding.

    Layer norm is the default: it normalises each patient on its own, so a 1-shot support set of two
    patients is as well defined as a large batch. The batch norms are those of
    :mod:`metaclinic.models.normalization`: ``support`` (moments of the episode's support set),
    ``transductive`` (the current batch's) and ``running`` (running averages in eval mode).

    Args:
        input_shape: ``(features,)``; the command line fills it in from the data's preprocessing.
        hidden: width of every hidden layer, and of the embedding (``out_features``).
        depth: number of hidden blocks (at least 1).
        dropout: dropout probability after every block (0 disables it; it also perturbs inner loops).
        norm: ``"layer"``, ``"support"``, ``"transductive"``, ``"running"`` or ``"none"``.
    """

    def __init__(
        self,
        input_shape: tuple[int] = (16,),
        hidden: int = 64,
        depth: int = 2,
        dropout: float = 0.0,
        norm: Normalization = "layer",
    ) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(f"MLP takes feature vectors (features,), got input_shape={input_shape}")
        if depth < 1 or hidden < 1:
            raise ValueError(f"MLP needs depth >= 1 and hidden >= 1, got depth={depth}, hidden={hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        width = input_shape[0]
        for _ in range(depth):
            layers.append(nn.Linear(width, hidden))
            if norm == "layer":
                layers.append(nn.LayerNorm(hidden))
            elif norm in ("support", "transductive", "running"):
                layers.append(make_norm(norm, hidden, dims=1))
            elif norm != "none":
                raise ValueError(
                    f"MLP norm must be 'layer', 'support', 'transductive', 'running' or 'none', got {norm!r}"
                )
            layers.append(nn.ReLU(inplace=True))
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = hidden
        self.input_shape = tuple(input_shape)
        self.layers = nn.Sequential(*layers)
        self.out_features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, features)`` -> ``(batch, hidden)``."""
        return self.layers(x)
