"""``metaclinic.tune``: a grid of settings scored on meta-validation only; meta-test is never drawn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaclinic import tune
from metaclinic.data.datamodule import EpisodicDataModule
from metaclinic.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def test_every_trial_is_scored_on_meta_validation_and_the_best_kept(
    medmnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def no_meta_test(self):
        raise AssertionError("a tuning trial drew meta-test episodes")

    monkeypatch.setattr(EpisodicDataModule, "test_dataloader", no_meta_test)
    monkeypatch.setattr("sys.argv", ["metaclinic.tune"])
    grid = tmp_path / "grid.yaml"
    # A learning rate of zero cannot learn: the tuner must prefer the other one.
    grid.write_text("model.init_args.optimizer.init_args.lr: [0.0, 0.003]\n")
    fit_args = [
        f"--data.init_args.root={medmnist_root}", "--data.init_args.n_shot=2", "--data.init_args.n_query=4",
        "--data.init_args.meta_batches_per_epoch=10", "--data.init_args.val_episodes=12",
        "--trainer.max_steps=10", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--model.init_args.backbone.init_args.hidden=8",
    ]  # fmt: skip
    summary = tune.run(REPO / "configs/protonet_medmnist.yaml", grid, "proto", tmp_path / "runs", fit_args)
    assert [t["settings"] for t in summary["trials"]] == [
        {"model.init_args.optimizer.init_args.lr": 0.0},
        {"model.init_args.optimizer.init_args.lr": 0.003},
    ]
    frozen, learning = summary["trials"]
    assert learning["val_accuracy"] > frozen["val_accuracy"] + 0.05
    assert summary["best"] == learning
    assert (
        json.loads((tmp_path / "runs/proto_tuning.json").read_text())["best"]["val_accuracy"]
        == learning["val_accuracy"]
    )
    for trial in summary["trials"]:
        run_dir = Path(trial["run_dir"])
        assert Path(trial["checkpoint"]).is_file() and not (run_dir / "meta_test_report.json").exists()


def test_a_grid_that_is_not_lists_of_values_is_refused(tmp_path: Path):
    (tmp_path / "grid.yaml").write_text("model.init_args.inner_lr: 0.1\n")
    with pytest.raises(DataError, match="inner_lr should list the values to try"):
        tune.read_grid(tmp_path / "grid.yaml")
