"""Meta-training augmentation: per-image random transforms, a function of the episode, never in evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metaclinic.data import TableEpisodes, TableSpec
from metaclinic.errors import DataError
from metaclinic.models.augmentation import ImageAugmentation

from .test_maml import make_maml, quiet_trainer


def images(tasks: int = 2, n: int = 6, channels: int = 3) -> torch.Tensor:
    return torch.rand(tasks, n, channels, 28, 28, generator=torch.Generator().manual_seed(0))


def test_augmentation_is_a_function_of_seed_and_episode_and_differs_per_image():
    augment, x = ImageAugmentation(), images()
    first = augment(x, seed=0, episodes=torch.tensor([3, 4]))
    again = augment(x, seed=0, episodes=torch.tensor([3, 4]))
    assert torch.equal(first, again)
    assert first.shape == x.shape and first.min() >= 0 and first.max() <= 1
    assert not torch.allclose(first, x, atol=1e-3)
    # Episode 4's images do not depend on which episode came before it in the meta-batch.
    alone = augment(x[1:], seed=0, episodes=torch.tensor([4]))
    assert torch.equal(alone[0], first[1])
    assert not torch.equal(augment(x, seed=1, episodes=torch.tensor([3, 4])), first)
    # Two identical images of one episode get different crops (a batched v2 call would give the same one).
    same = x[:1, :1].expand(1, 2, 3, 28, 28).contiguous()
    out = augment(same, seed=0, episodes=torch.tensor([0]))
    assert not torch.equal(out[0, 0], out[0, 1])


def test_augmentation_leaves_the_global_random_state_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    ImageAugmentation()(images(), seed=0, episodes=torch.tensor([0, 1]))
    assert torch.equal(torch.rand(3), expected)


def test_grayscale_images_get_brightness_and_contrast_only():
    out = ImageAugmentation(saturation=0.5, hue=0.2)(
        images(channels=1), seed=0, episodes=torch.tensor([0, 1])
    )
    assert out.shape == (2, 6, 1, 28, 28)


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"crop_scale": (0.9, 0.5)}, "crop_scale"),
        ({"brightness": -0.1}, "brightness"),
        ({"hue": 0.7}, "hue"),
    ],
)
def test_bad_settings_name_the_field(settings, field):
    with pytest.raises(DataError, match=f"augmentation.{field}"):
        ImageAugmentation(**settings)


def test_the_data_module_augments_meta_training_only(make_datamodule):
    seen: dict[str, list[torch.Tensor]] = {"train": [], "val": []}

    class Recorder(type(make_maml())):
        def training_step(self, batch, batch_idx):
            seen["train"].append(batch.support_x.clone())
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            seen["val"].append(batch.support_x.clone())
            return super().validation_step(batch, batch_idx)

    def run(augmentation):
        for record in seen.values():
            record.clear()
        data = make_datamodule(meta_batches_per_epoch=2, augmentation=augmentation)
        model = make_maml()
        model.__class__ = Recorder
        quiet_trainer(max_steps=2, limit_val_batches=1).fit(model, datamodule=data)
        return [x for x in seen["train"]], [x for x in seen["val"]]

    plain_train, plain_val = run(None)
    augmented_train, augmented_val = run(ImageAugmentation())
    assert all(torch.equal(a, b) for a, b in zip(plain_val, augmented_val, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(plain_train, augmented_train, strict=True))


def test_augmenting_tables_is_refused_at_setup(tmp_path: Path):
    (tmp_path / "t.csv").write_text("id,value,label\n1,1.5,a\n2,2.5,b\n3,0.5,a\n4,4,b\n")
    spec = TableSpec(path="t.csv", label_column="label", patient_column="id")
    data = TableEpisodes(
        spec,
        ["a", "b"],
        [],
        [],
        root=str(tmp_path),
        n_way=2,
        n_shot=1,
        n_query=1,
        augmentation=ImageAugmentation(),
    )
    with pytest.raises(DataError, match=r"data\.augmentation transforms images"):
        data.setup("fit")
