"""``python -m metaclinic.fit --config configs/<experiment>.yaml``: meta-train, then report on meta-test."""

from __future__ import annotations

import logging

from metaclinic.cli import MetaClinicCLI, best_checkpoint, meta_test
from metaclinic.errors import DataError
from metaclinic.report import MetaTestReport

log = logging.getLogger("metaclinic")


def run(args: list[str] | None = None) -> MetaTestReport | None:
    """Meta-trains as the config says and returns the meta-test report (``None`` if interrupted).

    Bad input raises :class:`DataError`; ``main`` turns it into a one-line message.
    """
    cli = _build_cli(args)
    checkpoint = None
    if cli.model.meta_trained:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
        if cli.trainer.interrupted:
            return None
        checkpoint = best_checkpoint(cli.trainer)
    else:
        log.info("%s has nothing to meta-train: evaluating it directly", type(cli.model).__name__)
    return meta_test(cli.trainer, cli.model, cli.datamodule, checkpoint, cli.run_dir)


def _build_cli(args: list[str] | None) -> MetaClinicCLI:
    """The CLI, with data errors raised while it links data to model (e.g. reading a table) unwrapped."""
    try:
        return MetaClinicCLI(args=args)
    except ValueError as error:
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def main(args: list[str] | None = None) -> None:
    try:
        run(args)
    except DataError as error:  # bad input: the message says what to change, a traceback adds nothing
        raise SystemExit(f"metaclinic: error: {error}") from None


if __name__ == "__main__":
    main()
