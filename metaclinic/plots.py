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
