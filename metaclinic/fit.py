"""``python -m metaclinic.fit --config configs/<experiment>.yaml``: meta-train, then report on meta-test."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from metaclinic.cli import add_no_learning_baselines, best_checkpoint, build_cli, meta_test
from metaclinic.compare import show_baselines
from metaclinic.errors import DataError, MetaclinicError
from metaclinic.evaluation.calibration import calibrate
from metaclinic.evaluation.report import REPORT_FILE, MetaTestReport
from metaclinic.experiment.storage import write_atomically

VALIDATION_FILE = "validation.json"

log = logging.getLogger("metaclinic")


def run(args: list[str] | None = None) -> MetaTestReport | None:
    """Meta-trains as the config says and returns the meta-test report (``None`` if interrupted).

    After training, the temperature of the best checkpoint is fitted on the meta-validation episodes and
    written into it (:mod:`metaclinic.evaluation.calibration`; ``--calibrate=false`` leaves it at 1).
    Bad input raises :class:`DataError`; ``main`` turns it into a one-line message. Checkpoints are loaded
    with ``weights_only=True`` (tensors and plain data only): loading one never runs code from it.
    """
    cli = build_cli(args)
    checkpoint, calibration = None, None
    if cli.model.meta_trained:
        try:
            cli.trainer.fit(
                cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path, weights_only=True
            )
        except BaseException:
            if cli.trainer.global_step == 0:  # a set-up that failed: no empty run directory left behind
                cli.discard_failed_run()
            raise
        if cli.trainer.interrupted:
            return None
        if not cli.config.meta_test:
            write_validation_score(cli.trainer, cli.run_dir)
            return None
        checkpoint = best_checkpoint(cli.trainer)
        if checkpoint and cli.config.calibrate and cli.datamodule.pools["meta_val"].num_classes:
            calibration = calibrate(cli.trainer, cli.model, cli.datamodule, checkpoint)
    else:
        log.info("%s has nothing to meta-train: evaluating it directly", type(cli.model).__name__)
    add_no_learning_baselines(cli)
    report = meta_test(cli.trainer, cli.model, cli.datamodule, checkpoint, cli.run_dir, calibration)
    if cli.trainer.is_global_zero:
        show_baselines(cli.run_dir / REPORT_FILE, Path(cli.config.runs_dir), cli.model.is_baseline)
    return report


def write_validation_score(trainer: Trainer, run_dir: Path) -> None:
    """Writes the best ``val/accuracy`` of the run and its checkpoint to ``<run>/validation.json``."""
    monitors = [c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None) == "val/accuracy"]
    if not monitors or monitors[0].best_model_score is None:
        raise DataError(
            "--meta_test=false needs a meta-validation score: a ModelCheckpoint with monitor: val/accuracy "
            "in trainer.callbacks and classes in data.init_args.meta_val"
        )
    best = monitors[0]
    record = {
        "val_accuracy": float(best.best_model_score),
        "checkpoint": best.best_model_path,
        "step": trainer.global_step,
    }
    if trainer.is_global_zero:
        write_atomically(run_dir / VALIDATION_FILE, (json.dumps(record, indent=2) + "\n").encode())
    log.info("best val/accuracy %.4f (%s); meta-test not run", record["val_accuracy"], best.best_model_path)


def show_info_logs() -> None:
    """Prints metaclinic's INFO lines (column roles, splits, dropped rows) on the command line.

    Without a handler, Python shows only warnings; set-up decisions a user should see are logged at INFO.
    """
    logger = logging.getLogger("metaclinic")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(args: list[str] | None = None) -> None:
    show_info_logs()
    try:
        run(args)
    except MetaclinicError as error:  # bad input or a failed write: the message says it all
        raise SystemExit(f"metaclinic: error: {error}") from None
    except SIGTERMException:  # Lightning stopped on SIGTERM (the checkpoint is logged); exit as killed by it
        raise SystemExit(128 + signal.SIGTERM) from None


if __name__ == "__main__":
    main()
