"""The command line: LightningCLI with metaclinic's defaults, run directories and the meta-test report."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from metaclinic.algorithms.base import EpisodicModule
from metaclinic.config_errors import ConfigParser
from metaclinic.data.datamodule import EpisodicDataModule
from metaclinic.errors import DataError, WriteError
from metaclinic.evaluation.report import REPORT_FILE, MetaTestReport
from metaclinic.experiment.callbacks import CheckpointOnSigterm, MetaBatchSeeding, SigtermOnEveryProcess
from metaclinic.experiment.callbacks import ModelCheckpoint as StepEndCheckpoint
from metaclinic.experiment.lightning_internals import ModelInstantiator
from metaclinic.experiment.processes import (
    PENDING_RUN_DIR,
    SharedRunDirectory,
    check_launched_rank,
    launched_as_global_zero,
)
from metaclinic.experiment.run_record import CONFIG_FILE, RunRecord, flatten, resume_entry
from metaclinic.experiment.storage import AtomicCheckpointIO, remove_partial_files
from metaclinic.experiment.tracking import WandbLogger as SafeWandbLogger

log = logging.getLogger("metaclinic")

# "<pid>:<run dir>", handed to DDP worker processes, which re-run the command and must write into the same
# run directory; the process that set it (a notebook that fits twice) gets a new run directory each time.
RUN_DIR_ENV = "METACLINIC_RUN_DIR"

TRAINER_DEFAULTS: dict[str, Any] = {
    # MAML-style inner loops need autograd in validation and test (Lightning #17653).
    "inference_mode": False,
    # Episode samplers shard meta-batches across processes themselves.
    "use_distributed_sampler": False,
}


# How backbones are sized from the data module: its example shape, unless a command knows better.
InputShapeOf = Callable[[EpisodicDataModule], tuple[int, ...]]


def _class_name(node: Any) -> str:
    return str(getattr(node, "class_path", "")).rsplit(".", 1)[-1]


def example_shape(data: EpisodicDataModule) -> tuple[int, ...]:
    """The data's own input shape (for tables, read from the table): what fit and evaluate size from."""
    return tuple(data.example_shape)


class MetaClinicCLI(LightningCLI):
    """LightningCLI over every :class:`EpisodicModule` and :class:`EpisodicDataModule`, by ``class_path``.

    Each run writes into ``<runs_dir>/<run_name>/<timestamp>/``: the resolved ``config.yaml``,
    ``checkpoints/`` (best on ``val/accuracy`` and ``last``), the W&B run and ``meta_test_report.json``.

    So that a stopped run resumes exactly, every run gets
    :class:`~metaclinic.experiment.callbacks.MetaBatchSeeding` and
    :class:`~metaclinic.experiment.callbacks.CheckpointOnSigterm` (SIGTERM leaves ``checkpoints/last.ckpt``;
    with several processes :class:`~metaclinic.experiment.callbacks.SigtermOnEveryProcess` stops all of them
    after the same step), and on several nodes only global rank 0 creates the run directory
    (:mod:`metaclinic.experiment.processes`),
    and a config's ``ModelCheckpoint`` and ``WandbLogger`` become the drop-in
    :mod:`metaclinic.experiment.callbacks` and :mod:`metaclinic.experiment.tracking` classes (step checkpoints
    after validation; offline fallback, no data paths).

    Args:
        save_config: record the run (fit); evaluate and adapt only read one.
        with_trainer: ``False`` builds the model and data module alone (adapt): no trainer, no run
            directory, nothing in the environment, so a config of devices this machine lacks still loads.
        input_shape_of: what backbones are sized from (default :func:`example_shape`); adapt passes the
            shape saved in the checkpoint, so that no training data is read.
    """

    def __init__(
        self,
        args: list[str] | None = None,
        save_config: bool = True,
        *,
        with_trainer: bool = True,
        input_shape_of: InputShapeOf = example_shape,
        **kwargs: Any,
    ) -> None:
        self.records_run = save_config  # fit records the run; evaluate and adapt only read one
        self.with_trainer = with_trainer
        self.input_shape_of = input_shape_of
        self.created_run_dir: Path | None = None  # the directory this process made for a new run
        self.resume: dict[str, Any] | None = None
        super().__init__(
            EpisodicModule,
            EpisodicDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            save_config_callback=RunRecord if save_config else None,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,  # algorithms take their optimizer in the constructor
            parser_kwargs={"prog": "python -m metaclinic.fit"},
            parser_class=ConfigParser,  # unknown keys: the key and the closest valid one, no usage dump
            run=False,
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name", type=str | None, default=None, help="default: the config file's name"
        )
        parser.add_argument(
            "--runs_dir", type=str, default="runs", help="parent folder of all run directories"
        )
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="resume from this checkpoint; 'last' resumes the newest run of this run_name",
        )
        parser.add_argument(
            "--no_learning_baselines",
            type=bool,
            default=True,
            help="score the no-learning baselines (nearest centroid and logistic regression on the raw "
            "inputs) on the same meta-test episodes and report the model beside them",
        )
        parser.add_argument(
            "--calibrate",
            type=bool,
            default=True,
            help="fit the model's temperature on the meta-validation episodes after training",
        )
        parser.add_argument(
            "--meta_test",
            type=bool,
            default=True,
            help="false: stop after training and write the best meta-validation score to validation.json, "
            "without touching the meta-test episodes (what metaclinic.tune does for every trial)",
        )
        parser.add_argument(
            "--allow_config_change",
            type=bool,
            default=False,
            help="resume even if settings that change what is learned differ from the run's config.yaml; "
            "the change is recorded in config_history.yaml",
        )
        # The only place where a model is fitted to its data: fit, evaluate and adapt all build through here.
        parser.link_arguments("data.init_args.n_way", "model.init_args.n_way")
        parser.link_arguments(
            "data", "model.init_args.backbone.init_args.input_shape", self.backbone_input_shape, "instantiate"
        )

    def backbone_input_shape(self, data: EpisodicDataModule) -> tuple[int, ...]:
        """The input shape backbones are built for (the link above): ``input_shape_of(data)``."""
        return tuple(self.input_shape_of(data))

    # -- run directory ---------------------------------------------------------------------------------------
    def _run_name(self, config: Namespace) -> str:
        if config.run_name:
            return config.run_name
        files = config.get("config") or []
        return Path(str(files[-1])).stem if files else "run"

    def _resolve_run_dir(self, config: Namespace) -> Path:
        inherited = inherited_run_dir()
        if inherited is not None:
            return inherited
        group = Path(config.runs_dir) / self._run_name(config)
        if config.ckpt_path == "last":
            candidates = sorted(group.glob("*/checkpoints/last.ckpt"))
            if not candidates:
                raise FileNotFoundError(
                    f"--ckpt_path last: no run of {group} has checkpoints/last.ckpt to resume"
                )
            config.ckpt_path = str(candidates[-1])
            return candidates[-1].parent.parent
        if config.ckpt_path and Path(config.ckpt_path).parent.name == "checkpoints":
            return Path(config.ckpt_path).parent.parent
        if not self.records_run:  # evaluate, adapt: beside what they read, never a new run directory
            if config.ckpt_path:
                return Path(config.ckpt_path).parent
            files = [Path(str(f)) for f in config.get("config") or []]
            if files and files[-1].name == CONFIG_FILE:
                return files[-1].parent
        if not self.launched_zero:  # another node's process: rank 0 creates the directory and hands it over
            return group / PENDING_RUN_DIR
        self.created_run_dir = new_run_directory(group)
        return self.created_run_dir

    def _check_resume(self, run_dir: Path) -> None:
        """Refuses a resume that changes what is learned (see :mod:`metaclinic.experiment.run_record`)."""
        ckpt_path = self.config.ckpt_path
        if not (self.records_run and ckpt_path and (run_dir / CONFIG_FILE).is_file()):
            return
        remove_partial_files(Path(ckpt_path).parent)
        settings = flatten(yaml.safe_load(self.parser.dump(self.portable_config, skip_none=False)))
        self.resume = resume_entry(run_dir, settings, Path(ckpt_path), self.config.allow_config_change)

    def discard_failed_run(self) -> None:
        """Removes the run directory a set-up that failed before saving anything made (W&B run included)."""
        run_dir = self.created_run_dir
        if run_dir is None or not run_dir.is_dir() or any(run_dir.glob("checkpoints/*.ckpt")):
            return
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish(exit_code=1, quiet=True)
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # the run name's folder, when this was its only run
        self.created_run_dir = None

    def instantiate_classes(self) -> None:
        try:
            if self.with_trainer:
                super().instantiate_classes()
            else:  # what LightningCLI.instantiate_classes does before it builds the trainer
                self.config_init = self.parser.instantiate_classes(self.config)
                self.datamodule, self.model = self.config_init["data"], self.config_init["model"]
        except BaseException:
            self.discard_failed_run()
            raise

    def before_instantiate_classes(self) -> None:
        # Prepended, so that it replaces Lightning's instantiator of models (see ModelInstantiator).
        self.parser.add_instantiator(ModelInstantiator(self), EpisodicModule, subclasses=True, prepend=True)
        if not self.with_trainer:
            return
        config = self.config
        self.launched_zero = launched_as_global_zero()
        # config.yaml records the settings as given, not what is derived below for this run (its directory,
        # the checkpoint it resumes): ``fit --config <run>/config.yaml`` then starts a new run, same settings.
        self.portable_config = config.clone()
        self.portable_config.ckpt_path = None
        self.portable_config.run_name = self._run_name(config)  # not "config", the saved file's name
        run_dir = self._resolve_run_dir(config)
        try:
            self._check_resume(run_dir)
        except BaseException:
            self.discard_failed_run()
            raise
        os.environ[RUN_DIR_ENV] = f"{os.getpid()}:{run_dir}"
        config.trainer.default_root_dir = str(run_dir)
        logger = config.trainer.logger
        if _class_name(logger) == "WandbLogger":
            logger.class_path = f"{SafeWandbLogger.__module__}.{SafeWandbLogger.__name__}"
            logger.init_args.save_dir = str(run_dir)
            if logger.init_args.get("name") is None:
                logger.init_args.name = f"{self._run_name(config)}-{run_dir.name}"
        for callback in config.trainer.callbacks or []:
            if _class_name(callback) == "ModelCheckpoint":
                callback.class_path = f"{StepEndCheckpoint.__module__}.{StepEndCheckpoint.__name__}"
                if not callback.init_args.get("dirpath"):
                    callback.init_args.dirpath = str(run_dir / "checkpoints")
                    # The folder is this run's alone: a name taken can only be this run's own file of the
                    # same step, left by a run killed after saving it, which the resume saves again.
                    callback.init_args.enable_version_counter = False
        self.run_dir = run_dir

    def after_instantiate_classes(self) -> None:
        if not self.with_trainer:
            return
        check_launched_rank(self.trainer, self.launched_zero)
        callbacks = self.trainer.callbacks
        for callback in callbacks:
            if isinstance(callback, SaveConfigCallback):
                callback.config = self.portable_config
            if isinstance(callback, RunRecord):
                callback.run_dir, callback.resume = self.run_dir, self.resume
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default; a configured one stays
            strategy.checkpoint_io = AtomicCheckpointIO()
        present = {type(callback) for callback in callbacks}
        if MetaBatchSeeding not in present:
            seed = self.config.seed_everything
            callbacks.insert(0, MetaBatchSeeding(None if isinstance(seed, bool) else seed))
        # Checkpoints that monitor nothing (``last``) save after those that do, so that they hold their
        # latest state; the SIGTERM checkpoint comes after all of them.
        callbacks.sort(key=lambda c: isinstance(c, ModelCheckpoint) and c.monitor is None)
        if SigtermOnEveryProcess not in present:  # before the checkpoints: they read what it decides
            callbacks.insert(0, SigtermOnEveryProcess())
        if self.trainer.checkpoint_callbacks and CheckpointOnSigterm not in present:
            callbacks.append(CheckpointOnSigterm(self.run_dir / "checkpoints" / "last.ckpt"))
        callbacks.insert(0, SharedRunDirectory(self.run_dir, self.adopt_run_dir))

    def adopt_run_dir(self, run_dir: Path) -> None:
        """Takes global rank 0's run directory (:class:`SharedRunDirectory`): what a process on another
        node, which cannot inherit it, knows only once the processes can talk."""
        self.run_dir = run_dir
        os.environ[RUN_DIR_ENV] = f"{os.getpid()}:{run_dir}"
        for callback in self.trainer.callbacks:
            if isinstance(callback, RunRecord):
                callback.run_dir = run_dir
            if isinstance(callback, CheckpointOnSigterm):
                callback.path = run_dir / "checkpoints" / "last.ckpt"


def inherited_run_dir() -> Path | None:
    """The run directory a parent process (the DDP launcher) handed down, not one this process chose."""
    pid, _, path = os.environ.get(RUN_DIR_ENV, "").partition(":")
    return Path(path) if path and pid != str(os.getpid()) else None


def new_run_directory(group: Path) -> Path:
    """``<group>/<timestamp>``, created here so that runs started in the same second get their own."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        run_dir = group / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
    raise RuntimeError(f"{group}: no free run directory name for {stamp}")


def build_cli(args: list[str] | None, save_config: bool = True, **options: Any) -> MetaClinicCLI:
    """The CLI, with data errors raised while it links data to model (e.g. reading a table) unwrapped.

    ``save_config=False`` for commands that only read a run (evaluate, adapt): its config.yaml stays as
    the run wrote it. ``options``: :class:`MetaClinicCLI`'s ``with_trainer`` and ``input_shape_of``.
    """
    try:
        with warnings.catch_warnings():
            # Commands that pass ``args`` made them from their own command line, which is in sys.argv too.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            return MetaClinicCLI(args=args, save_config=save_config, **options)
    except ValueError as error:
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def build_model_and_data(
    config: str | Path, input_shape_of: InputShapeOf = example_shape
) -> tuple[EpisodicModule, EpisodicDataModule]:
    """A run config's model and data module, built as fit and evaluate build them, but without a trainer.

    The config's logger is not built (nothing is logged) and the random generators are not seeded (the
    weights come from a checkpoint). Errors are :func:`build_cli`'s.
    """
    args = ["--config", str(config), "--trainer.logger=false", "--seed_everything=false"]
    cli = build_cli(args, save_config=False, with_trainer=False, input_shape_of=input_shape_of)
    return cli.model, cli.datamodule


def meta_test(
    trainer: Trainer,
    model: LightningModule,
    datamodule: EpisodicDataModule,
    ckpt_path: str | None,
    run_dir: Path,
    calibration: dict | None = None,
) -> MetaTestReport:
    """Evaluates ``ckpt_path`` on the fixed meta-test episodes; prints, logs and writes the report.

    ``calibration``: how the checkpoint's temperature was fitted (recorded in the report).
    """
    report = score_meta_test(trainer, model, datamodule, ckpt_path, run_dir)
    if calibration is not None:
        report.extra["calibration"] = calibration
    publish_report(report, trainer, run_dir / REPORT_FILE)
    return report


def score_meta_test(
    trainer: Trainer,
    model: LightningModule,
    datamodule: EpisodicDataModule,
    ckpt_path: str | None,
    run_dir: Path,
) -> MetaTestReport:
    """The meta-test report of ``ckpt_path`` (or the current weights), without writing it anywhere."""
    # weights_only: a checkpoint is data; one that needs code to load is refused, never executed.
    trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, weights_only=True)
    report = trainer.lightning_module.test_report
    assert report is not None
    report.checkpoint = os.path.relpath(ckpt_path, run_dir) if ckpt_path else None
    # Equal fingerprints and seeds mean equal meta-test episodes: results can be compared pairwise.
    report.extra.update(split_fingerprint=datamodule.split_fingerprint, eval_seed=datamodule.eval_seed)
    report.extra["baseline"] = model.is_baseline
    report.extra["transductive"] = model.transductive
    for method, reference in zip(model.reference_methods, report.references.values(), strict=True):
        same_episodes = {key: report.extra[key] for key in ("split_fingerprint", "eval_seed")}
        reference.extra.update(same_episodes, baseline=True, transductive=method.transductive)
    return report


def publish_report(report: MetaTestReport, trainer: Trainer, path: Path, key: str = "meta_test") -> None:
    """Writes the report as JSON, prints its table and logs the table to W&B (from rank 0 only)."""
    if not trainer.is_global_zero:
        return
    try:
        report.write(path)
    except WriteError as error:
        print("\n" + report.table(), flush=True)  # the result is not lost with the file
        raise WriteError(f"{error}; {write_elsewhere(report, path)}") from None
    print("\n" + report.table() + f"\nReport: {path}\n", flush=True)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            rows = [[name, e.mean, e.ci95, e.n] for name, e in report.metrics.items()]
            logger.log_table(f"{key}/report", columns=["metric", "mean", "ci95", "episodes"], data=rows)


def write_elsewhere(report: MetaTestReport, path: Path) -> str:
    """Saves a report that could not be written at ``path`` in the current directory or ``$TMPDIR``."""
    name = f"{path.parent.parent.name}-{path.parent.name}-{path.name}"  # <run name>-<timestamp>-<file>
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        try:
            report.write(folder / name)
            return f"the report was saved to {folder / name} instead"
        except WriteError:
            continue
    return "it could not be saved in the current directory or $TMPDIR either"


def add_no_learning_baselines(cli: MetaClinicCLI) -> None:
    """Makes the meta-test score the no-learning baselines beside the model, unless switched off."""
    from metaclinic.baselines.no_learning import no_learning_baselines

    if cli.config.get("no_learning_baselines", True):
        model = cli.model
        model.reference_methods = [m for m in no_learning_baselines() if type(m) is not type(model)]


def best_checkpoint(trainer: Trainer) -> str | None:
    """The best checkpoint on the monitored metric, else the last one, else none (current weights)."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint):
        return callback.best_model_path or callback.last_model_path or None
    return None
