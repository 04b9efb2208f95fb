"""``python -m metaclinic.evaluate --config <run config> --ckpt_path <checkpoint>``: the meta-test report.

Evaluates a checkpoint on the run's fixed meta-test episodes (the same ones for every algorithm on the
same data configuration), then on the same episodes' classes at other shot counts (a shot curve), and
writes ``evaluation.json`` and PNG plots next to the checkpoint's run (or into ``--out``). Everything is
logged to the run's W&B logger as well. Shot counts that some meta-test class cannot supply (K shots
plus the queries) are reported as such instead of stopping the evaluation.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from metaclinic.cli import MetaClinicCLI, build_cli, publish_report, score_meta_test
from metaclinic.errors import DataError
from metaclinic.plots import plot_reliability, plot_shot_curves
from metaclinic.report import MetaTestReport

log = logging.getLogger("metaclinic")

DEFAULT_SHOTS = (1, 5, 10, 20)


def shot_curve(cli: MetaClinicCLI, ckpt_path: str | None, shots: list[int]) -> dict[str, Any]:
    """Reports at every shot count in ``shots``: ``{K: report dict}``, or ``{K: {"error": why}}``.

    Episode ``i`` draws its classes before its examples, so at every K it has the same classes.
    """
    data, configured = cli.datamodule, cli.datamodule.n_shot
    curve: dict[str, Any] = {}
    try:
        for k in shots:
            data.n_shot = k
            try:
                report = score_meta_test(cli.trainer, cli.model, data, ckpt_path, cli.run_dir)
            except DataError as error:
                curve[str(k)] = {"error": str(error)}
                log.warning("shot curve: %d shots skipped: %s", k, error)
                continue
            curve[str(k)] = report.to_dict()
    finally:
        data.n_shot = configured
    return curve


def evaluate(
    config: str, ckpt_path: str, shots: list[int], out: Path | None, overrides: list[str]
) -> MetaTestReport:
    """Writes ``evaluation.json`` (the report plus the shot curve) and the plots; returns the report."""
    cli = build_cli(["--config", config, f"--ckpt_path={ckpt_path}", *overrides])
    out = out or Path(cli.run_dir) / "evaluation"
    report = score_meta_test(cli.trainer, cli.model, cli.datamodule, ckpt_path, cli.run_dir)
    curve = shot_curve(cli, ckpt_path, shots)
    if not cli.trainer.is_global_zero:
        return report
    publish_report(report, cli.trainer, out / "meta_test_report.json")
    (out / "shot_curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    title = f"{report.algorithm}, {report.n_way}-way"
    plots = plot_shot_curves(curve, out, title=title)
    plots.append(
        plot_reliability(report.reliability, out / "reliability.png", f"{title} {report.n_shot}-shot")
    )
    for logger in cli.trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image("evaluation/plots", images=[str(p) for p in plots])
            rows = [
                [int(k), name, e["mean"], e["ci95"]]
                for k, r in curve.items()
                if "metrics" in r
                for name, e in r["metrics"].items()
            ]
            logger.log_table("evaluation/shot_curve", columns=["shots", "metric", "mean", "ci95"], data=rows)
    print(f"Shot curve and plots: {out}", flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m metaclinic.evaluate",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="the run's config.yaml (or any fit config)")
    parser.add_argument("--ckpt_path", required=True, help="the checkpoint to evaluate")
    parser.add_argument("--shots", type=int, nargs="+", default=list(DEFAULT_SHOTS), help="shot curve")
    parser.add_argument("--out", type=Path, default=None, help="default: <run dir>/evaluation")
    args, overrides = parser.parse_known_args(argv)
    try:
        evaluate(args.config, args.ckpt_path, args.shots, args.out, overrides)
    except DataError as error:
        raise SystemExit(f"metaclinic: error: {error}") from None


if __name__ == "__main__":
    main()
