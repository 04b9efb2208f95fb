"""Self-supervised learning on unlabelled images of the target domain, beside supervised pretraining.

A hospital adapting to a new task usually holds many unlabelled cases of it. STARTUP (Phoo and Hariharan,
"Self-training for Few-shot Transfer Across Extreme Task Differences", ICLR 2021) adapts the backbone to
such images with a contrastive loss beside the base-class cross-entropy; its contrastive part is SimCLR
(Chen, Kornblith, Norouzi and Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020): two random views of every unlabelled image, a projection head, and the
NT-Xent loss that makes each view pick out its partner among all the others. That contrastive part is what
this module adds (STARTUP's self-training of the teacher's soft labels is left out). The images come from
``batch.unlabelled_x`` (``data.unlabelled``), never from the meta-test episodes, and results that use them
are a setting of their own ("with unlabelled target images"), not few-shot results.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaclinic.models.augmentation import ImageAugmentation

# SimCLR's augmentations, at the strength the paper found necessary (crops and strong colour distortion).
STRONG_AUGMENTATION = dict(
    crop_scale=(0.3, 1.0), vertical_flip=True, brightness=0.4, contrast=0.4, saturation=0.4
)


def nt_xent(first: Tensor, second: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent loss of two views ``(n, d)``: each row must find its partner among 2n - 1 others."""
    z = F.normalize(torch.cat([first, second]), dim=-1)
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    n = len(first)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(similarity, partner)


class ContrastiveObjective(nn.Module):
    """A projection head and the NT-Xent loss of two seeded random views of unlabelled images.

    Args:
        in_features: the backbone's embedding size.
        projection: width of the projection head's output (SimCLR: 128).
        temperature: NT-Xent temperature (SimCLR: 0.5 at small batch sizes).
        augmentation: how the two views are drawn (default: SimCLR-strength crops, flips, colour jitter).
    """

    def __init__(
        self,
        in_features: int,
        projection: int = 128,
        temperature: float = 0.5,
        augmentation: ImageAugmentation | None = None,
    ) -> None:
        super().__init__()
        self.head = nn.Sequential(
            nn.Linear(in_features, in_features), nn.ReLU(), nn.Linear(in_features, projection)
        )
        self.temperature = temperature
        self.augmentation = augmentation or ImageAugmentation(**STRONG_AUGMENTATION)

    def forward(self, backbone: nn.Module, images: Tensor, seed: int) -> Tensor:
        """The loss of ``images (n, C, H, W)``; the views are a function of ``seed`` (the meta-batch)."""
        views = self.augmentation(images.unsqueeze(0).expand(2, *images.shape), seed, torch.tensor([0, 1]))
        embeddings = self.head(backbone(views.flatten(0, 1)))
        return nt_xent(*embeddings.split(len(images)), self.temperature)
