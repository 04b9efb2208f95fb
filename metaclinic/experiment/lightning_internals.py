"""Every private Lightning name metaclinic relies on, each behind one small function of this module.

Lightning's public API does not cover these needs (each docstring says why). A Lightning release may rename
or change any of them without notice, so nothing here falls back quietly: a missing name raises, and
``tests/test_lightning_internals.py`` checks every one on the installed Lightning, failing with the version
and the name. Nothing outside this module may use a private Lightning name.

Checked by reading the sources of Lightning 2.5.2, 2.5.6 and 2.6.6 (2.5.2 is the first release whose CLI
records the values of instantiation links among a model's hyperparameters, which the model instantiator
below builds on; pyproject.toml allows ``>=2.5.2,<2.7``); tested on the version that constraints.txt pins.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, _InstantiatorFn
from lightning.pytorch.loggers import WandbLogger

CHECKED_VERSIONS = ("2.5.2", "2.5.6", "2.6.6")


# -- LightningCLI ------------------------------------------------------------------------------------------
class ModelInstantiator(_InstantiatorFn):
    """Lightning's model instantiator (``lightning.pytorch.cli._InstantiatorFn``), minus the links that
    jsonargparse skipped.

    Why private: the instantiator makes a model's hyperparameters the config it was built from, so that
    ``load_from_checkpoint`` can rebuild it; Lightning has no public hook into it. Since 2.5.2 it also writes
    the value of every link applied at instantiation into those hyperparameters. A model without a backbone
    (the logistic-regression baselines) has no target for the link that sizes backbones from the data:
    jsonargparse skips that link but still reports it as applied, and Lightning's ``_set_dict_nested`` then
    fails (``AssertionError: Expected key ... to be in data``). This instantiator passes on only the links
    whose target's parent is in the parsed config.

    Relies on: ``_InstantiatorFn(cli, key)`` and its ``__call__(class_type, *args,
    applied_instantiation_links: dict, **kwargs)``.
    """

    def __init__(self, cli: LightningCLI, key: str = "model") -> None:
        super().__init__(cli=cli, key=key)
        self.config_owner = cli  # its config is read at instantiation, after every hook changed it

    def __call__(
        self, class_type: type[LightningModule], *args: Any, applied_instantiation_links: dict, **kwargs: Any
    ) -> LightningModule:
        config = self.config_owner.config
        present = {k: v for k, v in applied_instantiation_links.items() if k.rsplit(".", 1)[0] in config}
        return super().__call__(class_type, *args, applied_instantiation_links=present, **kwargs)


# -- LightningModule --------------------------------------------------------------------------------------
def attached_trainer(module: LightningModule) -> Trainer | None:
    """The trainer the module is attached to, or ``None`` outside fit, validate and test.

    Why private: the public ``trainer`` property raises ``RuntimeError`` when no trainer is attached;
    ``LightningModule._trainer`` is ``None`` then.
    """
    return module._trainer


# -- ModelCheckpoint ---------------------------------------------------------------------------------------
def last_saved_step(checkpoint: ModelCheckpoint) -> int:
    """The global step of the callback's latest save, 0 before any: ``_last_global_step_saved``.

    Why private: saves happen inside Lightning's hooks (and a save may be skipped there); no public
    attribute records at which step the last one happened.
    """
    return checkpoint._last_global_step_saved


def save_unmonitored_checkpoint(checkpoint: ModelCheckpoint, trainer: Trainer) -> None:
    """Saves a checkpoint that monitors nothing now, as its step-triggered save does, bookkeeping included.

    Why private: ``ModelCheckpoint._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))``
    names the file from the metrics, updates ``best_model_path`` and removes the file it replaces
    (``save_top_k=1``); ``trainer.save_checkpoint`` alone would do none of that, and no public method saves
    outside the hooks' own conditions.
    """
    checkpoint._save_none_monitor_checkpoint(trainer, checkpoint._monitor_candidates(trainer))


# -- the training epoch loop -------------------------------------------------------------------------------
def is_last_batch_of_epoch(trainer: Trainer) -> bool:
    """Whether the training batch being run (or just run) is the last of its epoch.

    Why private: ``trainer.fit_loop.epoch_loop.batch_progress.is_last_batch`` (a field of the private
    ``_BatchProgress``) is set by the data fetcher's look-ahead; ``batch_idx + 1 == num_training_batches``
    is not known for iterable data, nor in the hooks without a ``batch_idx`` (validation, exceptions).
    """
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def validation_follows_step(trainer: Trainer) -> bool:
    """Whether Lightning runs validation after the training step whose ``on_train_batch_end`` is running.

    Why private: ``_TrainingEpochLoop._should_check_val_fx(data_fetcher)`` is Lightning's own decision, made
    again in ``on_advance_end`` right after ``on_train_batch_end``, with ``fit_loop._data_fetcher``. Deriving
    it from the public ``val_check_interval`` and ``check_val_every_n_epoch`` would re-implement its cases
    (iterable data, time-based intervals, early stopping) and drift from it.
    """
    fit_loop = trainer.fit_loop
    return bool(fit_loop.epoch_loop._should_check_val_fx(fit_loop._data_fetcher))


# -- SIGTERM ----------------------------------------------------------------------------------------------
def mark_sigterm_received(trainer: Trainer) -> None:
    """Makes the trainer act as if this process had received SIGTERM: ``_signal_connector.received_sigterm``.

    Why private: ``Trainer.received_sigterm`` is a read-only property over that attribute, which Lightning's
    own signal handler sets; the training loop stops at the end of the step (``SIGTERMException``) when it
    is true. Several processes must all stop after the same step (``SigtermOnEveryProcess``), which only
    setting it on every one of them at a step both agreed on achieves; no public method does.
    """
    trainer._signal_connector.received_sigterm = True


# -- WandbLogger -------------------------------------------------------------------------------------------
def wandb_init_arguments(logger: WandbLogger) -> dict[str, Any]:
    """The keyword arguments the logger will pass to ``wandb.init`` (``WandbLogger._wandb_init``), mutable.

    Why private: the constructor always passes ``anonymous`` (wandb warns that it is deprecated) and
    switching to offline logging after a failed online start changes ``mode`` later; neither is public.
    """
    return logger._wandb_init


def wandb_run(logger: WandbLogger) -> Any | None:
    """The W&B run once started, else ``None`` (``WandbLogger._experiment``), without starting one.

    Why private: the public ``experiment`` property starts the run; the fallback must know whether it may.
    """
    return logger._experiment


def logs_offline(logger: WandbLogger) -> bool:
    """Whether the logger logs offline: ``WandbLogger._offline``, its ``offline`` argument or the fallback."""
    return bool(logger._offline)


def log_offline_from_now(logger: WandbLogger) -> None:
    """Makes the run start offline (``_offline`` and ``mode``, read when ``experiment`` starts the run).

    Why private: ``offline`` is a constructor argument only; the fallback decides after construction.
    """
    logger._offline = True
    logger._wandb_init["mode"] = "offline"
