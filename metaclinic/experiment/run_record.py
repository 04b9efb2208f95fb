"""The run's record: ``config.yaml`` as the run started, and what every resume changed.

A run is described by the settings it was started with. Resuming with settings that change what is learned
(data, episode shape, model, optimizer, seed) would leave a record that describes another run, so it is
refused, listing each changed setting with its two values, unless ``--allow_config_change`` is given. Then,
as for settings that only change how the run runs (devices, logging, ``max_steps``), which may always
change, ``config.yaml`` stays as it was and ``config_history.yaml`` records each resume: when, from which
checkpoint and step, and every setting that changed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback

from metaclinic.errors import DataError
from metaclinic.experiment.storage import load_checkpoint, write_atomically

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "config_history.yaml"

# Settings that change how a run runs, not what it learns; everything else is refused on resume.
# How this command was invoked, not a setting of the run: neither compared nor recorded.
INVOCATION = ("config", "ckpt_path", "allow_config_change")
RUNTIME_SETTINGS = (
    "trainer.",
    "run_name",
    "runs_dir",
    "calibrate",
    "no_learning_baselines",
    "meta_test",
    "data.init_args.root",
    "data.init_args.download",
    "data.init_args.num_workers",
    "data.init_args.eval_meta_batch_size",  # evaluation is per episode: batching changes no score
)
# Trainer settings that do change what is learned.
LEARNING_TRAINER_SETTINGS = (
    "trainer.accumulate_grad_batches",
    "trainer.gradient_clip_val",
    "trainer.gradient_clip_algorithm",
    "trainer.precision",
)


class ConfigChangeError(DataError):
    """A resume would change what the run learns; the message lists each changed setting."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists (callbacks, class lists) stay whole values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def changes_what_is_learned(key: str) -> bool:
    if key.startswith(LEARNING_TRAINER_SETTINGS):
        return True
    return not any(key == s or key.startswith(s if s.endswith(".") else s + ".") for s in RUNTIME_SETTINGS)


def recorded_settings(run_dir: Path) -> dict[str, Any]:
    """The settings the run has now: ``config.yaml`` with the changes its resumes recorded applied."""
    settings = flatten(yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {})
    for entry in read_history(run_dir):
        settings.update({key: change["to"] for key, change in entry.get("changes", {}).items()})
    return settings


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / HISTORY_FILE
    return (yaml.safe_load(path.read_text()) or []) if path.is_file() else []


def resume_entry(run_dir: Path, settings: dict[str, Any], checkpoint: Path, allow_change: bool) -> dict:
    """What ``config_history.yaml`` records for resuming ``run_dir`` from ``checkpoint`` with ``settings``.

    Raises :class:`ConfigChangeError` when a setting that changes what is learned differs from the run's
    record and ``allow_change`` is false; the checkpoint is read (and so checked) for its step.
    """
    recorded = recorded_settings(run_dir)
    changed = {
        key: {"from": recorded.get(key), "to": settings.get(key)}
        for key in sorted(recorded.keys() | settings.keys())
        if recorded.get(key) != settings.get(key) and key not in INVOCATION
    }
    refused = [key for key in changed if changes_what_is_learned(key)]
    if refused and not allow_change:
        lines = [f"  {key}: {_show(changed[key]['from'])} -> {_show(changed[key]['to'])}" for key in refused]
        raise ConfigChangeError(
            f"--ckpt_path {checkpoint}: resuming would change what the run learns, unlike its record "
            f"{run_dir / CONFIG_FILE}:\n" + "\n".join(lines) + "\nResume with the recorded settings "
            f"(--config {run_dir / CONFIG_FILE}), start a new run, or pass --allow_config_change to resume "
            f"anyway and record the change in {HISTORY_FILE}."
        )
    return {
        "resumed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoint": os.path.relpath(checkpoint, run_dir),
        "step": int(load_checkpoint(checkpoint).get("global_step", -1)),
        "changes": changed,
    }


def _show(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


class RunRecord(SaveConfigCallback):
    """Writes ``config.yaml`` when a run starts, or, on a resume, appends to ``config_history.yaml``.

    Both files are written atomically by global rank 0; a failure stops the run naming the file.
    """

    run_dir: Path | None = None
    resume: dict[str, Any] | None = None  # the history entry of this resume; None: a new run

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved or self.run_dir is None:
            return
        if trainer.is_global_zero:
            if self.resume is None:
                write_atomically(self.run_dir / CONFIG_FILE, self.parser.dump(self.config, skip_none=False))
            else:
                history = [*read_history(self.run_dir), self.resume]
                write_atomically(self.run_dir / HISTORY_FILE, yaml.safe_dump(history, sort_keys=False))
        self.already_saved = True
