"""``python -m metaclinic.compare A/meta_test_report.json B/meta_test_report.json ...``: runs side by side.

Reports scored on the same episodes (same split fingerprint and evaluation seed) are compared pairwise:
for every metric, the mean per-episode difference to the first report with its 95% confidence interval.
Pairing removes the variation between episodes that two independent confidence intervals both carry, so
a difference can be significant although the two intervals overlap.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metaclinic.errors import DataError, MetaclinicError
from metaclinic.evaluation.report import REPORT_FILE, Estimate, in_percent, shown
from metaclinic.experiment.storage import write_atomically

log = logging.getLogger("metaclinic")

MAX_NAME = 40
BASELINES_FILE = "baselines.md"
NO_BASELINE = (
    "No trained baseline (SimpleShot, Baseline, Baseline++) under %s was scored on these meta-test episodes "
    "(the no-learning baselines are in the report above). To see this result beside one, fit the same config "
    "and data settings with "
    "--model=metaclinic.baselines.SimpleShot and a --run_name of its own, into the same --runs_dir"
)
RUN_TIMESTAMP = re.compile(r"\d{8}-\d{6}(-\d+)?")  # the name of a run directory, see MetaClinicCLI


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
        run_dir = path.parent.parent if path.parent.name == "evaluation" else path.parent
        # <runs_dir>/<run name>/<timestamp>/: the run's name says more than its start time
        run = run_dir.parent.name if RUN_TIMESTAMP.fullmatch(run_dir.name) else run_dir.name
        return cls(f"{report['algorithm']} ({run})"[:MAX_NAME], report)

    def values(self, metric: str) -> torch.Tensor:
        return torch.tensor(self.report["per_episode"][metric], dtype=torch.float64)


def episode_key(report: dict[str, Any]) -> tuple:
    """Equal keys, equal episodes: same split, evaluation seed, ways, shots, queries and episode indices."""
    extra = report.get("extra", {})
    return (
        extra.get("split_fingerprint"), extra.get("eval_seed"), report["n_way"], report["n_shot"],
        report["n_query"], tuple(report.get("episode_index", [])),
    )  # fmt: skip


def check_same_episodes(runs: list[Run]) -> None:
    """Pairing needs the same episodes."""
    reference = episode_key(runs[0].report)
    for run in runs[1:]:
        if episode_key(run.report) != reference:
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
        "| run | " + " | ".join(f"{m} (%)" if in_percent(m) else m for m in metrics) + " |",
        "| --- |" + " --- |" * len(metrics),
    ]
    for name, row in table.items():
        cells = []
        for metric in metrics:
            value = row[metric]["value"]
            cell = f"{shown(metric, value.mean)} ± {shown(metric, value.ci95)}"
            if "difference" in row[metric]:
                diff = row[metric]["difference"]
                sign = "+" if diff.mean >= 0 else "−"
                cell += f" (Δ {sign}{shown(metric, abs(diff.mean))} ± {shown(metric, diff.ci95)})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"\nΔ: paired mean difference to {reference} over the same episodes, with its 95% CI.")
    return "\n".join(lines)


def find_baseline_reports(runs_dir: Path, reference: dict[str, Any]) -> list[Path]:
    """The newest report of every baseline method under ``runs_dir`` scored on ``reference``'s episodes.

    Runs are ``<runs_dir>/<run name>/<timestamp>/meta_test_report.json``; a baseline's report says so
    (``extra.baseline``). Sorted by method name, so the table's order does not depend on run times.
    """
    newest: dict[str, tuple[float, Path]] = {}
    for path in Path(runs_dir).glob(f"*/*/{REPORT_FILE}"):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a run being written, or not a report: not a baseline to show
        if not report.get("extra", {}).get("baseline") or "per_episode" not in report:
            continue
        if episode_key(report) != episode_key(reference):
            continue
        mtime = path.stat().st_mtime
        if report["algorithm"] not in newest or mtime > newest[report["algorithm"]][0]:
            newest[report["algorithm"]] = (mtime, path)
    return [newest[name][1] for name in sorted(newest)]


def show_baselines(report_path: Path, runs_dir: Path, is_baseline: bool = False) -> str | None:
    """Prints the report beside the baselines scored on its episodes and writes ``baselines.md`` next to it.

    The baselines are the no-learning ones scored in the same run (the report's ``references``) and, for a
    model that is not a baseline itself, the newest baseline run of each method under ``runs_dir`` on the
    same episodes (with a hint how to make one when there is none). Returns the table, or ``None`` when
    there is nothing to show beside it.
    """
    reference = Run.read(report_path)
    beside = reference_runs(reference.report)
    if not is_baseline:
        found = find_baseline_reports(runs_dir, reference.report)
        if not found:
            log.warning(no_baseline_hint(runs_dir, report_path.parent / "config.yaml"))
        beside += map(Run.read, found)
    return publish_beside_baselines([reference, *beside], report_path.parent) if beside else None


def reference_runs(report: dict[str, Any]) -> list[Run]:
    """The no-learning baselines that ``report``'s run scored on its own episodes."""
    return [Run(f"{name} (no learning)"[:MAX_NAME], r) for name, r in report.get("references", {}).items()]


def no_baseline_hint(runs_dir: Path, config: Path | None = None) -> str:
    """How to get a baseline on the same episodes: the command itself when the run's config is at hand."""
    hint = NO_BASELINE % runs_dir
    if config is None or not config.is_file():
        return hint + "."
    command = f"python -m metaclinic.fit --config {config} --model=metaclinic.baselines.SimpleShot"
    return f"{hint}:\n    {command} --run_name=simpleshot"


def publish_beside_baselines(runs: list[Run], folder: Path) -> str:
    """The first run beside the others (paired differences): printed, written to ``folder/baselines.md``."""
    text = markdown(paired_differences(runs), runs[0].name)
    print(f"\nBeside the baselines (same episodes):\n{text}\n", flush=True)
    write_atomically(folder / BASELINES_FILE, text + "\n")
    return text


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
    except MetaclinicError as error:
        raise SystemExit(f"metaclinic: error: {error}") from None
    print(text)
    if args.out:
        write_atomically(args.out, text + "\n")


if __name__ == "__main__":
    main()
