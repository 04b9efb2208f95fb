"""A run stopped mid-training and resumed from its checkpoint ends exactly where an uninterrupted run does.

The runs augment their images (crops, flips, jitter): augmentation is seeded by the episode, so a resumed
run must see the very images the uninterrupted one saw.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from metaclinic.errors import DataError
from metaclinic.models.augmentation import ImageAugmentation

from .test_maml import make_maml, quiet_trainer


class CrashAt(Callback):
    """Raises as training step ``step + 1`` starts: on disk, the same as a SIGKILL during that step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def train(make_datamodule, ckpt_dir: Path, crash_at: int | None = None, ckpt_path: str | None = None):
    seed_everything(0)
    data = make_datamodule(meta_batches_per_epoch=6, augmentation=ImageAugmentation(vertical_flip=True))
    model = make_maml()
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=5, save_last=True, save_top_k=-1)
    callbacks = [checkpoint] + ([CrashAt(crash_at)] if crash_at is not None else [])
    trainer = quiet_trainer(max_steps=16, limit_val_batches=2, callbacks=callbacks, enable_checkpointing=True)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(make_datamodule, tmp_path: Path):
    reference = train(make_datamodule, tmp_path / "reference")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_datamodule, tmp_path / "crashed", crash_at=13)  # last checkpoint: step 10, mid-epoch 1
    resumed = train(make_datamodule, tmp_path / "crashed", ckpt_path=str(tmp_path / "crashed/last.ckpt"))
    expected, actual = reference.state_dict(), resumed.state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_resuming_onto_another_class_split_is_refused(make_datamodule, tmp_path: Path):
    train(make_datamodule, tmp_path, crash_at=None)
    seed_everything(0)
    other = make_datamodule(meta_batches_per_epoch=6, meta_train=["organamnist:0-4", "bloodmnist:0-2"])
    trainer = quiet_trainer(max_steps=20, enable_checkpointing=False)
    with pytest.raises(DataError, match="different data split"):
        trainer.fit(make_maml(), datamodule=other, ckpt_path=str(tmp_path / "last.ckpt"))
