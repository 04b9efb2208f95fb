"""Temperature scaling: fitted on meta-validation only, stored in the checkpoint, applied everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metaclinic.evaluation.calibration import fit_temperature

from .conftest import REPO, fit_in_process


def test_the_fitted_temperature_is_the_one_that_generated_the_labels():
    generator = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(20000, 5, generator=generator)
    labels = torch.multinomial((logits / 2.5).softmax(-1), 1, generator=generator).squeeze(1)
    temperature, before, after = fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.5, rel=0.05)
    assert after < before


@pytest.fixture(scope="module")
def calibrated_run(medmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("calibrated_runs")
    args = [
        "--config", str(REPO / "configs/maml_medmnist.yaml"), f"--runs_dir={runs}",
        "--model=metaclinic.algorithms.ProtoNet", "--model.init_args.backbone.init_args.hidden=8",
        f"--data.init_args.root={medmnist_root}", "--data.init_args.download=false",
        "--data.init_args.n_shot=2", "--data.init_args.n_query=4",
        "--data.init_args.meta_batches_per_epoch=5", "--data.init_args.val_episodes=6",
        "--data.init_args.test_episodes=6", "--trainer.max_steps=10",
    ]  # fmt: skip
    return fit_in_process(args)


def test_fit_calibrates_the_best_checkpoint_and_reports_ece_before_and_after(calibrated_run: Path):
    report = json.loads((calibrated_run / "meta_test_report.json").read_text())
    calibration = report["extra"]["calibration"]
    temperature = report["extra"]["temperature"]
    assert temperature == calibration["temperature"] != 1.0
    assert calibration["val_nll_after"] <= calibration["val_nll_before"]
    assert calibration["val_queries"] == 6 * 5 * 4  # every meta-validation query, no meta-test one
    (best,) = (calibrated_run / "checkpoints").glob("best-*.ckpt")
    state = torch.load(best, weights_only=True)["state_dict"]
    assert state["calibration_temperature"].item() == pytest.approx(temperature)
    assert "ece_uncalibrated" in report["metrics"] and report["reliability_uncalibrated"]["count"]
    # Scaling changes confidences, never predictions: the calibrated and uncalibrated bins hold the same
    # queries, each as often correct.
    assert sum(report["reliability"]["count"]) == sum(report["reliability_uncalibrated"]["count"])
    # The no-learning baselines are beside it, uncalibrated (they learn nothing, temperature 1).
    assert set(report["references"]) == {"NearestCentroid", "SupportLogisticRegression"}
    for reference in report["references"].values():
        assert reference["episode_index"] == report["episode_index"]
        assert reference["extra"]["temperature"] == 1.0 and not reference["extra"]["transductive"]
    assert not report["extra"]["transductive"]
    assert "NearestCentroid (no learning)" in (calibrated_run / "baselines.md").read_text()


def test_a_checkpoint_from_before_calibration_loads_as_uncalibrated():
    from metaclinic.algorithms import ProtoNet
    from metaclinic.models import MLP

    model = ProtoNet(MLP((4,), hidden=8))
    model.calibration_temperature.fill_(3.0)
    state = {k: v for k, v in model.state_dict().items() if k != "calibration_temperature"}
    model.load_state_dict(state)  # strict: nothing missing
    assert model.calibration_temperature.item() == 1.0
