"""Max pooling that finds the maxima with PyTorch's fast CPU kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with the same outputs and gradients, faster on CPU for the usual NCHW layout.

    PyTorch's CPU max-pool kernel for NCHW tensors is about 5x slower than its channels-last kernel (18 ms
    against 3.7 ms, conversion included, for Conv-4's first pool of 75 images of 64x28x28, 2 threads), and
    it was 16% of a second-order MAML step. On CPU this module lets the channels-last kernel find where
    the maxima are, without autograd, and picks them out of the NCHW input with ``gather``, so autograd
    (including MAML's second order) differentiates a gather, never a channels-last tensor: converting the
    whole pool to channels-last made the ReLU's backward 4x slower and the step slower overall. A Conv-4
    MAML meta-batch measured 1.02x to 1.15x faster (second order, three micro-benchmarks) and 1.21x (first
    order), with the same meta-gradient. Elsewhere (GPU, under ``torch.compile``, channels-last input,
    ``return_indices``) it is ``nn.MaxPool2d``.

    Among tied maxima the two kernels may pick different positions, which changes which input receives
    the gradient; after a ReLU ties are zeros, whose gradient the ReLU blocks either way.
    """

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.device.type != "cpu"
            or torch.compiler.is_compiling()  # the compiler generates its own max-pool kernel
            or x.dim() != 4
            or self.return_indices
            or x.is_contiguous(memory_format=torch.channels_last)
        ):
            return super().forward(x)
        with torch.no_grad():
            _, index = F.max_pool2d(
                x.contiguous(memory_format=torch.channels_last),
                self.kernel_size,
                self.stride,
                self.padding,
                self.dilation,
                ceil_mode=self.ceil_mode,
                return_indices=True,
            )
        index = index.contiguous()
        return x.flatten(2).gather(2, index.flatten(2)).view(index.shape)
