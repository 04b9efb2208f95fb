"""Backbone building blocks: the fast CPU max-pool is nn.MaxPool2d in everything but speed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaclinic.models.max_pool import MaxPool2d


def pool_and_gradients(pool: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> list[torch.Tensor]:
    """Output, gradient and a second-order gradient (as in MAML) of conv -> batch norm -> ReLU -> pool."""
    hidden = F.relu(F.batch_norm(F.conv2d(x, weight, padding=1), None, None, training=True))
    out = pool(hidden)
    loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
    (grad,) = torch.autograd.grad(loss, weight, create_graph=True)
    (second,) = torch.autograd.grad(grad.pow(2).sum(), weight)
    return [out, grad, second]


POOLS = [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, ceil_mode=True)]


@pytest.mark.parametrize("options", POOLS)
def test_max_pool_gives_torch_outputs_and_gradients_to_second_order(options: dict):
    torch.manual_seed(0)
    x, weight = torch.randn(6, 3, 7, 9), torch.randn(4, 3, 3, 3, requires_grad=True)
    ours = pool_and_gradients(MaxPool2d(**options), x, weight)
    theirs = pool_and_gradients(nn.MaxPool2d(**options), x, weight)
    assert ours[0].shape == theirs[0].shape
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference, rtol=0, atol=0)  # the same maxima: bit for bit


def test_max_pool_takes_the_gather_path_only_for_nchw_cpu_tensors():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    assert type(MaxPool2d(2)(x).grad_fn.next_functions[0][0]).__name__ == "GatherBackward0"
    channels_last = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert type(MaxPool2d(2)(channels_last).grad_fn).__name__ == "MaxPool2DWithIndicesBackward0"
    compiled = torch.compile(MaxPool2d(2), backend="eager")  # the compiler's own max-pool, not the gather
    assert type(compiled(x).grad_fn).__name__ == "MaxPool2DWithIndicesBackward0"
    _, index = MaxPool2d(2, return_indices=True)(x)
    torch.testing.assert_close(index, F.max_pool2d(x, 2, return_indices=True)[1])
