"""Distributed training on CPU (gloo): two processes end where one process ends, and report the same.

Each run is the real command line with Lightning's DDP strategy, which starts the second process itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from .conftest import REPO

STEPS = 6
# Plain SGD for the comparison: Adam divides each step by the gradient's running magnitude, so a parameter
# whose gradient is zero up to rounding (e.g. a bias that a later normalisation cancels) takes full-size
# steps whose sign is rounding noise, and one and two processes round differently.
SGD = ["--model.init_args.optimizer=torch.optim.SGD", "--model.init_args.optimizer.init_args.lr=0.05"]
ALGORITHMS = {
    "maml": SGD,  # second order
    "reptile": ["--model.init_args.inner_lr=0.1"],  # its config's SGD(lr=1.0) outer step
    "protonet": SGD,
}


def config_for(algorithm: str, tmp_path: Path) -> Path:
    """The algorithm's MedMNIST config, checkpointing once at the end of the short run."""
    config = yaml.safe_load((REPO / f"configs/{algorithm}_medmnist.yaml").read_text())
    parts = REPO / "configs"
    trainer = yaml.safe_load((parts / config["trainer"]).read_text())
    trainer["callbacks"] = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"filename": "last", "every_n_train_steps": STEPS, "enable_version_counter": False},
        }
    ]
    config["trainer"], config["data"] = trainer, str(parts / config["data"])
    config["model"]["init_args"]["backbone"] = str(parts / config["model"]["init_args"]["backbone"])
    path = tmp_path / f"{algorithm}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit(config: Path, medmnist_root: Path, runs: Path, devices: int, *extra: str) -> Path:
    args = [
        sys.executable, "-m", "metaclinic.fit", "--config", str(config), f"--runs_dir={runs}",
        "--trainer.accelerator=cpu", f"--trainer.devices={devices}",
        f"--trainer.strategy={'ddp' if devices > 1 else 'auto'}",
        f"--trainer.max_steps={STEPS}", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        f"--data.init_args.root={medmnist_root}", "--data.init_args.n_shot=2", "--data.init_args.n_query=3",
        f"--data.init_args.meta_batches_per_epoch={STEPS}", "--data.init_args.val_episodes=6",
        "--data.init_args.test_episodes=21", "--data.init_args.eval_meta_batch_size=4",
        "--model.init_args.backbone.init_args.hidden=8", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop("METACLINIC_RUN_DIR", None)
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    (run_dir,) = (runs / config.stem).iterdir()
    return run_dir


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_two_processes_reach_the_weights_of_one(algorithm: str, medmnist_root: Path, tmp_path: Path):
    config = config_for(algorithm, tmp_path)
    one = fit(config, medmnist_root, tmp_path / "one", 1, *ALGORITHMS[algorithm])
    two = fit(config, medmnist_root, tmp_path / "two", 2, *ALGORITHMS[algorithm])
    checkpoints = [torch.load(run / "checkpoints/last.ckpt", weights_only=True) for run in (one, two)]
    assert checkpoints[0]["global_step"] == checkpoints[1]["global_step"] == STEPS
    weights = [c["state_dict"] for c in checkpoints]
    assert weights[0].keys() == weights[1].keys()
    # The trained weights, and the calibration temperature fitted after training on validation episodes
    # that the two processes share between them.
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=1e-4, atol=1e-5, msg=name)


def test_two_processes_report_what_one_reports(medmnist_root: Path, tmp_path: Path):
    """The same weights evaluated by one and by two processes: no episode padded, dropped or repeated."""
    config = config_for("protonet", tmp_path)
    one = fit(config, medmnist_root, tmp_path / "one", 1, *SGD)
    shutil.copy(one / "checkpoints/last.ckpt", tmp_path / "trained.ckpt")
    two = fit(config, medmnist_root, tmp_path / "two", 2, *SGD, f"--ckpt_path={tmp_path / 'trained.ckpt'}")
    reports = [json.loads((run / "meta_test_report.json").read_text()) for run in (one, two)]
    for metric in ("accuracy", "auroc"):
        single, double = reports[0]["metrics"][metric], reports[1]["metrics"][metric]
        assert double["n"] == single["n"] == 21
        assert double["mean"] == pytest.approx(single["mean"], abs=1e-6)
        assert double["ci95"] == pytest.approx(single["ci95"], abs=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("algorithm", ["maml", "protonet"])
def test_two_gpus_with_nccl_reach_the_weights_of_one_gpu(algorithm: str, medmnist_root: Path, tmp_path: Path):
    """The same comparison on GPUs (DDP's NCCL backend), deterministic kernels where CUDA has them and no
    TF32 (``NVIDIA_TF32_OVERRIDE=0``), so that what differs is only how the two processes add up."""
    config = config_for(algorithm, tmp_path)
    gpu = ["--trainer.accelerator=gpu", "--trainer.deterministic=warn"]
    os.environ["NVIDIA_TF32_OVERRIDE"] = "0"  # read by cuBLAS and cuDNN in the runs, which copy it
    try:
        one = fit(config, medmnist_root, tmp_path / "one", 1, *ALGORITHMS[algorithm], *gpu)
        two = fit(config, medmnist_root, tmp_path / "two", 2, *ALGORITHMS[algorithm], *gpu)
    finally:
        del os.environ["NVIDIA_TF32_OVERRIDE"]
    checkpoints = [torch.load(run / "checkpoints/last.ckpt", weights_only=True) for run in (one, two)]
    weights = [checkpoint["state_dict"] for checkpoint in checkpoints]
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=1e-4, atol=1e-5, msg=name)
