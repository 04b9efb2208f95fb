"""``metaclinic.evaluate``: fixed episodes shared by every algorithm and run, shot curves, plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from .conftest import REPO


def test_the_meta_test_episodes_are_the_same_for_every_run_and_algorithm(make_datamodule):
    """Two data modules of one data config (as two algorithms or two runs get) draw identical episodes."""
    first, second = make_datamodule(seed=1), make_datamodule(seed=2)  # training seeds differ
    tasks = []
    for data in (first, second):
        data.setup()
        tasks.append(list(data.test_dataloader()))
    for a, b in zip(*tasks, strict=True):
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
        assert torch.equal(a.classes, b.classes)
    assert first.split_fingerprint == second.split_fingerprint


def test_a_shot_curve_keeps_each_episodes_classes(make_datamodule):
    data = make_datamodule()
    data.setup()
    at = {}
    for k in (1, 3):
        data.n_shot = k
        batch = next(iter(data.test_dataloader()))
        assert batch.support_x.shape[1] == 5 * k
        at[k] = batch.classes
    assert torch.equal(at[1], at[3])


def test_evaluate_writes_report_shot_curve_and_plots_beside_a_baseline(medmnist_root: Path, tmp_path: Path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    fit = [
        sys.executable, "-m", "metaclinic.fit", "--config", str(REPO / "configs/maml_medmnist.yaml"),
        f"--runs_dir={tmp_path}", f"--data.init_args.root={medmnist_root}", "--data.init_args.n_shot=2",
        "--data.init_args.n_query=4", "--data.init_args.meta_batches_per_epoch=10",
        "--data.init_args.val_episodes=8", "--data.init_args.test_episodes=30", "--trainer.max_steps=20",
        "--trainer.enable_progress_bar=false", "--model.init_args.backbone.init_args.hidden=8",
    ]  # fmt: skip
    simpleshot = [
        "--model=metaclinic.baselines.SimpleShot",
        "--run_name=simpleshot",
        "--trainer.logger=false",
    ]
    result = subprocess.run([*fit, *simpleshot], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    result = subprocess.run(fit, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Beside the baselines (same episodes)" in result.stdout  # the end of fit shows SimpleShot too
    (run,) = (tmp_path / "maml_medmnist").iterdir()
    fitted = json.loads((run / "meta_test_report.json").read_text())
    config = (run / "config.yaml").read_text()
    (checkpoint,) = run.glob("checkpoints/best-*.ckpt")
    evaluate = [
        sys.executable, "-m", "metaclinic.evaluate", "--config", str(run / "config.yaml"),
        "--ckpt_path", str(checkpoint), "--shots", "1", "2", "9",
    ]  # fmt: skip
    result = subprocess.run(evaluate, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "config.yaml").read_text() == config  # evaluating a run leaves its config as fit wrote it
    out = run / "evaluation"
    report = json.loads((out / "meta_test_report.json").read_text())
    assert report["metrics"]["accuracy"] == fitted["metrics"]["accuracy"]  # the end of fit reported the same
    curve = json.loads((out / "shot_curve.json").read_text())
    assert curve["2"]["metrics"]["accuracy"] == report["metrics"]["accuracy"]  # K=2 is the configured K
    assert curve["1"]["metrics"]["accuracy"]["mean"] < curve["2"]["metrics"]["accuracy"]["mean"]
    assert "fewer than 13 examples" in curve["9"]["error"]  # 12 test images per class: reported, not fatal
    assert sum(report["reliability"]["count"]) == 30 * 5 * 4  # every query of every episode
    for name in ("accuracy_vs_shots.png", "auroc_vs_shots.png", "reliability.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(run.glob("wandb/offline-run-*"))) == 2  # fit's run and evaluate's

    # The baseline beside it: found under the same runs_dir, scored at every K on the same episodes.
    (baseline_run,) = (tmp_path / "simpleshot").iterdir()
    baseline = json.loads((baseline_run / "meta_test_report.json").read_text())
    curves = json.loads((out / "baselines_shot_curves.json").read_text())
    no_learning = ["NearestCentroid (no learning)", "SupportLogisticRegression (no learning)"]
    (name,) = set(curves) - set(no_learning)
    baseline_curve = curves[name]
    assert baseline_curve["2"]["metrics"]["accuracy"] == baseline["metrics"]["accuracy"]
    assert baseline_curve["1"]["episode_index"] == curve["1"]["episode_index"]
    for key in ("split_fingerprint", "eval_seed"):
        assert baseline_curve["1"]["extra"][key] == curve["1"]["extra"][key]
    assert baseline_curve["1"]["extra"]["baseline"] and not curve["1"]["extra"]["baseline"]
    # The no-learning baselines were scored in this evaluation, at every K, on the same episodes.
    for reference in no_learning:
        assert curves[reference]["1"]["episode_index"] == curve["1"]["episode_index"]
        assert curves[reference]["1"]["extra"]["baseline"]
        assert "error" in curves[reference]["9"]
    table = (out / "baselines.md").read_text()
    assert name in table and "Δ" in table and "(this run)" in table
    # A second evaluation reuses the baseline's scored curve instead of scoring it again.
    cache = baseline_run / "evaluation" / "shot_curve.json"
    written = cache.stat().st_mtime_ns
    result = subprocess.run([*evaluate[:-3], "1", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert cache.stat().st_mtime_ns == written
    assert "Beside the baselines" in result.stdout
