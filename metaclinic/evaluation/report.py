"""Meta-test statistics: mean over episodes with a 95% confidence interval, as a table and as JSON."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from metaclinic.evaluation.metrics import ORDINAL_METRICS
from metaclinic.experiment.storage import write_atomically

MIXED_DOMAIN = "mixed"  # the breakdown's name for episodes whose classes come from several domains
REPORT_FILE = "meta_test_report.json"  # in every run directory, and in its evaluation/


def in_percent(metric: str) -> bool:
    """Whether tables show ``metric`` in %: every fraction does; kappa (-1..1) and grade errors do not."""
    return metric not in ORDINAL_METRICS


def shown(metric: str, value: float) -> str:
    """``value`` of ``metric`` as tables show it: a fraction in % (2 decimals), kappa and grade errors as
    they are (3 decimals)."""
    return f"{100 * value:.2f}" if in_percent(metric) else f"{value:.3f}"


@dataclass(frozen=True)
class Estimate:
    """Mean of per-episode values with the half-width of its 95% confidence interval (Student t).

    ``ci95 = t(0.975, n - 1) * std / sqrt(n)`` with the sample standard deviation ``std``; both are NaN for
    a single episode.
    """

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
    """What a run reports on its meta-test episodes; written as ``meta_test_report.json`` in the run dir.

    ``metrics`` summarises every metric over all episodes (see :mod:`metaclinic.evaluation.metrics`).
    ``per_episode`` keeps each metric's value of every episode, in the order of ``episode_index`` (ascending),
    so that two reports on the same episodes (equal ``extra["split_fingerprint"]`` and ``extra["eval_seed"]``)
    can be compared pairwise. ``breakdown`` summarises the metrics per domain (hospital, dataset) when the
    meta-test split has several; an episode with classes of several domains counts as ``"mixed"``.
    ``reliability`` pools every query of every episode into equal-width bins of top-class probability
    (``bin_upper``, ``count``, ``confidence``, ``accuracy``): the data of a reliability diagram.
    """

    algorithm: str
    n_way: int
    n_shot: int
    n_query: int
    episodes: int
    metrics: dict[str, Estimate]
    checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    breakdown: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    episode_index: list[int] = field(default_factory=list)
    per_episode: dict[str, list[float]] = field(default_factory=dict)
    reliability: dict[str, list[float]] = field(default_factory=dict)
    reliability_uncalibrated: dict[str, list[float]] = field(
        default_factory=dict
    )  # before temperature scaling
    # The no-learning baselines scored on the same episodes in the same run: {method: its report}.
    references: dict[str, MetaTestReport] = field(default_factory=dict)

    @classmethod
    def of_episodes(
        cls,
        algorithm: str,
        n_way: int,
        n_shot: int,
        n_query: int,
        values: dict[str, torch.Tensor],
        episode_index: torch.Tensor,
        domains: Sequence[str] | None = None,
    ) -> MetaTestReport:
        """The report of per-episode ``values`` (``{metric: (episodes,)}``), in any episode order.

        ``episode_index`` (``(episodes,)``) identifies each episode, ``domains`` (optional) names its domain;
        with ``domains`` the report has a ``breakdown``.
        """
        if len(torch.unique(episode_index)) != len(episode_index):
            raise ValueError("an episode was scored more than once")
        order = episode_index.cpu().argsort()
        values = {name: v.detach().cpu()[order] for name, v in values.items()}
        breakdown: dict[str, dict[str, Estimate]] = {}
        if domains is not None:
            domains = [domains[i] for i in order.tolist()]
            names = sorted(set(domains) - {MIXED_DOMAIN}) + [MIXED_DOMAIN] * (MIXED_DOMAIN in domains)
            for domain in names:
                mask = torch.tensor([d == domain for d in domains])
                breakdown[domain] = {name: Estimate.of(v[mask]) for name, v in values.items()}
        return cls(
            algorithm=algorithm,
            n_way=n_way,
            n_shot=n_shot,
            n_query=n_query,
            episodes=len(order),
            metrics={name: Estimate.of(v) for name, v in values.items()},
            breakdown=breakdown,
            episode_index=episode_index.cpu()[order].tolist(),
            per_episode={name: v.tolist() for name, v in values.items()},
        )

    def table(self) -> str:
        """A row per metric (mean and 95% CI half-width, in %), then the same rows for each domain."""
        head = f"Meta-test: {self.algorithm}, {self.n_way}-way {self.n_shot}-shot, {self.episodes} episodes"
        indented = [f"  {name}" for metrics in self.breakdown.values() for name in metrics]
        width = max([12, *(len(name) for name in [*self.metrics, *indented])])

        def rows(metrics: dict[str, Estimate], indent: str = "") -> list[str]:
            return [
                f"{indent + name:<{width}} {shown(name, e.mean):>10} {shown(name, e.ci95):>11}"
                for name, e in metrics.items()
            ]

        lines = [f"{'metric':<{width}} {'mean (%)':>10} {'95% CI (±)':>11}", *rows(self.metrics)]
        for domain, metrics in self.breakdown.items():
            episodes = next(iter(metrics.values())).n if metrics else 0
            lines += [f"{domain} ({episodes} episode{'s' * (episodes != 1)})", *rows(metrics, indent="  ")]
        rule = "-" * max(len(head), *(len(line) for line in lines))
        return "\n".join([head, rule, *lines, *self.evaluation_note()])

    def evaluation_note(self) -> list[str]:
        """Whether a query's prediction depended on the other queries (``extra["transductive"]``)."""
        notes = []
        if any(not in_percent(name) for name in self.metrics):
            notes.append(
                "quadratic_kappa and grade_mae are not in %: kappa runs from -1 to 1 (1: perfect agreement, "
                "0: chance), grade_mae is in grades."
            )
        if "transductive" in self.extra:
            notes.append(
                "TRANSDUCTIVE evaluation: batch norm normalised each episode's queries together, so a case's "
                "prediction depended on the other cases scored with it."
                if self.extra["transductive"]
                else "Inductive evaluation: each case was scored from the support set and itself alone."
            )
        if self.extra.get("temperature", 1.0) != 1.0:
            notes.append(
                f"Probabilities temperature-scaled (T = {self.extra['temperature']:.3f}, fitted on "
                "meta-validation episodes); ece_uncalibrated is the ECE before scaling."
            )
        return notes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetaTestReport:
        """The report of :meth:`to_dict`; reports written before a field existed get its default."""

        def estimates(metrics: dict[str, dict[str, Any]]) -> dict[str, Estimate]:
            # NaN (the interval of a single episode) as math.nan, so that equal reports compare equal.
            return {
                name: Estimate(**{k: math.nan if v != v else v for k, v in e.items()})
                for name, e in metrics.items()
            }

        breakdown = {domain: estimates(m) for domain, m in data.get("breakdown", {}).items()}

        def bins(key: str) -> dict[str, list[float]]:
            return {k: [math.nan if v != v else v for v in vs] for k, vs in data.get(key, {}).items()}

        references = {name: cls.from_dict(r) for name, r in data.get("references", {}).items()}
        return cls(
            **{
                **data,
                "metrics": estimates(data["metrics"]),
                "breakdown": breakdown,
                "reliability": bins("reliability"),
                "reliability_uncalibrated": bins("reliability_uncalibrated"),
                "references": references,
            }
        )

    def write(self, path: Path) -> None:
        """Writes the report atomically; a failure raises :class:`WriteError` naming ``path``."""
        text = json.dumps(self.to_dict(), indent=2)
        # One line per list of numbers (per-episode values), not one line per number. JSON strings hold no
        # raw newline, so a match spanning lines is never inside one.
        text = re.sub(r"\[(?=[^\]]*\n)([-+\w.,\s]*)\]", lambda m: "[" + " ".join(m[1].split()) + "]", text)
        write_atomically(path, text + "\n")

    @classmethod
    def read(cls, path: str | Path) -> MetaTestReport:
        """The report written by :meth:`write` at ``path``."""
        return cls.from_dict(json.loads(Path(path).read_text()))
