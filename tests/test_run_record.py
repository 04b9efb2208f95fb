"""Runs never lie about what they saved: refused or recorded resumes, loud write failures, clear load errors,
and no run directory left by a set-up that failed."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback

from metaclinic import evaluate, fit
from metaclinic.experiment.run_record import HISTORY_FILE

from .conftest import fit_in_process
from .test_cli import fit_args

SHORT = ["--trainer.max_steps=4", "--data.init_args.test_episodes=8", "--data.init_args.val_episodes=8",
         "--trainer.val_check_interval=2", "--model.init_args.backbone.init_args.hidden=8"]  # fmt: skip


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["metaclinic.fit"])


@pytest.fixture(scope="module")
def template_run(medmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["metaclinic.fit"])
        return fit_in_process(fit_args(medmnist_root, tmp_path_factory.mktemp("template") / "runs", *SHORT))


@pytest.fixture
def finished_run(template_run: Path, tmp_path: Path) -> Path:
    """A short MAML run (2-shot, 4 steps) with its record and checkpoints: a copy of one run, under
    ``tmp_path/runs`` (a changed ``runs_dir`` only changes where the run is, and may change on resume)."""
    copy = tmp_path / "runs" / template_run.parent.name / template_run.name
    shutil.copytree(template_run, copy)
    return copy


def fails_with(function, args: list[str]) -> str:
    """The one-line message ``function`` exits with (no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        function([*args, "--trainer.logger=false", "--trainer.enable_progress_bar=false"])
    message = str(exit_info.value.code)
    assert message.startswith("metaclinic: error: "), message
    return message


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        (["--data.init_args.n_shot=1"], "data.init_args.n_shot: 2 -> 1"),
        (["--model.init_args.inner_lr=0.2"], "model.init_args.inner_lr: 0.1 -> 0.2"),
        (["--data.init_args.meta_batch_size=2"], "data.init_args.meta_batch_size: 4 -> 2"),
        (["--data.init_args.meta_train=[organamnist:0-5]"], "data.init_args.meta_train: "),
    ],
)
def test_a_resume_that_changes_what_is_learned_is_refused_and_the_record_kept(
    finished_run: Path, medmnist_root: Path, change: list[str], shown: str
):
    record = (finished_run / "config.yaml").read_bytes()
    args = fit_args(medmnist_root, finished_run.parent.parent, *SHORT, "--trainer.max_steps=6", *change)
    message = fails_with(fit.main, [*args, "--ckpt_path=last"])
    assert shown in message and "--allow_config_change" in message, message
    assert "trainer.max_steps" not in message  # how long it runs may change
    assert (finished_run / "config.yaml").read_bytes() == record
    assert not (finished_run / HISTORY_FILE).exists()
    assert torch.load(finished_run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 4


def test_an_allowed_change_is_recorded_beside_the_unchanged_config(medmnist_root: Path, tmp_path: Path):
    # A run of its own, not a copy: resuming a moved run makes Lightning keep the old best_model_path.
    finished_run = fit_in_process(fit_args(medmnist_root, tmp_path / "runs", *SHORT))
    record = (finished_run / "config.yaml").read_bytes()
    args = fit_args(medmnist_root, finished_run.parent.parent, *SHORT)
    fit_in_process([*args, "--ckpt_path=last", "--trainer.max_steps=6", "--model.init_args.inner_lr=0.2",
                    "--allow_config_change=true"])  # fmt: skip
    assert (finished_run / "config.yaml").read_bytes() == record
    (entry,) = yaml.safe_load((finished_run / HISTORY_FILE).read_text())
    assert entry["step"] == 4 and entry["checkpoint"] == "checkpoints/last.ckpt"
    assert entry["changes"]["model.init_args.inner_lr"] == {"from": 0.1, "to": 0.2}
    assert entry["changes"]["trainer.max_steps"] == {"from": 4, "to": 6}
    assert torch.load(finished_run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 6
    # The next resume compares with the settings the run now has: the allowed change is not refused again.
    fit_in_process([*args, "--ckpt_path=last", "--trainer.max_steps=7", "--model.init_args.inner_lr=0.2"])
    history = yaml.safe_load((finished_run / HISTORY_FILE).read_text())
    assert [e["step"] for e in history] == [4, 6] and list(history[1]["changes"]) == ["trainer.max_steps"]


class ReplaceWithFile(Callback):
    """Makes ``folder`` of the run unwritable after step ``step`` (a full disk or a lost mount, as root too):
    the folder becomes a plain file."""

    def __init__(self, folder: str, step: int) -> None:
        self.folder, self.step = folder, step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            path = Path(trainer.default_root_dir) / self.folder
            shutil.rmtree(path)
            path.write_text("")


def test_a_checkpoint_that_cannot_be_written_stops_the_run_naming_it(medmnist_root: Path, tmp_path: Path):
    obstruct = {"folder": "checkpoints", "step": 3}  # after the first (best) checkpoint, at step 2
    callback = {"class_path": f"{__name__}.ReplaceWithFile", "init_args": obstruct}
    args = fit_args(medmnist_root, tmp_path / "runs", *SHORT, "--trainer.max_steps=8")
    message = fails_with(fit.main, [*args, f"--trainer.callbacks+={json.dumps(callback)}"])
    assert re.search(r"/checkpoints/[-\w=]+\.ckpt: could not be written \(Not a directory\)", message)
    assert not list(tmp_path.glob("runs/*/*/meta_test_report.json"))  # no report of unsaved weights


class DirectoryAt(Callback):
    """Puts a directory where the run will write ``name`` once training ends: that write must fail."""

    def __init__(self, name: str) -> None:
        self.name = name

    def on_train_end(self, trainer, pl_module) -> None:
        (Path(trainer.default_root_dir) / self.name).mkdir()


def test_a_report_that_cannot_be_written_is_saved_elsewhere_and_named(
    medmnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.chdir(tmp_path)
    callback = {"class_path": f"{__name__}.DirectoryAt", "init_args": {"name": "meta_test_report.json"}}
    args = fit_args(medmnist_root, tmp_path / "runs", *SHORT)
    message = fails_with(fit.main, [*args, f"--trainer.callbacks+={json.dumps(callback)}"])
    (saved,) = tmp_path.glob("maml_medmnist-*-meta_test_report.json")
    assert "meta_test_report.json: could not be written" in message
    assert f"the report was saved to {saved} instead" in message, message
    assert json.loads(saved.read_text())["algorithm"] == "MAML"
    assert "Meta-test: MAML" in capsys.readouterr().out  # the result was shown too


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_checkpoint_is_named_in_fit_and_evaluate(finished_run: Path, medmnist_root: Path, damage):
    last = finished_run / "checkpoints/last.ckpt"
    data = last.read_bytes()
    last.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    args = fit_args(medmnist_root, finished_run.parent.parent, *SHORT)
    for message in (
        fails_with(fit.main, [*args, "--ckpt_path=last", "--trainer.max_steps=6"]),
        fails_with(evaluate.main, ["--config", str(finished_run / "config.yaml"), "--ckpt_path", str(last)]),
    ):
        assert str(last) in message, message
        assert ("empty (0 bytes)" if damage == "empty" else "truncated or corrupt") in message, message
        assert "\n" not in message


class _RunsCode:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_pickled_checkpoint_is_refused_by_evaluate_for_safety(finished_run: Path, tmp_path: Path):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode()}, evil)
    config = str(finished_run / "config.yaml")
    message = fails_with(evaluate.main, ["--config", config, "--ckpt_path", str(evil)])
    assert f"{evil} was not loaded" in message and "refused for safety" in message, message
    assert "never load it with weights_only=False" in message
    assert "Re-running" not in message  # torch's advice to load it unsafely is not passed on


def test_a_failed_set_up_leaves_no_run_directory(medmnist_root: Path, tmp_path: Path):
    args = fit_args(medmnist_root, tmp_path / "runs", *SHORT, "--data.init_args.n_shot=500")
    message = fails_with(fit.main, args)
    assert "fewer than" in message, message
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*"))


def test_evaluate_beside_a_loose_checkpoint_makes_no_run_directory(finished_run: Path, tmp_path: Path):
    loose = tmp_path / "shared" / "model.ckpt"
    loose.parent.mkdir()
    shutil.copy(finished_run / "checkpoints/last.ckpt", loose)
    runs_before = sorted(p.name for p in finished_run.parent.iterdir())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["metaclinic.evaluate"])
        config = str(finished_run / "config.yaml")
        quiet = ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]
        evaluate.main(["--config", config, "--ckpt_path", str(loose), "--shots", "2", *quiet])
    assert sorted(p.name for p in finished_run.parent.iterdir()) == runs_before
    assert (loose.parent / "evaluation" / "meta_test_report.json").is_file()
