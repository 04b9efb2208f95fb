"""Weights & Biases logging that never stops a run and keeps data paths and machine details out of W&B."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import wandb
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from metaclinic.experiment.lightning_internals import (
    log_offline_from_now,
    logs_offline,
    wandb_init_arguments,
    wandb_run,
)

log = logging.getLogger("metaclinic")

DEFAULT_INIT_TIMEOUT = 20.0  # seconds; wandb's own default is 90
REDACTED = "<path>"
PATH_KEYS = {"root", "path", "paths", "dir", "dirpath", "file", "filename", "filepath"}
PATH_SUFFIXES = ("_root", "_path", "_paths", "_dir", "_file")

# What the W&B run records besides metrics and hyperparameters. Console capture would copy every log
# line (file names in data warnings and errors included); system metadata holds the command line (data
# paths given as flags), host and user names, the program path and the git remote.
PRIVATE_SETTINGS: dict[str, Any] = {
    "console": "off",
    "x_disable_meta": True,
    "disable_git": True,
    "disable_code": True,
    "save_code": False,
}


class WandbLogger(LightningWandbLogger):
    """Lightning's :class:`~lightning.pytorch.loggers.WandbLogger`, made safe to leave on for every run.

    - **Never stops training.** Online, the run waits at most ``init_timeout`` seconds for the W&B server;
      if it is unreachable (or no API key is configured, or it refuses the run), the logger warns and logs
      offline into the same directory, to upload later with ``wandb sync``.
    - **No data paths or identifiers.** Hyperparameters that are file locations become ``"<path>"``
      (:func:`redact_paths`); console output, the command line, host and user names, code and git details
      are not recorded (``PRIVATE_SETTINGS``; a ``settings`` mapping in the config overrides them by key).

    The command line uses this class wherever a config names Lightning's ``WandbLogger``.

    Args:
        init_timeout: seconds to wait for the W&B server before falling back to offline logging; default
            ``$WANDB_INIT_TIMEOUT``, else 20 (configs that name Lightning's class set it by that variable).
        *args: as Lightning's ``WandbLogger``.
        **kwargs: as Lightning's ``WandbLogger``, and the rest for ``wandb.init``.
    """

    def __init__(self, *args: Any, init_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        init_arguments = wandb_init_arguments(self)
        if init_arguments.get("anonymous") is None:
            del init_arguments["anonymous"]  # wandb warns that it is deprecated whenever it is passed
        if init_timeout is None:
            init_timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", DEFAULT_INIT_TIMEOUT))
        settings = init_arguments.get("settings") or {}
        if isinstance(settings, wandb.Settings):
            settings = settings.model_dump(exclude_unset=True)
        init_arguments["settings"] = wandb.Settings(
            **{**PRIVATE_SETTINGS, "init_timeout": init_timeout, **settings}
        )

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if wandb_run(self) is None and not logs_offline(self):
            try:
                return LightningWandbLogger.experiment.fget(self)
            except Exception as error:  # unreachable server, no API key, unknown entity, ...
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                log.warning(
                    "W&B is not reachable online (%s): logging offline under %s/wandb instead; "
                    "upload later with `wandb sync`",
                    reason,
                    self.save_dir,
                )
                log_offline_from_now(self)
        return LightningWandbLogger.experiment.fget(self)

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        super().log_hyperparams(
            redact_paths(vars(params) if isinstance(params, argparse.Namespace) else params)
        )


def redact_paths(value: Any, key: str = "") -> Any:
    """``value`` with file locations replaced by ``"<path>"``, in nested mappings and lists too.

    A location is the value of a key named like one (``root``, ``path``, ``*_dir``, ...) or any string with
    a ``/`` or ``\\`` in it. Data locations can name a hospital, a project or a patient cohort: W&B gets the
    experiment's settings, never where its data lives.
    """
    if value is None:
        return None
    if key.lower() in PATH_KEYS or key.lower().endswith(PATH_SUFFIXES):
        return REDACTED
    if isinstance(value, Mapping):
        return {name: redact_paths(item, str(name)) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_paths(item) for item in value)
    if isinstance(value, PurePath) or (isinstance(value, str) and ("/" in value or "\\" in value)):
        return REDACTED
    return value
