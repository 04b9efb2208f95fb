"""Plots of evaluation results, written as PNG files.

Figures are built with matplotlib's object API (``Figure``), not ``pyplot``: no display is needed, and the
backend of a notebook or an application that imports metaclinic is left alone.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from metaclinic.experiment.storage import write_atomically

CURVE_METRICS = {"accuracy": "accuracy", "auroc": "AUROC"}


def plot_shot_curves(curves: dict[str, dict[str, Any]], out: Path, title: str = "") -> list[Path]:
    """One PNG per metric (accuracy, AUROC): each method's mean against shots, its 95% CI as a band.

    ``curves`` maps a method's name to its shot curve (``{K: report dict or {"error": ...}}``).
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric, label in CURVE_METRICS.items():
        figure = Figure(figsize=(5.0, 3.4), dpi=120)
        axes = figure.subplots()
        ticks: set[int] = set()
        for name, curve in curves.items():
            rows = sorted(
                (int(k), r["metrics"][metric]) for k, r in curve.items() if metric in r.get("metrics", {})
            )
            if not rows:
                continue
            shots = [k for k, _ in rows]
            mean = [100 * e["mean"] for _, e in rows]
            half = [100 * e["ci95"] for _, e in rows]
            axes.plot(shots, mean, marker="o", label=name)
            axes.fill_between(shots, [m - h for m, h in zip(mean, half, strict=True)],
                              [m + h for m, h in zip(mean, half, strict=True)], alpha=0.2)  # fmt: skip
            ticks.update(shots)
        if not ticks:
            continue
        axes.set(xscale="log", xlabel="shots per class (K)", ylabel=f"{label} (%)", title=title)
        axes.set_xticks(sorted(ticks), [str(k) for k in sorted(ticks)])
        axes.minorticks_off()
        axes.grid(alpha=0.3)
        if len(curves) > 1:
            axes.legend(fontsize=7)
        figure.tight_layout()
        path = out / f"{metric}_vs_shots.png"
        save_figure(figure, path)
        paths.append(path)
    return paths


def plot_reliability(reliability: dict[str, list[float]], path: Path, title: str = "") -> Path:
    """Reliability diagram: accuracy against mean confidence per bin of top-class probability."""
    path.parent.mkdir(parents=True, exist_ok=True)
    upper = reliability["bin_upper"]
    width = upper[0]
    figure = Figure(figsize=(4.2, 4.0), dpi=120)
    axes = figure.subplots()
    filled = [i for i, n in enumerate(reliability["count"]) if n > 0]
    axes.bar([upper[i] - width / 2 for i in filled], [reliability["accuracy"][i] for i in filled],
             width=width * 0.9, alpha=0.7, label="accuracy")  # fmt: skip
    axes.plot([reliability["confidence"][i] for i in filled], [reliability["accuracy"][i] for i in filled],
              "o", color="black", markersize=3, label="mean confidence")  # fmt: skip
    axes.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="top-class probability", ylabel="accuracy", title=title)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)
    return path


def save_figure(figure: Figure, path: Path) -> None:
    """Renders ``figure`` as PNG and writes it atomically (a failure names ``path``)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_atomically(path, buffer.getvalue())
