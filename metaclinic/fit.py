"""``python -m metaclinic.fit --config configs/<experiment>.yaml``: meta-train, then report on meta-test."""

from __future__ import annotations

from metaclinic.cli import MetaClinicCLI, best_checkpoint, meta_test
from metaclinic.errors import DataError


def main(args: list[str] | None = None) -> None:
    cli = MetaClinicCLI(args=args)
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
        if cli.trainer.interrupted:
            return
        meta_test(cli.trainer, cli.model, cli.datamodule, best_checkpoint(cli.trainer), cli.run_dir)
    except DataError as error:  # bad input: the message says what to change, a traceback adds nothing
        raise SystemExit(f"metaclinic: error: {error}") from None


if __name__ == "__main__":
    main()
