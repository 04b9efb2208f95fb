"""Runs every ``configs/<algo>_medmnist.yaml`` with the same overrides and prints a results table.

    python scripts/compare_algorithms.py --runs_dir runs/compare -- --trainer.max_steps=300

Everything after ``--`` is passed to every ``python -m metaclinic.fit`` call, so all algorithms share the
backbone, data split and budget. The table (Markdown) gives meta-test accuracy with its 95% CI and the
wall time of each run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ALGORITHMS = [
    "maml",
    "fomaml",
    "anil",
    "metasgd",
    "reptile",
    "protonet",
    "matchingnet",
    "relationnet",
    "siamese",
    "simpleshot",
    "baseline",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs_dir", default="runs/compare")
    parser.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=ALGORITHMS)
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    repo = Path(__file__).resolve().parents[1]
    rows = [
        "| algorithm | meta-test accuracy (%) | 95% CI (±) | episodes | wall time (min) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in args.algorithms:
        config = repo / "configs" / f"{name}_medmnist.yaml"
        command = [
            sys.executable,
            "-m",
            "metaclinic.fit",
            "--config",
            str(config),
            f"--runs_dir={args.runs_dir}",
            "--trainer.enable_progress_bar=false",
            *overrides,
        ]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        minutes = (time.perf_counter() - start) / 60
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
            rows.append(f"| {name} | failed (exit {result.returncode}) | | | {minutes:.1f} |")
            continue
        report_file = max(Path(args.runs_dir, f"{name}_medmnist").glob("*/meta_test_report.json"))
        accuracy = json.loads(report_file.read_text())["metrics"]["accuracy"]
        rows.append(
            f"| {name} | {100 * accuracy['mean']:.2f} | {100 * accuracy['ci95']:.2f} | {accuracy['n']} | "
            f"{minutes:.1f} |"
        )
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
