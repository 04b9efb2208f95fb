"""``python -m metaclinic.evaluate --config <run config> --ckpt_path <checkpoint>``: the meta-test report.

Evaluates a checkpoint on the run's fixed meta-test episodes (the same ones for every algorithm on the
same data configuration), then on the same episodes' classes at other shot counts (a shot curve), and
writes ``meta_test_report.json``, ``shot_curve.json`` and PNG plots into ``<run>/evaluation/`` (or
``--out``). The baseline runs scored on the same episodes (found under the run's ``runs_dir``, or given
with ``--baselines``) are evaluated at the same shot counts and shown beside the model: ``baselines.md``
(paired differences) and the same plots. Everything is logged to the run's W&B logger as well. Shot counts
that some meta-test class cannot supply (K shots plus the queries) are reported as such instead of
stopping the evaluation.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from metaclinic.cli import (
    MetaClinicCLI,
    add_no_learning_baselines,
    build_cli,
    publish_report,
    score_meta_test,
)
from metaclinic.compare import (
    Run,
    episode_key,
    find_baseline_reports,
    no_baseline_hint,
    publish_beside_baselines,
    reference_runs,
)
from metaclinic.errors import DataError, MetaclinicError
from metaclinic.evaluation.plots import plot_reliability, plot_shot_curves
from metaclinic.evaluation.report import REPORT_FILE, MetaTestReport
from metaclinic.experiment.storage import write_atomically

log = logging.getLogger("metaclinic")

DEFAULT_SHOTS = (1, 5, 10, 20)
CURVE_FILE = "shot_curve.json"
NOT_SCORED = {"error": "not scored in this evaluation"}


def shot_curve(
    cli: MetaClinicCLI, ckpt_path: str | None, shots: list[int], scored: MetaTestReport | None = None
) -> dict[str, Any]:
    """Reports at every shot count in ``shots``: ``{K: report dict}``, or ``{K: {"error": why}}``.

    Episode ``i`` draws its classes before its examples, so at every K it has the same classes. ``scored``
    is the report at the configured K when it is already computed (it is not scored again).
    """
    data, configured = cli.datamodule, cli.datamodule.n_shot
    curve: dict[str, Any] = {}
    try:
        for k in shots:
            if scored is not None and k == configured:
                curve[str(k)] = scored.to_dict()
                continue
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


def baseline_curve(
    run_dir: Path, shots: list[int], reference: dict[str, Any], data_overrides: list[str]
) -> tuple[Run, dict[str, Any]]:
    """A baseline run's report on the reference's episodes and its shot curve at ``shots``.

    The curve in ``<run_dir>/evaluation/shot_curve.json`` is reused when it holds every K on the reference's
    episodes; otherwise the run's checkpoint is scored again (and that file rewritten). ``data_overrides``
    (e.g. the data root on this machine) apply to the baseline too, so that it sees the same episodes.
    """
    report_path = run_dir / REPORT_FILE
    if not report_path.is_file():
        raise DataError(f"--baselines {run_dir}: no {REPORT_FILE}; give the directory of a finished run")
    run = Run.read(report_path)
    cache = run_dir / "evaluation" / CURVE_FILE
    cached = json.loads(cache.read_text()) if cache.is_file() else {}

    def reusable(k: int) -> bool:
        entry, wanted = cached.get(str(k)), reference.get(str(k), {})
        if entry is None:
            return False
        if "error" in entry or "error" in wanted:
            return "error" in entry and "error" in wanted
        return episode_key(entry) == episode_key(wanted)

    if all(reusable(k) for k in shots):
        curve = {str(k): cached[str(k)] for k in shots}
    else:
        checkpoint = run.report.get("checkpoint")
        args = ["--config", str(run_dir / "config.yaml"), "--trainer.logger=false", *data_overrides]
        if checkpoint:
            args.append(f"--ckpt_path={run_dir / checkpoint}")
        cli = build_cli(args, save_config=False)
        # Its report from fit is its point at the configured K, when on the reference's episodes.
        own = reference.get(str(run.report["n_shot"]), {})
        same = "error" not in own and own and episode_key(own) == episode_key(run.report)
        scored = MetaTestReport.from_dict(run.report) if same else None
        curve = shot_curve(cli, str(run_dir / checkpoint) if checkpoint else None, shots, scored)
        if cli.trainer.is_global_zero:
            cache.parent.mkdir(exist_ok=True)
            write_atomically(cache, json.dumps(curve, indent=1) + "\n")
    return run, curve


def no_learning_curves(curve: dict[str, Any], runs: list[Run]) -> dict[str, dict[str, Any]]:
    """The shot curves of the no-learning baselines, from the references of each point of ``curve``."""
    names = {run.report["algorithm"]: run.name for run in runs}
    return {
        names[algorithm]: {
            k: point if "error" in point else point.get("references", {}).get(algorithm, NOT_SCORED)
            for k, point in curve.items()
        }
        for algorithm in names
    }


def evaluate(
    config: str,
    ckpt_path: str,
    shots: list[int],
    out: Path | None,
    overrides: list[str],
    baselines: list[Path] | None = None,
) -> MetaTestReport:
    """Writes the report, shot curve, baselines beside it and plots; returns the report.

    ``baselines``: run directories of baseline methods to show beside the model; ``None`` finds the newest
    run of each baseline method under the run's ``runs_dir`` that was scored on the same episodes.
    """
    cli = build_cli(["--config", config, f"--ckpt_path={ckpt_path}", *overrides], save_config=False)
    out = out or Path(cli.run_dir) / "evaluation"
    add_no_learning_baselines(cli)
    report = score_meta_test(cli.trainer, cli.model, cli.datamodule, ckpt_path, cli.run_dir)
    curve = shot_curve(cli, ckpt_path, shots, scored=report)
    name = f"{report.algorithm} (this run)"
    beside = reference_runs(report.to_dict())
    curves = {name: curve, **no_learning_curves(curve, beside)}
    if not cli.model.is_baseline:
        if baselines is None:
            found = find_baseline_reports(Path(cli.config.runs_dir), report.to_dict())
            baselines = [path.parent for path in found]
        data_overrides = [arg for arg in overrides if arg.startswith("--data")]
        for run_dir in baselines:
            run, curves_of_run = baseline_curve(Path(run_dir), shots, curve, data_overrides)
            beside.append(
                Run(run.name, curves_of_run[str(report.n_shot)])
                if str(report.n_shot) in curves_of_run
                else run
            )
            curves[run.name] = curves_of_run
    if not cli.trainer.is_global_zero:
        return report
    publish_report(report, cli.trainer, out / REPORT_FILE)
    write_atomically(out / CURVE_FILE, json.dumps(curve, indent=1) + "\n")
    if beside:
        publish_beside_baselines([Run(name, report.to_dict()), *beside], out)
        baseline_curves = {run.name: curves[run.name] for run in beside}
        write_atomically(out / "baselines_shot_curves.json", json.dumps(baseline_curves, indent=1) + "\n")
    if not cli.model.is_baseline and len(beside) == len(reference_runs(report.to_dict())):
        hint = no_baseline_hint(Path(cli.config.runs_dir), Path(config))
        log.warning(hint + "\nOr name baseline runs with --baselines.")
    title = f"{report.n_way}-way, {len(report.per_episode.get('accuracy', []))} episodes"
    plots = plot_shot_curves(curves, out, title=title)
    title = f"{report.algorithm}, {report.n_shot}-shot"
    plots.append(plot_reliability(report.reliability, out / "reliability.png", title))
    if report.extra.get("temperature", 1.0) != 1.0:  # the diagram before temperature scaling too
        path = out / "reliability_uncalibrated.png"
        plots.append(plot_reliability(report.reliability_uncalibrated, path, f"{title}, uncalibrated"))
    for logger in cli.trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image("evaluation/plots", images=[str(p) for p in plots])
            rows = [
                [method, int(k), metric, e["mean"], e["ci95"]]
                for method, c in curves.items()
                for k, r in c.items()
                if "metrics" in r
                for metric, e in r["metrics"].items()
            ]
            columns = ["method", "shots", "metric", "mean", "ci95"]
            logger.log_table("evaluation/shot_curve", columns=columns, data=rows)
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
    parser.add_argument(
        "--baselines",
        type=Path,
        nargs="*",
        default=None,
        help="run directories of baselines to show beside the model (default: the newest run of each\n"
        "baseline method under the run's runs_dir on the same episodes; none given: no baselines)",
    )
    args, overrides = parser.parse_known_args(argv)
    try:
        evaluate(args.config, args.ckpt_path, args.shots, args.out, overrides, args.baselines)
    except MetaclinicError as error:
        raise SystemExit(f"metaclinic: error: {error}") from None


if __name__ == "__main__":
    main()
