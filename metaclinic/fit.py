"""``python -m metaclinic.fit --config configs/<experiment>.yaml``: meta-train, then report on meta-test."""

from __future__ import annotations

from metaclinic.cli import MetaClinicCLI, best_checkpoint, meta_test


def main(args: list[str] | None = None) -> None:
    cli = MetaClinicCLI(args=args)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
    if cli.trainer.interrupted:
        return
    meta_test(cli.trainer, cli.model, cli.datamodule, best_checkpoint(cli.trainer), cli.run_dir)


if __name__ == "__main__":
    main()
