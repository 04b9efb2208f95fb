"""``python -m metaclinic.tune --config <experiment>.yaml --grid <grid>.yaml``: settings chosen on meta-val.

Every combination of the grid's values is one trial: a full ``metaclinic.fit`` run with those overrides and
``--meta_test=false``, so its score is its best ``val/accuracy`` on the meta-validation episodes and no trial
ever draws a meta-test episode. The trials and the winner go to ``<runs_dir>/<name>_tuning.json``; the
meta-test report is then the winner's alone (``python -m metaclinic.evaluate`` on its checkpoint, or a fresh
fit with its overrides), so the test episodes are used once, after the choice.

A grid file maps dotted config keys to lists of values::

    model.init_args.inner_lr: [0.1, 0.4]
    model.init_args.train_steps: [1, 3]

A plain loop over Lightning fits rather than Optuna: the grids worth running on the machines we target are a
handful of points, each trial a whole fit, so an exhaustive, ordered, reproducible grid is what the budget
allows; Optuna's samplers and pruners pay off for larger searches (a later addition). Trials run one after
another in this process, on one device each (``--trainer.devices=1``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from metaclinic.cli import RUN_DIR_ENV
from metaclinic.errors import DataError, MetaclinicError
from metaclinic.experiment.storage import write_atomically
from metaclinic.fit import VALIDATION_FILE
from metaclinic.fit import run as fit

log = logging.getLogger("metaclinic")


def read_grid(path: Path) -> dict[str, list[Any]]:
    """The grid file as ``{dotted key: [values]}``, or an error naming what is wrong with it."""
    try:
        grid = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DataError(f"{path}: not a readable YAML grid ({error})") from None
    if not isinstance(grid, dict) or not grid:
        raise DataError(f"{path}: expected a mapping of config keys to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise DataError(f"{path}: {key} should list the values to try, got {values!r}")
    return grid


def trials(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the grid's order."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def run(config: Path, grid_path: Path, name: str, runs_dir: Path, fit_args: list[str]) -> dict[str, Any]:
    """Fits every trial and returns (and writes) the trials with their scores and the best one."""
    grid = read_grid(grid_path)
    results = []
    for i, settings in enumerate(trials(grid)):
        overrides = [f"--{key}={json.dumps(value)}" for key, value in settings.items()]
        run_name = f"{name}_trial{i:02d}"
        log.info("trial %d: %s", i, " ".join(overrides))
        os.environ.pop(RUN_DIR_ENV, None)  # each trial is a new run, not the previous trial's
        fit(["--config", str(config), *fit_args, *overrides, "--meta_test=false", f"--runs_dir={runs_dir}",
             f"--run_name={run_name}"])  # fmt: skip
        newest = max((runs_dir / run_name).glob(f"*/{VALIDATION_FILE}"), key=lambda p: p.stat().st_mtime)
        score = json.loads(newest.read_text())
        results.append({"settings": settings, "overrides": overrides, "run_dir": str(newest.parent), **score})
    best = max(results, key=lambda r: r["val_accuracy"])
    summary = {"config": str(config), "grid": grid, "fit_args": fit_args, "trials": results, "best": best}
    out = runs_dir / f"{name}_tuning.json"
    write_atomically(out, json.dumps(summary, indent=2) + "\n")
    log.info(
        "best of %d trials: val/accuracy %.4f with %s (%s)",
        len(results),
        best["val_accuracy"],
        best["settings"],
        out,
    )
    return summary


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the experiment's fit config")
    parser.add_argument("--grid", type=Path, required=True, help="YAML: config key -> list of values")
    parser.add_argument("--name", default=None, help="prefix of the trial runs (default: the config's name)")
    parser.add_argument("--runs_dir", type=Path, default=Path("runs"))
    known, fit_args = parser.parse_known_args(args)
    logging.basicConfig(level=logging.INFO)
    try:
        run(known.config, known.grid, known.name or known.config.stem, known.runs_dir, fit_args)
    except MetaclinicError as error:
        raise SystemExit(f"metaclinic: error: {error}") from None


if __name__ == "__main__":
    main()
