"""Unlabelled target-domain images: served seeded with training meta-batches only, never meta-test images,
and a contrastive objective (SimCLR's NT-Xent) that pulls an image's two views together."""

from __future__ import annotations

import pytest
import torch

from metaclinic.baselines import SimpleShot
from metaclinic.baselines.self_supervised import ContrastiveObjective, nt_xent
from metaclinic.errors import DataError
from metaclinic.models import Conv4

from .test_maml import quiet_trainer


def test_nt_xent_is_low_when_each_view_matches_its_partner_and_high_otherwise():
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(16, 8, generator=generator)
    matched = nt_xent(first, first + 0.01 * torch.randn(16, 8, generator=generator), temperature=0.5)
    shuffled = nt_xent(first, first[torch.randperm(16, generator=generator)], temperature=0.5)
    assert matched < shuffled - 1.0
    # The floor: with 2n - 2 negatives at similarity <= 1, the loss cannot go below this for unit vectors.
    assert matched > 0


def test_the_objective_trains_the_backbone_to_recognise_its_own_views():
    torch.manual_seed(0)
    backbone = Conv4((3, 28, 28), hidden=8)
    objective = ContrastiveObjective(backbone.out_features, projection=16)
    optimizer = torch.optim.Adam([*backbone.parameters(), *objective.parameters()], lr=3e-3)
    # Distinct smooth colour patterns (4x4 cells), which crops and jitter leave recognisable.
    patterns = torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    images = patterns.repeat_interleave(7, 2).repeat_interleave(7, 3)
    losses = []
    # 160 steps: the loss of each step's random views is noisy, and after 80 steps the drop was 0.32 with one
    # thread and 0.28 with two (the rounding differs); after 160 it is 0.6 with either.
    for step in range(160):
        loss = objective(backbone, images, seed=step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < sum(losses[:5]) / 5 - 0.3, losses


def test_unlabelled_images_come_with_training_batches_only_and_seeded(make_datamodule):
    seen: list[torch.Tensor | None] = []

    class Recorder(SimpleShot):
        def training_step(self, batch, batch_idx):
            seen.append(batch.unlabelled_x)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            assert batch.unlabelled_x is None
            return super().validation_step(batch, batch_idx)

    def run() -> list[torch.Tensor]:
        seen.clear()
        data = make_datamodule(
            unlabelled=["bloodmnist:3-7"], unlabelled_batch_size=6, meta_batches_per_epoch=2
        )
        model = Recorder(Conv4((3, 28, 28), hidden=8), unlabelled_weight=1.0)
        quiet_trainer(max_steps=2, limit_val_batches=1).fit(model, datamodule=data)
        return list(seen)

    first, second = run(), run()
    assert [x.shape for x in first] == [(6, 3, 28, 28)] * 2
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[1])


def test_unlabelled_images_of_a_meta_test_image_split_are_refused(make_datamodule):
    with pytest.raises(DataError, match=r"bloodmnist:3 images of the 'test' split are also meta_test images"):
        make_datamodule(unlabelled=["bloodmnist:3-7"], unlabelled_image_splits=["test"])
    data = make_datamodule(unlabelled_batch_size=4)
    with pytest.raises(DataError, match="has no unlabelled examples"):
        data.setup("fit")
    unused = make_datamodule(unlabelled=["bloodmnist:3-7"])
    with pytest.raises(DataError, match=r"data\.unlabelled_batch_size is 0, so none would be served"):
        unused.setup("fit")


def test_a_contrastive_weight_without_unlabelled_images_says_what_to_set(make_datamodule):
    model = SimpleShot(Conv4((3, 28, 28), hidden=8), unlabelled_weight=1.0)
    with pytest.raises(DataError, match=r"set data\.unlabelled and data\.unlabelled_batch_size"):
        quiet_trainer(max_steps=1).fit(model, datamodule=make_datamodule())
