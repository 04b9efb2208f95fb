"""Leave-one-hospital-out on UCI Heart Disease: every held-out hospital, every K, meta-learners and baselines.

    python scripts/heart_disease_loho.py --out loho.md
    python scripts/heart_disease_loho.py --hospitals va --shots 5 -- --trainer.max_steps=200

For each held-out hospital and each K, every method runs ``configs/heart_disease_loho.yaml`` with the
other three hospitals as meta-train, so all methods of a cell are scored on the same fixed meta-test
episodes (checked through the split fingerprint). Everything after ``--`` is passed to every run. A cell
whose held-out hospital has too few patients of a class for K shots plus the queries says so instead of
stopping the sweep. Prints (and writes with ``--out``) accuracy and AUROC tables, mean ± 95% CI.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from metaclinic.errors import DataError
from metaclinic.fit import run

HOSPITALS = ["cleveland", "hungarian", "switzerland", "va"]
METHODS = {
    "MAML": "metaclinic.algorithms.MAML",
    "ProtoNet": "metaclinic.algorithms.ProtoNet",
    "LR, support set only": "metaclinic.baselines.SupportLogisticRegression",
    "LR, 3 hospitals pooled": "metaclinic.baselines.PooledLogisticRegression",
    "LR, pooled + recalibrated": "metaclinic.baselines.RecalibratedLogisticRegression",
    "LR, pooled + refit": "metaclinic.baselines.RefitLogisticRegression",
    "SimpleShot": "metaclinic.baselines.SimpleShot",
    "Baseline": "metaclinic.baselines.Baseline",
    "Baseline++": "metaclinic.baselines.BaselinePlusPlus",
}
REPO = Path(__file__).resolve().parents[1]
NO_LEARNING = "nearest centroid (no learning)"
# table titles; ECE is after temperature scaling where the run had meta-validation episodes to fit it on
METRICS = {"accuracy": "accuracy", "auroc": "AUROC", "ece": "ECE"}  # scored by every run beside its model


def run_cell(hospital: str, shots: int, method: str, args: argparse.Namespace, overrides: list[str]) -> dict:
    others = ",".join(h for h in HOSPITALS if h != hospital)
    command = [
        "--config", str(args.config),
        f"--model={METHODS[method]}",
        f"--data.init_args.meta_train=[{others}]",
        f"--data.init_args.meta_test=[{hospital}]",
        f"--data.init_args.n_shot={shots}",
        f"--runs_dir={args.runs_dir}",
        f"--run_name={hospital}-{shots}shot-{''.join(c for c in method.replace('+', 'p') if c.isalnum())}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *overrides,
    ]  # fmt: skip
    start = time.perf_counter()
    try:
        report = run(command)
    except DataError as error:
        return {"error": str(error)}
    assert report is not None
    return {
        **{m: report.metrics[m].__dict__ for m in (*METRICS, "ece_uncalibrated") if m in report.metrics},
        "temperature": report.extra.get("temperature"),
        "episodes": report.episodes,
        "split_fingerprint": report.extra.get("split_fingerprint"),
        "lam": report.extra.get("lam"),  # RefitLogisticRegression's penalty, chosen within meta-train
        # the no-learning baselines every run scores on its own episodes
        "references": {
            name: {m: r.metrics[m].__dict__ for m in METRICS if m in r.metrics}
            for name, r in report.references.items()
        },
        "minutes": (time.perf_counter() - start) / 60,
    }


def tables(results: dict, hospitals: list[str], shots: list[int], methods: list[str]) -> str:
    lines, notes = [], {}
    for metric, title in METRICS.items():
        lines += [
            f"**Meta-test {title} (%), mean ± 95% CI**",
            "",
            "| held-out hospital | K | " + " | ".join(methods) + " |",
            "| --- | --- |" + " --- |" * len(methods),
        ]
        for hospital in hospitals:
            for k in shots:
                cells = []
                for method in methods:
                    result = results[f"{hospital}/{k}/{method}"]
                    if "error" in result:
                        note = notes.setdefault(result["error"], len(notes) + 1)
                        cells.append(f"n/a [{note}]")
                    elif metric not in result:
                        cells.append("")
                    else:
                        cells.append(
                            f"{100 * result[metric]['mean']:.1f} ± {100 * result[metric]['ci95']:.1f}"
                        )
                lines.append(f"| {hospital} | {k} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"[{n}] {error}" for error, n in notes.items()]
    chosen = [
        f"{hospital} K={k}: {results[f'{hospital}/{k}/{method}']['lam']:g}"
        for method in methods
        for hospital in hospitals
        for k in shots
        if results[f"{hospital}/{k}/{method}"].get("lam") is not None
    ]
    if chosen:  # by leave-one-hospital-out within the meta-train hospitals (see RefitLogisticRegression)
        lines += [
            "",
            "Refit penalty lambda (chosen on the meta-train hospitals unless given): " + "; ".join(chosen),
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=REPO / "configs/heart_disease_loho.yaml")
    parser.add_argument("--runs_dir", default="runs/loho")
    parser.add_argument("--hospitals", nargs="+", default=HOSPITALS, choices=HOSPITALS)
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5, 10])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", type=Path, default=None, help="write the tables (Markdown) here")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    results: dict[str, dict] = {}
    for hospital in args.hospitals:
        for k in args.shots:
            for method in args.methods:
                result = run_cell(hospital, k, method, args, overrides)
                results[f"{hospital}/{k}/{method}"] = result
                print(f"{hospital} K={k} {method}: {json.dumps(result)}", flush=True)
            fingerprints = {results[f"{hospital}/{k}/{m}"].get("split_fingerprint") for m in args.methods}
            assert len(fingerprints - {None}) <= 1, f"methods of {hospital} K={k} saw different episodes"
            scored = [
                r["references"]
                for m in args.methods
                if "NearestCentroid" in (r := results[f"{hospital}/{k}/{m}"]).get("references", {})
            ]
            results[f"{hospital}/{k}/{NO_LEARNING}"] = (
                scored[0]["NearestCentroid"] if scored else {"error": "not scored"}
            )
    text = tables(results, args.hospitals, args.shots, [NO_LEARNING, *args.methods])
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
