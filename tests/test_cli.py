"""The command line: every config parses, typos fail naming the key, and a run ends with its report."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metaclinic.cli import MetaClinicCLI
from metaclinic.data.synthetic import write_synthetic_heart_disease
from metaclinic.fit import run

from .conftest import REPO, fit_in_process

# Federated configs name a fit config instead of being one (tests/test_federated.py reads them).
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("federated_"))


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when sys.argv (pytest's here) and args are both given."""
    monkeypatch.setattr(sys, "argv", ["metaclinic.fit"])


def parse(capsys: pytest.CaptureFixture, *args: str) -> str:
    """Runs the parser only (``--print_config``) and returns what it printed."""
    with pytest.raises(SystemExit) as exit_info:
        MetaClinicCLI(args=[*args, "--print_config"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(config: Path, capsys: pytest.CaptureFixture):
    printed = parse(capsys, "--config", str(config))
    assert re.search(r"class_path: metaclinic\.(algorithms|baselines)\.", printed)
    assert "class_path: metaclinic.data." in printed
    assert "input_shape:" not in config.read_text()  # linked from the data, never written by hand


def test_dotted_overrides_reach_the_config(capsys: pytest.CaptureFixture):
    printed = parse(
        capsys,
        "--config",
        str(REPO / "configs/quickstart.yaml"),
        "--trainer.max_steps=7",
        "--data.init_args.n_shot=3",
    )
    assert "max_steps: 7" in printed and "n_shot: 3" in printed


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--trainer.max_stepz=5"], "max_stepz"),
        (["--data.init_args.n_shots=5"], "n_shots"),
        (["--model.init_args.inner_lrr=0.1"], "inner_lrr"),
    ],
)
def test_a_typo_fails_at_once_naming_the_key(args: list[str], key: str, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as exit_info:
        MetaClinicCLI(args=["--config", str(REPO / "configs/quickstart.yaml"), *args])
    assert exit_info.value.code != 0
    assert key in capsys.readouterr().err


def test_a_typo_inside_a_yaml_file_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture):
    text = (REPO / "configs/quickstart.yaml").read_text().replace("    n_query: 10", "    n_querry: 10")
    (tmp_path / "typo.yaml").write_text(text)
    with pytest.raises(SystemExit):
        MetaClinicCLI(args=["--config", str(tmp_path / "typo.yaml")])
    assert "n_querry" in capsys.readouterr().err


# The MAML config: the command-line tests check MAML's runs (the quickstart is Reptile).
MAML_CONFIG = REPO / "configs/maml_medmnist.yaml"


def fit_args(medmnist_root: Path, runs: Path, *extra: str, config: Path = MAML_CONFIG):
    """Arguments of a short fit of ``config`` on the synthetic MedMNIST files."""
    return [
        "--config",
        str(config),
        f"--runs_dir={runs}",
        f"--data.init_args.root={medmnist_root}",
        "--data.init_args.download=false",
        "--data.init_args.n_shot=2",
        "--data.init_args.n_query=4",
        "--data.init_args.meta_batches_per_epoch=30",
        "--data.init_args.val_episodes=16",
        "--data.init_args.test_episodes=60",
        "--trainer.max_steps=60",
        "--trainer.enable_progress_bar=false",
        "--model.init_args.backbone.init_args.hidden=16",
        "--model.init_args.optimizer.init_args.lr=0.003",
        *extra,
    ]


def run_fit(
    medmnist_root: Path, runs: Path, *extra: str, config: Path = MAML_CONFIG
) -> subprocess.CompletedProcess:
    """The real command line in a fresh process (what a user runs)."""
    args = [sys.executable, "-m", "metaclinic.fit", *fit_args(medmnist_root, runs, *extra, config=config)]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


def test_fit_end_to_end_writes_checkpoints_config_and_report(medmnist_root: Path, tmp_path: Path):
    result = run_fit(medmnist_root, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "maml_medmnist").iterdir()
    report = json.loads((run_dir / "meta_test_report.json").read_text())
    assert (report["algorithm"], report["n_way"], report["n_shot"], report["episodes"]) == ("MAML", 5, 2, 60)
    accuracy = report["metrics"]["accuracy"]
    assert accuracy["n"] == 60 and 0 < accuracy["ci95"] < 0.1
    assert accuracy["mean"] - accuracy["ci95"] > 0.6, accuracy  # chance is 0.2
    assert report["checkpoint"].startswith("checkpoints/best-step=")
    assert (run_dir / report["checkpoint"]).is_file() and (run_dir / "checkpoints/last.ckpt").is_file()
    assert "n_shot: 2" in (run_dir / "config.yaml").read_text()
    assert list((run_dir / "wandb").glob("offline-run-*"))
    assert "Meta-test: MAML, 5-way 2-shot, 60 episodes" in result.stdout


def test_missing_data_fails_with_the_expected_files(tmp_path: Path):
    result = run_fit(tmp_path / "empty", tmp_path / "runs")
    assert result.returncode != 0
    assert "bloodmnist.npz" in result.stderr and "organamnist.npz" in result.stderr
    assert "zenodo.org/records/10519652" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("config", sorted(REPO.glob("configs/*_medmnist.yaml")), ids=lambda p: p.stem)
def test_every_algorithm_config_trains_and_reports(config: Path, medmnist_root: Path, tmp_path: Path):
    # In this process (the command line itself is tested above): saves an interpreter start per config.
    short = ["--trainer.max_steps=3", "--data.init_args.meta_batches_per_epoch=3",
             "--data.init_args.test_episodes=8", "--model.init_args.backbone.init_args.hidden=8"]  # fmt: skip
    run_dir = fit_in_process(fit_args(medmnist_root, tmp_path, *short, config=config))
    report = json.loads((run_dir / "meta_test_report.json").read_text())
    assert report["episodes"] == 8
    assert re.search(
        rf"class_path: metaclinic\.(algorithms|baselines)\.{report['algorithm']}\n", config.read_text()
    )


def test_ckpt_path_last_resumes_the_newest_run_in_its_directory(
    medmnist_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    # In this process: the command line itself is tested above; the first run's last.ckpt is its step 50.
    short = ["--data.init_args.test_episodes=8", "--data.init_args.val_episodes=4"]
    run_dir = fit_in_process(fit_args(medmnist_root, tmp_path, *short, "--trainer.max_steps=50"))
    with caplog.at_level(logging.INFO):
        resumed = fit_in_process(
            fit_args(medmnist_root, tmp_path, *short, "--trainer.max_steps=52", "--ckpt_path=last")
        )
    assert resumed == run_dir and [p.name for p in run_dir.parent.iterdir()] == [run_dir.name]
    assert f"Restoring states from the checkpoint path at {run_dir / 'checkpoints/last.ckpt'}" in caplog.text
    report = json.loads((run_dir / "meta_test_report.json").read_text())
    assert report["algorithm"] == "MAML" and report["episodes"] == 8


def test_fitting_twice_in_one_process_makes_two_runs(medmnist_root: Path, tmp_path: Path, monkeypatch):
    # A notebook fits several models in one kernel: each gets a run directory of its own.
    monkeypatch.setattr(sys, "argv", ["metaclinic.fit"])
    short = ["--trainer.max_steps=2", "--data.init_args.test_episodes=4", "--trainer.logger=false"]
    args = fit_args(medmnist_root, tmp_path, *short)
    run(args)
    run([*args, "--model=metaclinic.algorithms.ProtoNet"])
    reports = [
        json.loads(p.read_text()) for p in sorted(tmp_path.glob("maml_medmnist/*/meta_test_report.json"))
    ]
    assert sorted(r["algorithm"] for r in reports) == ["MAML", "ProtoNet"]


def test_a_run_config_starts_a_new_run_with_the_same_settings(medmnist_root: Path, tmp_path: Path):
    short = ["--trainer.max_steps=2", "--data.init_args.test_episodes=4", "--trainer.val_check_interval=2"]
    first = fit_in_process(fit_args(medmnist_root, tmp_path, *short))
    config = (first / "config.yaml").read_text()
    checkpoints = sorted(p.name for p in (first / "checkpoints").iterdir())
    assert str(first) not in config  # settings, not this run's own directory
    second = fit_in_process(["--config", str(first / "config.yaml")])
    assert second != first and second.parent == first.parent  # same run name, a run directory of its own
    assert (second / "config.yaml").read_text() == config
    assert sorted(p.name for p in (second / "checkpoints").iterdir()) == checkpoints
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == checkpoints  # nothing written there
    first_report = json.loads((first / "meta_test_report.json").read_text())
    assert json.loads((second / "meta_test_report.json").read_text())["metrics"] == first_report["metrics"]


@pytest.mark.parametrize(
    "model",
    [
        "metaclinic.algorithms.MAML",
        "metaclinic.algorithms.ProtoNet",
        "metaclinic.baselines.PooledLogisticRegression",
    ],
)
def test_heart_disease_config_runs_on_generated_hospitals(model: str, tmp_path: Path):
    write_synthetic_heart_disease(tmp_path / "data" / "uci_heart_disease", patients=60)
    args = [
        sys.executable, "-m", "metaclinic.fit", "--config", str(REPO / "configs/heart_disease_loho.yaml"),
        f"--model={model}", f"--runs_dir={tmp_path / 'runs'}", "--trainer.logger=false",
        "--trainer.max_steps=20", "--trainer.enable_progress_bar=false", "--data.init_args.test_episodes=40",
    ]  # fmt: skip
    env = {**os.environ, "METACLINIC_DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (report_file,) = (tmp_path / "runs" / "heart_disease_loho").glob("*/meta_test_report.json")
    report = json.loads(report_file.read_text())
    assert report["algorithm"] == model.rsplit(".", 1)[1] and (report["n_way"], report["n_shot"]) == (2, 5)
    assert {"accuracy", "auroc", "sensitivity", "specificity"} <= set(report["metrics"])
    assert report["episodes"] == 40
    assert report["extra"]["split_fingerprint"] and 0 <= report["metrics"]["auroc"]["mean"] <= 1
    if model.endswith("PooledLogisticRegression"):  # learning itself is tested in test_table.py
        assert report["metrics"]["auroc"]["mean"] > 0.65  # the generated diagnosis is learnable
    else:  # no validation: the report is of the final weights, saved although 20 is no multiple of 50
        assert report["checkpoint"] == "checkpoints/last.ckpt"
        saved = torch.load(report_file.parent / report["checkpoint"], weights_only=True)
        assert saved["global_step"] == 20


def test_the_best_recipe_runs_its_two_stages(medmnist_root: Path, tmp_path: Path, caplog):
    # Stage 2 starts from stage 1's run directory: the checkpoint its report evaluated.
    short = ["--trainer.max_steps=3", "--data.init_args.meta_batches_per_epoch=3",
             "--data.init_args.val_episodes=4", "--data.init_args.test_episodes=8",
             "--model.init_args.backbone.init_args.hidden=8"]  # fmt: skip
    pretrain = fit_in_process(
        fit_args(medmnist_root, tmp_path, *short, config=REPO / "configs/medmnist_pretrain.yaml")
    )
    caplog.set_level("INFO", logger="metaclinic.algorithms.initialisation")
    best = fit_in_process(
        fit_args(
            medmnist_root,
            tmp_path,
            *short,
            f"--model.init_args.init_from={pretrain.parent}",
            config=REPO / "configs/medmnist_best.yaml",
        )
    )
    report = json.loads((best / "meta_test_report.json").read_text())
    assert report["algorithm"] == "Reptile" and report["episodes"] == 8
    assert f"backbone initialised from {pretrain}/checkpoints/best-step=" in caplog.text
