"""Fault tolerance and reproducibility: runs stopped anywhere resume exactly; W&B never stops or leaks.

Real ``python -m metaclinic.fit`` runs: same seed and config give identical runs; a run stopped by a real
SIGTERM and then a real SIGKILL resumes with ``--ckpt_path last`` to exactly the uninterrupted result; W&B
that cannot be reached never stops training, and no data path reaches the W&B run; a checkpoint that
would run code when unpickled is refused. They train MAML with a dropout MLP on generated hospital
tables, so random draws matter. In-process runs stop at the moments that matter for checkpoint timing
(mid-epoch, at a validation step, during validation) and check the same exactness, cheaply.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from metaclinic.algorithms import MAML
from metaclinic.cli import RUN_DIR_ENV
from metaclinic.data import MedMNISTEpisodes
from metaclinic.data.synthetic import write_synthetic_heart_disease
from metaclinic.experiment.callbacks import CheckpointOnSigterm, MetaBatchSeeding, ModelCheckpoint
from metaclinic.experiment.tracking import REDACTED, redact_paths
from metaclinic.fit import main
from metaclinic.models import Conv4

from .conftest import REPO, SPLIT
from .test_resume import CrashAt

CANARY = "CANARY_PATH_7731"  # in the data root: must not reach the W&B run
STEPS, VAL_EVERY, SAVE_EVERY = 24, 6, 4


class SignalAt(Callback):
    """Sends ``signum`` to its own process as training step ``step + 1`` starts (or, with ``validation``,
    as the last batch of the validation after step ``step`` starts): a real signal, at a known moment."""

    def __init__(self, step: int, signum: int, validation: bool = False) -> None:
        self.step, self.signum, self.validation = step, signum, validation

    def on_train_batch_start(self, trainer, *args) -> None:
        if not self.validation and trainer.global_step == self.step:
            self.send()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        last = batch_idx == trainer.num_val_batches[0] - 1
        if self.validation and last and trainer.global_step == self.step and not trainer.sanity_checking:
            self.send()

    def send(self) -> None:
        if self.signum == signal.SIGTERM:  # in pytest's process the default action would end the session
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), "no SIGTERM handler"
        os.kill(os.getpid(), self.signum)


# -- in process: every moment a run can stop at, for checkpoint timing ---------------------------------------
class DropoutConv4(Conv4):
    """Conv-4 with dropout on its embedding, so that random draws matter."""

    def __init__(self) -> None:
        super().__init__((3, 28, 28), hidden=8)
        self.dropout = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(super().forward(x))


def train(medmnist_root: Path, ckpt_dir: Path, stop: Callback | None = None, resume: bool = False):
    """MAML for STEPS steps, validating (2 batches) at the end of each epoch of VAL_EVERY steps, with the
    callbacks the command line sets up; returns the weights and every validation score by checkpoint."""
    seed_everything(0)
    data = MedMNISTEpisodes(
        **SPLIT, root=str(medmnist_root), n_way=5, n_shot=1, n_query=2, meta_batch_size=2,
        meta_batches_per_epoch=VAL_EVERY, val_episodes=4, eval_meta_batch_size=2, test_episodes=4,
    )  # fmt: skip
    model = MAML(DropoutConv4(), n_way=5, inner_lr=0.4, train_steps=1, eval_steps=1)
    best = ModelCheckpoint(ckpt_dir, "best-{step}", monitor="val/accuracy", mode="max", save_top_k=-1)
    last = ModelCheckpoint(ckpt_dir, "last", every_n_train_steps=SAVE_EVERY, enable_version_counter=False)
    callbacks = [MetaBatchSeeding(0), best, last, CheckpointOnSigterm(ckpt_dir / "last.ckpt")]
    trainer = Trainer(
        max_steps=STEPS, inference_mode=False, use_distributed_sampler=False, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[*callbacks, *([stop] if stop else [])],
    )  # fmt: skip
    trainer.fit(model, datamodule=data, ckpt_path=str(ckpt_dir / "last.ckpt") if resume else None)
    scores = {Path(path).name: float(score) for path, score in best.best_k_models.items()}
    return model.state_dict(), scores


@pytest.fixture(scope="module")
def uninterrupted(medmnist_root: Path, tmp_path_factory: pytest.TempPathFactory):
    return train(medmnist_root, tmp_path_factory.mktemp("uninterrupted"))


@pytest.mark.parametrize(
    ("stop", "saved"),
    [
        (CrashAt(5), 4),  # the periodic checkpoint of a mid-epoch step
        (CrashAt(13), 12),  # ... of a step that ends an epoch and is validated: written after validation
        (CrashAt(22), 20),
        (SignalAt(9, signal.SIGTERM), 10),  # Lightning finishes step 10 and stops; it is saved
        (SignalAt(12, signal.SIGTERM, validation=True), 12),  # validation ends, then the epoch: saved
        (SignalAt(5, signal.SIGTERM), 4),  # step 6's validation stops midway: nothing new is saved
    ],
    ids=lambda v: f"{type(v).__name__}{v.step}" if isinstance(v, Callback) else f"resumes{v}",
)
def test_a_run_stopped_anywhere_resumes_to_the_uninterrupted_result(
    stop: Callback, saved: int, uninterrupted, medmnist_root: Path, tmp_path: Path
):
    with pytest.raises(RuntimeError if isinstance(stop, CrashAt) else SIGTERMException):
        train(medmnist_root, tmp_path, stop)
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == saved
    weights, scores = train(medmnist_root, tmp_path, resume=True)
    expected_weights, expected_scores = uninterrupted
    assert scores == expected_scores  # every validation ran, with the same score
    assert all(torch.equal(weights[name], tensor) for name, tensor in expected_weights.items())


# -- real processes -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The heart-disease config on generated tables under a canary path, shrunk, with dropout."""
    root = tmp_path_factory.mktemp("data") / CANARY
    write_synthetic_heart_disease(root / "uci_heart_disease", patients=60)
    config = yaml.safe_load((REPO / "configs/heart_disease_loho.yaml").read_text())
    config["data"]["init_args"].update(
        root=str(root), meta_train=["cleveland", "hungarian"], meta_val=["switzerland"], meta_test=["va"],
        n_shot=2, n_query=3, meta_batch_size=4, meta_batches_per_epoch=VAL_EVERY, val_episodes=8,
        test_episodes=20, eval_meta_batch_size=20,
    )  # fmt: skip
    config["model"]["init_args"].update(train_steps=1, eval_steps=2)
    config["model"]["init_args"]["backbone"]["init_args"].update(hidden=16, dropout=0.3)
    config["trainer"].update(max_steps=STEPS, log_every_n_steps=2, enable_progress_bar=False)
    config["trainer"]["callbacks"] = [  # as in the shipped configs: best on val/accuracy, last every N steps
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"monitor": "val/accuracy", "mode": "max", "filename": "best-{step}"}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"filename": "last", "every_n_train_steps": SAVE_EVERY,
                       "enable_version_counter": False}},
    ]  # fmt: skip
    path = root.parent / "fault_tolerance.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fit(config: Path, runs: Path, *extra: str, **env: str | None) -> subprocess.CompletedProcess:
    """``python -m metaclinic.fit``; W&B offline unless ``env`` says otherwise; None unsets."""
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", **env}
    environ = {k: v for k, v in environ.items() if v is not None and k != RUN_DIR_ENV}
    args = [sys.executable, "-m", "metaclinic.fit", "--config", str(config), f"--runs_dir={runs}", *extra]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=environ, timeout=300)


def run_dir_of(runs: Path) -> Path:
    (run_dir,) = (runs / "fault_tolerance").iterdir()
    return run_dir


def outcome(run_dir: Path) -> tuple[dict[str, Any], int, dict[str, torch.Tensor]]:
    """The meta-test report, and the step and weights of ``last.ckpt``."""
    report = json.loads((run_dir / "meta_test_report.json").read_text())
    last = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    return report, last["global_step"], last["state_dict"]


def assert_same_outcome(expected: tuple, actual: tuple) -> None:
    (report, step, weights), (other_report, other_step, other_weights) = expected, actual
    assert other_report == report  # metrics to the last bit, and the same best checkpoint (best-step=N)
    assert other_step == step == STEPS
    assert other_weights.keys() == weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(other_weights[name], tensor), name


@pytest.fixture(scope="module")
def reference(config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run, logging to W&B offline as the configs do."""
    runs = tmp_path_factory.mktemp("reference")
    result = fit(config, runs)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir_of(runs)


@pytest.fixture(scope="module")
def unreachable_wandb(config: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The same run logging online to a W&B server that refuses connections; its run dir and stderr."""
    runs = tmp_path_factory.mktemp("unreachable")
    result = fit(
        config,
        runs,
        "--trainer.logger.init_args.offline=false",
        WANDB_MODE=None,
        WANDB_INIT_TIMEOUT="2",
        WANDB_BASE_URL="http://127.0.0.1:9",  # the discard port: connection refused
        WANDB_API_KEY="x" * 40,  # a key, so that wandb really tries the server
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir_of(runs), result.stderr


def test_same_seed_and_config_give_identical_runs(reference: Path, unreachable_wandb: tuple[Path, str]):
    # Two independent processes; how W&B logs (offline, or online falling back) changes nothing.
    assert_same_outcome(outcome(reference), outcome(unreachable_wandb[0]))


def test_unreachable_wandb_falls_back_to_offline_and_training_finishes(unreachable_wandb: tuple[Path, str]):
    run_dir, stderr = unreachable_wandb
    assert "W&B is not reachable online" in stderr and "logging offline" in stderr
    assert (run_dir / "checkpoints/last.ckpt").is_file() and (run_dir / "meta_test_report.json").is_file()
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def test_no_data_path_reaches_the_wandb_run(reference: Path, unreachable_wandb: tuple[Path, str]):
    for run_dir in (reference, unreachable_wandb[0]):
        assert CANARY in (run_dir / "config.yaml").read_text()  # the run knew the path ...
        files = [f for f in (run_dir / "wandb").rglob("*") if f.is_file()]
        assert any(b"inner_lr" in f.read_bytes() for f in files)  # ... and W&B got the hyperparameters ...
        leaks = [f for f in files if CANARY.encode() in f.read_bytes()]
        assert not leaks, leaks  # ... but not the path


def test_sigterm_then_sigkill_resume_to_the_uninterrupted_result(
    config: Path, reference: Path, tmp_path: Path
):
    def signal_at(step: int, signum: signal.Signals) -> str:
        callback = {"class_path": f"{__name__}.SignalAt", "init_args": {"step": step, "signum": int(signum)}}
        return f"--trainer.callbacks+={json.dumps(callback)}"

    last = tmp_path / "fault_tolerance"
    # SIGTERM during step 10: Lightning finishes the step and stops; metaclinic saves it and exits 143.
    stopped = fit(config, tmp_path, "--trainer.logger=false", signal_at(9, signal.SIGTERM))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "SIGTERM: stopped after step 10" in stopped.stderr
    (last,) = last.glob("*/checkpoints/last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 10

    # Resumed, then SIGKILLed during step 15: the periodic checkpoint of step 12 remains. Step 12 ends an
    # epoch and is validated; the checkpoint waited for both, so the resumed run keeps that validation.
    killed = fit(
        config, tmp_path, "--trainer.logger=false", "--ckpt_path=last", signal_at(14, signal.SIGKILL)
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert torch.load(last, weights_only=True)["global_step"] == 12

    resumed = fit(config, tmp_path, "--trainer.logger=false", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_outcome(outcome(reference), outcome(last.parent.parent))


class KillDuringSave(Callback):
    """SIGKILLs its own process during the ``save``-th save of ``last.ckpt``: the new file is written and
    synced beside the target but not yet moved over it, the moment a cross-filesystem move used to truncate
    ``last.ckpt``."""

    def __init__(self, save: int) -> None:
        self.save = save

    def setup(self, trainer, pl_module, stage: str) -> None:
        replace, saves = os.replace, []

        def replace_or_die(source, target, *args, **kwargs):
            if Path(target).name == "last.ckpt":
                saves.append(target)
                if len(saves) == self.save:
                    os.kill(os.getpid(), signal.SIGKILL)
            return replace(source, target, *args, **kwargs)

        os.replace = replace_or_die  # this process is killed by it: nothing to restore


def other_filesystem(path: Path) -> Path | None:
    """A writable folder on another filesystem than ``path`` (tmpfs ``/dev/shm``), if this machine has one."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != path.stat().st_dev:
        return shm
    return None


def test_sigkill_during_a_save_with_tmpdir_on_another_filesystem_resumes_exactly(
    config: Path, reference: Path, tmp_path: Path
):
    shm = other_filesystem(tmp_path)
    if shm is None:
        pytest.skip("no writable tmpfs at /dev/shm on another filesystem than the test's temporary folder")
    tmpdir = Path(tempfile.mkdtemp(dir=shm, prefix="metaclinic-test-"))
    try:
        kill = {"class_path": f"{__name__}.KillDuringSave", "init_args": {"save": 3}}
        killed = fit(config, tmp_path, "--trainer.logger=false", f"--trainer.callbacks+={json.dumps(kill)}",
                     TMPDIR=str(tmpdir))  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        checkpoints = run_dir_of(tmp_path) / "checkpoints"
        # The third save (step 12) died before its move: the second (step 8) is intact, the partial beside it.
        assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 8
        assert [p.name for p in checkpoints.glob(".last.ckpt.*.partial")]
        staged = [p for p in tmpdir.iterdir() if "wandb" not in p.name]  # (wandb's import makes folders)
        assert not staged  # no checkpoint staged in $TMPDIR

        resumed = fit(config, tmp_path, "--trainer.logger=false", "--ckpt_path=last", TMPDIR=str(tmpdir))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert not list(checkpoints.glob(".*.partial"))  # cleaned at the resume
        assert_same_outcome(outcome(reference), outcome(checkpoints.parent))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


class _WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code a checkpoint could carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_that_would_run_code_is_refused(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    marker, evil = tmp_path / "code_ran", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "global_step": 3, "payload": _WritesMarker(marker)}, evil)
    torch.load(evil, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()
    marker.unlink()

    monkeypatch.setattr(sys, "argv", ["metaclinic.fit"])
    monkeypatch.setenv(RUN_DIR_ENV, f"0:{tmp_path / 'run'}")  # as a DDP launcher hands it down
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config), "--trainer.logger=false", f"--ckpt_path={evil}"])
    message = str(exit_info.value.code)
    assert message.startswith(f"metaclinic: error: {evil} was not loaded"), message
    assert "could run code" in message and "GLOBAL" in message
    assert not marker.exists()


def test_meta_batch_seeding_makes_draws_a_function_of_the_meta_batch():
    def draws(seeding: MetaBatchSeeding, meta_batch: int) -> tuple:
        trainer = type("FakeTrainer", (), {"global_rank": 0, "global_step": meta_batch})()
        seeding.on_train_batch_start(trainer, None, object(), 0)  # not a TaskBatch: the step is the index
        return torch.rand(3).tolist(), np.random.rand(), random.random()

    seeding = MetaBatchSeeding(seed=7)
    first = draws(seeding, 5)
    torch.rand(100), np.random.rand(100), random.random()  # what validation or a new DataLoader might draw
    assert draws(seeding, 5) == first
    assert draws(seeding, 6) != first and draws(MetaBatchSeeding(seed=8), 5) != first

    resumed = MetaBatchSeeding(seed=123)  # the state goes through a weights-only checkpoint
    buffer = io.BytesIO()
    torch.save({"callbacks": {"MetaBatchSeeding": seeding.state_dict()}}, buffer)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True)["callbacks"]["MetaBatchSeeding"])
    assert draws(resumed, 5) == first


def test_hyperparameters_that_look_like_paths_are_redacted():
    params = {
        "root": "hospital_a", "table": {"path": {"a": "a.csv"}, "label_column": "num"}, "cache_dir": None,
        "n_way": 5, "splits": ["train", "C:\\cohort"], "backbone": {"weights": "/models/pretrained.pt"},
    }  # fmt: skip
    assert redact_paths(params) == {
        "root": REDACTED, "table": {"path": REDACTED, "label_column": "num"}, "cache_dir": None,
        "n_way": 5, "splits": ["train", REDACTED], "backbone": {"weights": REDACTED},
    }  # fmt: skip
