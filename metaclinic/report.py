"""Meta-test statistics: mean over episodes with a 95% confidence interval, as a table and as JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from scipy import stats


@dataclass(frozen=True)
class Estimate:
    """Mean of per-episode values with the half-width of its 95% confidence interval (Student t)."""

    mean: float
    ci95: float
    std: float
    n: int

    @classmethod
    def of(cls, values: torch.Tensor) -> Estimate:
        values = values.double().flatten()
        n = values.numel()
        if n == 0:
            raise ValueError("no episodes to summarise")
        std = values.std(unbiased=True).item() if n > 1 else math.nan
        ci95 = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
        return cls(mean=values.mean().item(), ci95=ci95, std=std, n=n)

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.ci95:.2f}"


@dataclass
class MetaTestReport:
    """What a run reports on its meta-test episodes; written as ``meta_test_report.json`` in the run dir."""

    algorithm: str
    n_way: int
    n_shot: int
    n_query: int
    episodes: int
    metrics: dict[str, Estimate]
    checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        head = f"Meta-test: {self.algorithm}, {self.n_way}-way {self.n_shot}-shot, {self.episodes} episodes"
        rows = [f"{'metric':<12} {'mean (%)':>10} {'95% CI (±)':>11}"]
        rows += [
            f"{name:<12} {100 * e.mean:>10.2f} {100 * e.ci95:>11.2f}" for name, e in self.metrics.items()
        ]
        width = max(len(head), *(len(r) for r in rows))
        return "\n".join([head, "-" * width, *rows])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
