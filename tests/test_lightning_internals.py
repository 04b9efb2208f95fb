"""The private Lightning names of metaclinic.experiment.lightning_internals exist and behave as it assumes.

A Lightning release that renames, re-signs or changes one of them fails here, with the version and the
name, instead of silently changing how metaclinic checkpoints, resumes or records hyperparameters.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
import torch.nn.functional as F
import wandb
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, TensorDataset

from metaclinic.experiment.lightning_internals import (
    CHECKED_VERSIONS,
    ModelInstantiator,
    attached_trainer,
    is_last_batch_of_epoch,
    last_saved_step,
    log_offline_from_now,
    logs_offline,
    mark_sigterm_received,
    save_unmonitored_checkpoint,
    validation_follows_step,
    wandb_init_arguments,
    wandb_run,
)


def broken(name: str, what: str) -> str:
    return (
        f"Lightning {lightning.__version__}: {name} {what}. metaclinic.experiment.lightning_internals relies "
        f"on it (checked on Lightning {', '.join(CHECKED_VERSIONS)}); adapt the wrapper there, or keep "
        "Lightning to a checked version"
    )


@contextlib.contextmanager
def private(name: str) -> Iterator[None]:
    """Turns a missing or re-signed private name into a failure that names it and the Lightning version."""
    try:
        yield
    except (AttributeError, ImportError, TypeError) as error:
        pytest.fail(broken(name, f"is gone or changed ({type(error).__name__}: {error})"), pytrace=False)


# -- names and signatures ----------------------------------------------------------------------------------
SIGNATURES = {
    "lightning.pytorch.cli._InstantiatorFn.__init__": ["self", "cli", "key"],
    "lightning.pytorch.cli._InstantiatorFn.__call__": [
        "self",
        "class_type",
        "args",
        "applied_instantiation_links",
        "kwargs",
    ],
    "lightning.pytorch.callbacks.ModelCheckpoint._save_none_monitor_checkpoint": [
        "self",
        "trainer",
        "monitor_candidates",
    ],
    "lightning.pytorch.callbacks.ModelCheckpoint._monitor_candidates": ["self", "trainer"],
    "lightning.pytorch.loops.training_epoch_loop._TrainingEpochLoop._should_check_val_fx": [
        "self",
        "data_fetcher",
    ],
}


def resolve(dotted: str) -> Any:
    """The object at ``module.Class.attribute``, importing the longest importable module prefix."""
    parts = dotted.split(".")
    for end in range(len(parts) - 1, 0, -1):
        with contextlib.suppress(ImportError):
            found = importlib.import_module(".".join(parts[:end]))
            for attribute in parts[end:]:
                found = getattr(found, attribute)
            return found
    raise ImportError(dotted)


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_private_functions_keep_their_signature(name: str):
    with private(name):
        parameters = inspect.signature(resolve(name)).parameters
    assert list(parameters) == SIGNATURES[name], broken(name, f"now takes {list(parameters)}")
    if name.endswith("_InstantiatorFn.__call__"):
        kind = parameters["applied_instantiation_links"].kind
        assert kind is inspect.Parameter.KEYWORD_ONLY, broken(name, "takes its links positionally")


def test_private_attributes_are_where_metaclinic_reads_them(tmp_path: Path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path)
    with private("ModelCheckpoint._last_global_step_saved"):
        assert last_saved_step(checkpoint) == 0, broken("ModelCheckpoint._last_global_step_saved", "is not 0")
    module = LightningModule()
    with private("LightningModule._trainer"):
        assert attached_trainer(module) is None, broken("LightningModule._trainer", "is set on a new module")
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    module.trainer = trainer
    assert attached_trainer(module) is trainer, broken("LightningModule._trainer", "is not the trainer set")
    with private("fit_loop._data_fetcher"):
        assert trainer.fit_loop._data_fetcher is None  # set when fit starts
    with private("fit_loop.epoch_loop.batch_progress.is_last_batch"):
        assert is_last_batch_of_epoch(trainer) is False


def test_a_marked_sigterm_stops_training_after_the_step_that_marked_it():
    """SigtermOnEveryProcess marks SIGTERM in on_train_batch_end; Lightning stops at the end of that step."""

    class MarkAt(Callback):
        def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
            if trainer.global_step == 2:
                with private("Trainer._signal_connector.received_sigterm"):
                    mark_sigterm_received(trainer)

    trainer = Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, callbacks=[MarkAt()])  # fmt: skip
    with pytest.raises(SIGTERMException):
        trainer.fit(TinyRegression())
    assert trainer.received_sigterm and trainer.global_step == 2, broken(
        "Trainer._signal_connector.received_sigterm", f"stopped training at step {trainer.global_step}, not 2"
    )


# -- behaviour in a real fit -------------------------------------------------------------------------------
BATCHES, VAL_CHECK_INTERVAL, EPOCHS = 4, 2, 2


class TinyRegression(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.layer(x), y)

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self.layer(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            TensorDataset(torch.randn(BATCHES * 2, 2), torch.randn(BATCHES * 2, 1)), batch_size=2
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(2, 2), torch.randn(2, 1)), batch_size=2)


class Recorder(Callback):
    """Records what the wrappers say in ``on_train_batch_end`` and what Lightning then does."""

    def __init__(self, checkpoint: ModelCheckpoint) -> None:
        self.checkpoint = checkpoint
        self.events: list[tuple] = []
        self.asking = False  # our own call of _should_check_val_fx, not the loop's
        self.saves: dict[str, Any] = {}

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.asking = True
        try:
            follows, last = validation_follows_step(trainer), is_last_batch_of_epoch(trainer)
        finally:
            self.asking = False
        self.events.append(("predicted", trainer.global_step, follows, last))

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.events.append(("validation", trainer.global_step))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.saves["before"] = last_saved_step(self.checkpoint)
        save_unmonitored_checkpoint(self.checkpoint, trainer)
        self.saves.update(after=last_saved_step(self.checkpoint), path=self.checkpoint.best_model_path)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Recorder:
    """A 2-epoch fit of 4 batches each, validating every 2 batches, with its events recorded."""
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path_factory.mktemp("checkpoints"), filename="{step}", every_n_train_steps=1000
    )
    recorder = Recorder(checkpoint)
    trainer = Trainer(
        max_epochs=EPOCHS,
        val_check_interval=VAL_CHECK_INTERVAL,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder, checkpoint],
    )
    name = "_TrainingEpochLoop._should_check_val_fx"
    with private(name):
        decide = trainer.fit_loop.epoch_loop._should_check_val_fx

    def spy(data_fetcher: Any) -> bool:
        decision = decide(data_fetcher)
        if not recorder.asking:
            recorder.events.append(("decided", trainer.global_step, decision))
        return decision

    trainer.fit_loop.epoch_loop._should_check_val_fx = spy  # the loop looks it up on the instance
    with private(name):
        trainer.fit(TinyRegression())
    return recorder


def test_should_check_val_fx_decides_validation_right_after_on_train_batch_end(fitted: Recorder):
    name = "_TrainingEpochLoop._should_check_val_fx"
    events = fitted.events
    predictions = [e for e in events if e[0] == "predicted"]
    assert len(predictions) == BATCHES * EPOCHS
    for i, event in enumerate(events):
        if event[0] != "predicted":
            continue
        _, step, follows, _ = event
        following = events[i + 1] if i + 1 < len(events) else None
        assert following == ("decided", step, follows), broken(
            name, f"is not what decides validation right after on_train_batch_end of step {step}: {events}"
        )
        validated = i + 2 < len(events) and events[i + 2] == ("validation", step)
        assert validated == follows, broken(name, f"said {follows} at step {step}, validation said otherwise")
    validating = [step for _, step, follows, _ in predictions if follows]
    assert validating == list(range(VAL_CHECK_INTERVAL, BATCHES * EPOCHS + 1, VAL_CHECK_INTERVAL)), broken(
        name, f"validates after steps {validating}"
    )


def test_is_last_batch_marks_the_last_batch_of_each_epoch(fitted: Recorder):
    last = [step for _, step, _, is_last in (e for e in fitted.events if e[0] == "predicted") if is_last]
    expected = [BATCHES * (epoch + 1) for epoch in range(EPOCHS)]
    assert last == expected, broken("batch_progress.is_last_batch", f"is true after steps {last}")


def test_save_none_monitor_checkpoint_saves_and_records_the_step(fitted: Recorder):
    name = "ModelCheckpoint._save_none_monitor_checkpoint"
    saves, final_step = fitted.saves, BATCHES * EPOCHS
    assert saves["before"] == 0, broken("ModelCheckpoint._last_global_step_saved", f"is {saves['before']}")
    assert saves["after"] == final_step, broken(
        "ModelCheckpoint._last_global_step_saved", f"is {saves['after']} after a save at step {final_step}"
    )
    path = Path(saves["path"])
    assert path.name == f"step={final_step}.ckpt" and path.is_file(), broken(name, f"saved {path}")
    assert torch.load(path, weights_only=True)["global_step"] == final_step


# -- the CLI's model instantiator --------------------------------------------------------------------------
class Head(torch.nn.Module):
    """A backbone: sized by a link (``width``), with settings of its own (``bias``)."""

    def __init__(self, width: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, 1, bias=bias)


class HeadedModel(LightningModule):
    def __init__(self, head: Head | None = None, n_way: int = 2) -> None:
        super().__init__()
        self.head = head
        self.save_hyperparameters()  # through the CLI: its config, the head's included


class WidthData(LightningDataModule):
    width = 3

    def __init__(self, n_way: int = 2) -> None:
        super().__init__()
        self.n_way = n_way


class LinkedCLI(LightningCLI):
    """metaclinic.cli's two links, on a model whose head (the backbone) is optional."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.init_args.n_way", "model.init_args.n_way")
        parser.link_arguments(
            "data", "model.init_args.head.init_args.width", lambda d: d.width, "instantiate"
        )

    def before_instantiate_classes(self) -> None:
        self.parser.add_instantiator(ModelInstantiator(self), HeadedModel, subclasses=True, prepend=True)


def build_linked(monkeypatch: pytest.MonkeyPatch, *args: str) -> LinkedCLI:
    monkeypatch.setattr(sys, "argv", ["test"])
    trainer = ["--trainer.logger=false", "--trainer.enable_checkpointing=false"]
    options = ["--model", f"{__name__}.HeadedModel", "--data", f"{__name__}.WidthData", *trainer, *args]
    with private("lightning.pytorch.cli._InstantiatorFn"):
        return LinkedCLI(
            HeadedModel, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
            seed_everything_default=False, args=options,
        )  # fmt: skip


def test_the_model_instantiator_records_links_and_skips_those_without_a_target(
    monkeypatch: pytest.MonkeyPatch,
):
    name = "lightning.pytorch.cli._InstantiatorFn"
    with_head = build_linked(
        monkeypatch, f"--model.init_args.head={__name__}.Head", "--data.init_args.n_way=4"
    )
    model = with_head.model
    assert model.head.linear.in_features == WidthData.width and model.hparams["n_way"] == 4
    recorded = model.hparams.get("head", {}).get("init_args", {}).get("width")
    assert recorded == WidthData.width, broken(name, f"no longer records the linked width: {model.hparams}")
    assert model.hparams.get("_class_path") == f"{__name__}.HeadedModel", broken(
        name, "records no _class_path"
    )

    without_head = build_linked(monkeypatch, "--data.init_args.n_way=4")  # the link has no target
    assert without_head.model.head is None and without_head.model.hparams["n_way"] == 4


# -- WandbLogger -------------------------------------------------------------------------------------------
def test_wandb_init_arguments_are_what_the_run_starts_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    logger = WandbLogger(save_dir=tmp_path, offline=False)
    with private("WandbLogger._experiment, _offline and _wandb_init"):
        assert wandb_run(logger) is None and not logs_offline(logger)
        arguments = wandb_init_arguments(logger)
        assert arguments["dir"] == str(tmp_path), broken("WandbLogger._wandb_init", f"is {arguments}")
        arguments["notes"] = "set through wandb_init_arguments"
        log_offline_from_now(logger)
    started: dict[str, Any] = {}
    run = object()
    monkeypatch.setattr(wandb, "run", None)
    monkeypatch.setattr(wandb, "init", lambda **kwargs: started.update(kwargs) or run)
    assert logger.experiment is run
    assert started.get("notes") == "set through wandb_init_arguments" and started.get("mode") == "offline", (
        broken("WandbLogger._wandb_init", f"is not what wandb.init gets: {started}")
    )
    assert wandb_run(logger) is run and logs_offline(logger), broken(
        "WandbLogger._experiment", "is not the run"
    )
