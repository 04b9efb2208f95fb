"""``python -m metaclinic.compare A/meta_test_report.json B/meta_test_report.json ...``: runs side by side.

Reports scored on the same episodes (same split fingerprint and evaluation seed) are compared pairwise:
for every metric, the mean per-episode difference to the first report with its 95% confidence interval.
Pairing removes the variation between episodes that two independent confidence intervals both carry, so
a difference can be significant although the two intervals overlap.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metaclinic.errors import DataError
from metaclinic.report import Estimate

MAX_NAME = 28


@dataclass
class Run:
    """One report, named for the table."""

    name: str
    report: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> Run:
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(f"{path}: not a readable report ({error})") from None
        if "per_episode" not in report:
            raise DataError(
                f"{path}: has no per-episode values (written by an older metaclinic); re-evaluate"
            )
        run = path.parent.parent.name if path.parent.name == "evaluation" else path.parent.name
        return cls(f"{report['algorithm']} ({run})"[:MAX_NAME], report)

    def values(self, metric: str) -> torch.Tensor:
        return torch.tensor(self.report["per_episode"][metric], dtype=torch.float64)


def check_same_episodes(runs: list[Run]) -> None:
    """Pairing needs the same episodes: same split, evaluation seed, shots and episode indices."""
    reference = runs[0].report

    def key(report: dict[str, Any]) -> tuple:
        extra = report.get("extra", {})
        return (
            extra.get("split_fingerprint"), extra.get("eval_seed"), report["n_way"], report["n_shot"],
            report["n_query"], tuple(report.get("episode_index", [])),
        )  # fmt: skip

    for run in runs[1:]:
        if key(run.report) != key(reference):
            raise DataError(
                f"{run.name} and {runs[0].name} were not scored on the same episodes (split fingerprint, "
                "evaluation seed, ways/shots/queries or episode indices differ); pairwise differences "
                "would be meaningless"
            )


def paired_differences(runs: list[Run]) -> dict[str, dict[str, dict[str, Estimate]]]:
    """``{run: {metric: {"value": Estimate, "difference": Estimate vs the first run}}}``."""
    check_same_episodes(runs)
    metrics = [m for m in runs[0].report["per_episode"] if all(m in r.report["per_episode"] for r in runs)]
    table: dict[str, dict[str, dict[str, Estimate]]] = {}
    for run in runs:
        table[run.name] = {}
        for metric in metrics:
            entry = {"value": Estimate.of(run.values(metric))}
            if run is not runs[0]:
                entry["difference"] = Estimate.of(run.values(metric) - runs[0].values(metric))
            table[run.name][metric] = entry
    return table


def markdown(table: dict[str, dict[str, dict[str, Estimate]]], reference: str) -> str:
    metrics = list(next(iter(table.values())))
    lines = [
        "| run | " + " | ".join(f"{m} (%)" for m in metrics) + " |",
        "| --- |" + " --- |" * len(metrics),
    ]
    for name, row in table.items():
        cells = []
        for metric in metrics:
            cell = str(row[metric]["value"])
            if "difference" in row[metric]:
                diff = row[metric]["difference"]
                sign = "+" if diff.mean >= 0 else "−"
                cell += f" (Δ {sign}{100 * abs(diff.mean):.2f} ± {100 * diff.ci95:.2f})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"\nΔ: paired mean difference to {reference} over the same episodes, with its 95% CI.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m metaclinic.compare", description=__doc__)
    parser.add_argument(
        "reports", type=Path, nargs="+", help="meta_test_report.json files; the first is the reference"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the table (Markdown) here")
    args = parser.parse_args(argv)
    try:
        runs = [Run.read(path) for path in args.reports]
        text = markdown(paired_differences(runs), runs[0].name)
    except DataError as error:
        raise SystemExit(f"metaclinic: error: {error}") from None
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
