"""Plots of evaluation results, written as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

CURVE_METRICS = {"accuracy": "accuracy", "auroc": "AUROC"}


def plot_shot_curves(curve: dict[str, Any], out: Path, title: str = "") -> list[Path]:
    """One PNG per metric (accuracy, AUROC): mean against shots with its 95% CI as a band."""
    out.mkdir(parents=True, exist_ok=True)
    points = sorted((int(k), r["metrics"]) for k, r in curve.items() if "metrics" in r)
    paths = []
    for metric, label in CURVE_METRICS.items():
        rows = [(k, m[metric]) for k, m in points if metric in m]
        if not rows:
            continue
        shots = [k for k, _ in rows]
        mean = [100 * e["mean"] for _, e in rows]
        half = [100 * e["ci95"] for _, e in rows]
        figure, axes = plt.subplots(figsize=(4.5, 3.2), dpi=120)
        axes.plot(shots, mean, marker="o")
        axes.fill_between(shots, [m - h for m, h in zip(mean, half, strict=True)],
                          [m + h for m, h in zip(mean, half, strict=True)], alpha=0.25)  # fmt: skip
        axes.set(xscale="log", xlabel="shots per class (K)", ylabel=f"{label} (%)", title=title)
        axes.set_xticks(shots, [str(k) for k in shots])
        axes.minorticks_off()
        axes.grid(alpha=0.3)
        figure.tight_layout()
        path = out / f"{metric}_vs_shots.png"
        figure.savefig(path)
        plt.close(figure)
        paths.append(path)
    return paths


def plot_reliability(reliability: dict[str, list[float]], path: Path, title: str = "") -> Path:
    """Reliability diagram: accuracy against mean confidence per bin of top-class probability."""
    path.parent.mkdir(parents=True, exist_ok=True)
    upper = reliability["bin_upper"]
    width = upper[0]
    figure, axes = plt.subplots(figsize=(4.2, 4.0), dpi=120)
    filled = [i for i, n in enumerate(reliability["count"]) if n > 0]
    axes.bar([upper[i] - width / 2 for i in filled], [reliability["accuracy"][i] for i in filled],
             width=width * 0.9, alpha=0.7, label="accuracy")  # fmt: skip
    axes.plot([reliability["confidence"][i] for i in filled], [reliability["accuracy"][i] for i in filled],
              "o", color="black", markersize=3, label="mean confidence")  # fmt: skip
    axes.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="top-class probability", ylabel="accuracy", title=title)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
