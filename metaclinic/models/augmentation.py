"""Augmentation of meta-training images, seeded by the episode so that a resumed run sees the same images.

Few-shot learners overfit their few meta-training classes quickly (on the quickstart split meta-validation
peaks after about 100 of 600 meta-batches); random crops, flips and colour changes of the support and query
images are the standard remedy (e.g. Chen et al., "Meta-Baseline", ICCV 2021; Hu et al., "P>M>F", CVPR
2022). The transforms are torchvision's ``transforms.v2``. Each image gets its own random parameters (a v2
transform called on a batch would give every image of the batch the same crop), drawn from a generator
seeded by ``(seed, episode index)``: the augmented episode is a pure function of its index, as the episode
itself is, so resumption and several processes see exactly the images of one uninterrupted run.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms import v2

from metaclinic.errors import DataError


class ImageAugmentation:
    """Random resized crop, flips and colour jitter of every support and query image of meta-training.

    Images are floats in ``[0, 1]``, ``(n, channels, height, width)``; the crop is resized back to the
    input size. Validation and test images are never augmented (the data module applies this in training
    only). Colour jitter on single-channel images changes brightness and contrast only.

    Args:
        crop_scale: range of the crop's area as a fraction of the image (``(1, 1)``: no crop).
        crop_ratio: range of the crop's aspect ratio.
        horizontal_flip: flip left-right with probability 0.5.
        vertical_flip: flip top-bottom with probability 0.5 (right for cells and tissue, not for organs
            whose orientation is anatomical).
        brightness: colour jitter strength, as in ``torchvision.transforms.v2.ColorJitter``.
        contrast: as ``brightness``.
        saturation: as ``brightness``.
        hue: hue shift in ``[0, 0.5]``.
    """

    def __init__(
        self,
        crop_scale: tuple[float, float] = (0.6, 1.0),
        crop_ratio: tuple[float, float] = (0.75, 4 / 3),
        horizontal_flip: bool = True,
        vertical_flip: bool = False,
        brightness: float = 0.1,
        contrast: float = 0.1,
        saturation: float = 0.1,
        hue: float = 0.0,
    ) -> None:
        low, high = crop_scale
        if not 0 < low <= high <= 1:
            raise DataError(f"augmentation.crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
        for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if value < 0:
                raise DataError(f"augmentation.{name} must be at least 0, got {value}")
        if not 0 <= hue <= 0.5:
            raise DataError(f"augmentation.hue must be in [0, 0.5], got {hue}")
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        self.horizontal_flip, self.vertical_flip = horizontal_flip, vertical_flip
        self.jitter = (brightness, contrast, saturation, hue)

    def transform(self, size: tuple[int, int], channels: int) -> v2.Transform:
        """The v2 pipeline for one ``channels``-channel image of ``size`` pixels."""
        steps: list[v2.Transform] = []
        if self.crop_scale != (1.0, 1.0):
            steps.append(v2.RandomResizedCrop(size, scale=self.crop_scale, ratio=self.crop_ratio))
        if self.horizontal_flip:
            steps.append(v2.RandomHorizontalFlip())
        if self.vertical_flip:
            steps.append(v2.RandomVerticalFlip())
        brightness, contrast, saturation, hue = self.jitter
        if channels != 3:
            saturation, hue = 0.0, 0.0  # defined for RGB only
        if brightness or contrast or saturation or hue:
            steps.append(v2.ColorJitter(brightness, contrast, saturation, hue))
        return v2.Compose(steps)

    def __call__(self, images: Tensor, seed: int, episodes: Tensor) -> Tensor:
        """Augments ``images (tasks, n, C, H, W)``, episode ``episodes[t]`` with its own seeded draws."""
        if images.dim() != 5:
            raise DataError(
                f"image augmentation needs image episodes (tasks, n, channels, height, width); got "
                f"examples of shape {tuple(images.shape[2:])}: remove data.augmentation for this data"
            )
        transform = self.transform(tuple(images.shape[-2:]), images.shape[2])
        augmented = torch.empty_like(images)
        # torchvision draws its parameters from torch's global generator: a forked one, seeded per episode.
        with torch.random.fork_rng(devices=[]):
            for t, episode in enumerate(episodes.tolist()):
                torch.manual_seed(int(np.random.SeedSequence([seed, episode]).generate_state(1)[0]))
                for i, image in enumerate(images[t]):
                    augmented[t, i] = transform(image).clamp_(0, 1)
        return augmented
