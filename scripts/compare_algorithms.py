"""Every algorithm and baseline on the same MedMNIST split, budget and meta-test episodes: the full report.

    python scripts/compare_algorithms.py --runs_dir runs/compare --out compare.md -- --trainer.max_steps=300

For each method of :mod:`metaclinic.registry` this runs ``python -m metaclinic.fit`` on its
``configs/<name>_medmnist.yaml`` (Baseline++ is the Baseline config with the cosine classifier), then
``python -m metaclinic.evaluate`` on the run's best checkpoint for a shot curve over the same episodes, and
finally ``metaclinic.compare`` for paired differences to the first method (SimpleShot by default).
Everything after ``--`` is passed to every fit, so all methods share the backbone, data split and budget.
Writes Markdown tables (``--out``) and every number (``--out`` with ``.json``); a method that fails is
reported as such and the sweep goes on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from metaclinic import registry
from metaclinic.compare import Run, markdown, paired_differences, reference_runs

REPO = Path(__file__).resolve().parents[1]
# Every registered method (metaclinic.registry), baselines first: they are the reference.
METHODS = {m.name: m for m in registry.METHODS}
# ece: after temperature scaling on meta-validation; ece_uncalibrated: before it.
METRICS = ["accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece", "ece_uncalibrated"]


def timed(command: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Runs ``command``; its result and wall time in minutes. A failure's error output is printed."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
    return result, (time.perf_counter() - start) / 60


def run_method(name: str, args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """Fits ``name`` and evaluates its best checkpoint; returns paths, timings and the shot curve."""
    entry = METHODS[name]
    run_name = name.lower().replace("+", "p").replace("-", "")
    fit = [
        sys.executable, "-m", "metaclinic.fit", "--config", str(REPO / entry.config_file), *entry.args,
        f"--runs_dir={args.runs_dir}", f"--run_name={run_name}", "--trainer.enable_progress_bar=false",
        *overrides,
    ]  # fmt: skip
    result, fit_minutes = timed(fit)
    if result.returncode != 0:
        return {"error": f"fit exited with {result.returncode}", "fit_minutes": fit_minutes}
    run_dir = max(Path(args.runs_dir, run_name).glob("*/meta_test_report.json")).parent
    checkpoint = json.loads((run_dir / "meta_test_report.json").read_text())["checkpoint"]
    evaluate = [
        sys.executable, "-m", "metaclinic.evaluate", "--config", str(run_dir / "config.yaml"),
        "--ckpt_path", str(run_dir / checkpoint) if checkpoint else "null",
        "--shots", *map(str, args.shots), "--trainer.logger=false", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    result, evaluate_minutes = timed(evaluate)
    if result.returncode != 0:
        return {"error": f"evaluate exited with {result.returncode}", "run_dir": str(run_dir)}
    curve = json.loads((run_dir / "evaluation" / "shot_curve.json").read_text())
    return {
        "run_dir": str(run_dir),
        "report": str(run_dir / "meta_test_report.json"),
        "fit_minutes": fit_minutes,
        "evaluate_minutes": evaluate_minutes,
        "shot_curve": {k: r.get("metrics", {"error": r.get("error")}) for k, r in curve.items()},
    }


def percent(estimate: dict[str, float]) -> str:
    return f"{100 * estimate['mean']:.1f} ± {100 * estimate['ci95']:.1f}"


def tables(results: dict[str, dict[str, Any]], shots: list[int]) -> str:
    done = {name: r for name, r in results.items() if "error" not in r}
    lines = [
        "**At the configured shots: every metric, mean ± 95% CI (%)**",
        "",
        "| method | " + " | ".join(METRICS) + " | fit (min) |",
        "| --- |" + " --- |" * (len(METRICS) + 1),
    ]
    for name, result in results.items():
        if name not in done:
            lines.append(f"| {name} | {result['error']} |" + " |" * len(METRICS))
            continue
        metrics = json.loads(Path(result["report"]).read_text())["metrics"]
        cells = [percent(metrics[m]) if m in metrics else "" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {result['fit_minutes']:.1f} |")
    # The no-learning baselines every run scores on its own (shared) episodes: the first run's suffice.
    first = next(iter(done.values()), None)
    references = reference_runs(json.loads(Path(first["report"]).read_text())) if first else []
    for reference in references:
        metrics = reference.report["metrics"]
        cells = [percent(metrics[m]) if m in metrics else "" for m in METRICS]
        lines.append(f"| {reference.name} | " + " | ".join(cells) + " | 0 |")
    for metric in ("accuracy", "auroc"):
        lines += [
            "",
            f"**Shot curve: {metric} (%) on the same episodes' classes, mean ± 95% CI**",
            "",
            "| method | " + " | ".join(f"K={k}" for k in shots) + " |",
            "| --- |" + " --- |" * len(shots),
        ]
        for name, result in done.items():
            curve = result["shot_curve"]
            cells = [percent(curve[str(k)][metric]) if metric in curve[str(k)] else "n/a" for k in shots]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if len(done) > 1:
        runs = [Run.read(Path(r["report"])) for r in done.values()]
        for run, name in zip(runs, done, strict=True):
            run.name = name
        runs += references
        lines += ["", "**Paired differences on the same episodes**", ""]
        lines.append(markdown(paired_differences(runs), runs[0].name))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs_dir", default="runs/compare")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5, 10, 20])
    parser.add_argument("--out", type=Path, default=None, help="write the tables (Markdown) here")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    results: dict[str, dict[str, Any]] = {}
    for name in args.methods:
        results[name] = run_method(name, args, overrides)
        summary = {k: v for k, v in results[name].items() if k != "shot_curve"}
        print(f"{name}: {json.dumps(summary)}", flush=True)
        if args.out:  # after every method, so that a stopped sweep keeps what it measured
            args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    text = tables(results, args.shots)
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
