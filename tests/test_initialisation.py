"""``init_from``: a meta-learner starts from the backbone of a finished run, found under any prefix."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from metaclinic.algorithms import ProtoNet
from metaclinic.baselines import SimpleShot
from metaclinic.errors import DataError
from metaclinic.models import Conv4

from .test_maml import make_maml, quiet_trainer


def finished_simpleshot_run(make_datamodule, directory: Path) -> tuple[Path, SimpleShot]:
    model = SimpleShot(Conv4((3, 28, 28), hidden=16))
    checkpoint = ModelCheckpoint(dirpath=directory, filename="last")
    quiet_trainer(max_steps=3, enable_checkpointing=True, callbacks=[checkpoint]).fit(
        model, datamodule=make_datamodule()
    )
    return directory / "last.ckpt", model


def test_meta_training_starts_from_the_pretrained_backbone(make_datamodule, tmp_path: Path):
    path, pretrained = finished_simpleshot_run(make_datamodule, tmp_path)
    frozen = functools.partial(torch.optim.SGD, lr=0.0)  # the fit leaves the weights where they started
    for model in (
        ProtoNet(Conv4((3, 28, 28), hidden=16), init_from=str(path), optimizer=frozen),
        make_maml(init_from=str(path), optimizer=frozen),  # its backbone is under learner.module.0.
    ):
        quiet_trainer(max_steps=1).fit(model, datamodule=make_datamodule())
        for name, value in pretrained.backbone.state_dict().items():
            assert torch.equal(model.backbone.state_dict()[name], value), name
    scratch = ProtoNet(Conv4((3, 28, 28), hidden=16))
    assert not torch.equal(scratch.backbone.features[0].weight, pretrained.backbone.features[0].weight)


def test_resuming_a_run_keeps_its_own_weights_not_the_initialisation(make_datamodule, tmp_path: Path):
    path, pretrained = finished_simpleshot_run(make_datamodule, tmp_path / "pretrained")
    run = ModelCheckpoint(dirpath=tmp_path / "run", filename="last")
    first = ProtoNet(Conv4((3, 28, 28), hidden=16), init_from=str(path))
    quiet_trainer(max_steps=3, enable_checkpointing=True, callbacks=[run]).fit(
        first, datamodule=make_datamodule()
    )
    resumed = ProtoNet(Conv4((3, 28, 28), hidden=16), init_from=str(path))
    trainer = quiet_trainer(
        max_steps=3, enable_checkpointing=True, callbacks=[ModelCheckpoint(tmp_path / "x")]
    )
    trainer.fit(resumed, datamodule=make_datamodule(), ckpt_path=str(tmp_path / "run/last.ckpt"))
    for name, value in first.backbone.state_dict().items():
        assert torch.equal(resumed.backbone.state_dict()[name], value), name
    assert not torch.equal(resumed.backbone.features[0].weight, pretrained.backbone.features[0].weight)


def test_a_backbone_of_another_shape_is_refused_with_the_differences(make_datamodule, tmp_path: Path):
    path, _ = finished_simpleshot_run(make_datamodule, tmp_path)
    model = ProtoNet(Conv4((3, 28, 28), hidden=8), init_from=str(path))
    with pytest.raises(DataError, match=r"does not fit this model's: features\.0\.weight: \(16, 3, 3, 3\)"):
        quiet_trainer(max_steps=1).fit(model, datamodule=make_datamodule())


def test_a_checkpoint_with_no_such_backbone_or_with_code_is_refused(tmp_path: Path):
    from metaclinic.algorithms.initialisation import load_backbone
    from metaclinic.experiment.storage import UnsafeCheckpointError

    torch.save({"state_dict": {"head.weight": torch.zeros(2, 2)}}, tmp_path / "other.ckpt")
    with pytest.raises(DataError, match="holds no backbone like this one"):
        load_backbone(Conv4((3, 28, 28), hidden=8), tmp_path / "other.ckpt")
    torch.save({"state_dict": {}, "code": functools.partial(print)}, tmp_path / "unsafe.ckpt")
    with pytest.raises(UnsafeCheckpointError):
        load_backbone(Conv4((3, 28, 28), hidden=8), tmp_path / "unsafe.ckpt")


def test_a_run_directory_gives_the_checkpoint_its_report_evaluated(make_datamodule, tmp_path: Path):
    from metaclinic.algorithms.initialisation import checkpoint_of, load_backbone

    path, pretrained = finished_simpleshot_run(make_datamodule, tmp_path / "ckpt")
    run = tmp_path / "runs/simpleshot/20261203-000000"
    (run / "checkpoints").mkdir(parents=True)
    path.rename(run / "checkpoints/best-step=3.ckpt")
    (run / "meta_test_report.json").write_text('{"checkpoint": "checkpoints/best-step=3.ckpt"}')
    assert (
        checkpoint_of(run)
        == checkpoint_of(tmp_path / "runs/simpleshot")
        == run / "checkpoints/best-step=3.ckpt"
    )
    backbone = Conv4((3, 28, 28), hidden=16)
    load_backbone(backbone, tmp_path / "runs/simpleshot")
    assert torch.equal(backbone.features[0].weight, pretrained.backbone.features[0].weight)
    with pytest.raises(DataError, match="a folder with no finished run"):
        checkpoint_of(tmp_path / "runs")
