"""Batch norm on batch statistics: what makes a network's outputs depend on the other inputs of its batch."""

from __future__ import annotations

from torch import nn


def uses_batch_statistics(module: nn.Module) -> bool:
    """Whether some batch norm layer of ``module`` normalises with the current batch even in eval mode."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats for m in module.modules()
    )
