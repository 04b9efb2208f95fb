"""The evaluator: scored meta-test episodes in, the meta-test report out.

An algorithm only scores episodes; this module keeps what the report needs of every scored episode (its
metrics, index and domain, every query's confidence and correctness) and turns them into a
:class:`~metaclinic.evaluation.report.MetaTestReport`. The values are torchmetrics ``CatMetric`` states, so
episodes scored in several processes are gathered before the report is built. What an episode is (its domain,
which class is positive) travels with it in the :class:`~metaclinic.data.task.TaskBatch` from the data layer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchmetrics import CatMetric

from metaclinic.data.task import TaskBatch
from metaclinic.evaluation.metrics import (
    BINARY_METRICS,
    METRICS,
    ORDINAL_METRICS,
    episode_calibration_error,
    episode_metrics,
    episode_ordinal_metrics,
    reliability_bins,
)
from metaclinic.evaluation.report import MIXED_DOMAIN, MetaTestReport


class MetaTestRecorder(nn.Module):
    """Every meta-test episode's metrics, for one method, until :meth:`report` summarises and resets them."""

    def __init__(self) -> None:
        super().__init__()
        # NaN is kept so the values stay aligned: it marks the binary metrics of non-binary episodes, and the
        # ordinal ones of episodes without grades.
        names = (*METRICS, "ece_uncalibrated", *BINARY_METRICS, *ORDINAL_METRICS, "episode_index", "domain")
        self.values = nn.ModuleDict({name: CatMetric(nan_strategy="disable") for name in names})
        # Every query's top-class probability and correctness, pooled for the reliability diagram.
        self.confidence, self.correct, self.uncalibrated_confidence = CatMetric(), CatMetric(), CatMetric()
        self.shape: tuple[int, int, int] | None = None  # (n_way, n_shot, n_query) of the episodes seen

    def record(self, logits: Tensor, batch: TaskBatch, temperature: Tensor) -> None:
        """Keeps the metrics of ``batch``'s episodes scored with ``logits`` ``(tasks, queries, n_way)``.

        Metrics are those of the calibrated probabilities (``logits / temperature``); ``ece_uncalibrated``
        and the uncalibrated confidences keep what temperature scaling changed. Episodes whose classes are
        grades (``batch.grades``, set by the data layer) are also scored by grade (:data:`ORDINAL_METRICS`).
        """
        uncalibrated = logits.detach().float()
        logits = uncalibrated / temperature
        values = episode_metrics(logits, batch.query_y, positive_classes(batch))
        values["ece_uncalibrated"] = episode_calibration_error(uncalibrated, batch.query_y)
        not_scored = torch.full((len(batch),), math.nan, device=logits.device)
        values.update({name: values.get(name, not_scored) for name in BINARY_METRICS})
        if batch.grades is not None:
            values.update(episode_ordinal_metrics(logits, batch.query_y, batch.grades))
        values.update({name: values.get(name, not_scored) for name in ORDINAL_METRICS})
        domain = batch.domain if batch.domain is not None else torch.full((len(batch),), -1)
        values.update(episode_index=batch.episode_index, domain=domain.to(logits.device))
        for name, metric in self.values.items():
            metric.update(values[name])
        confidence, predicted = logits.softmax(-1).max(-1)
        self.confidence.update(confidence.flatten())
        self.correct.update((predicted == batch.query_y).float().flatten())
        self.uncalibrated_confidence.update(uncalibrated.softmax(-1).max(-1).values.flatten())
        n_way = batch.n_way
        self.shape = (n_way, batch.support_x.shape[1] // n_way, batch.query_x.shape[1] // n_way)

    def report(self, algorithm: str, domain_names: list[str] | None, temperature: float) -> MetaTestReport:
        """The report of the episodes recorded since the last one (gathered across processes).

        ``domain_names``: the meta-test domains, indexed by the episodes' domain codes; ``None`` or one
        domain: no per-domain rows.
        """
        values = {name: metric.compute() for name, metric in self.values.items()}
        correct = self.correct.compute()
        reliability = reliability_bins(self.confidence.compute(), correct)
        uncalibrated = reliability_bins(self.uncalibrated_confidence.compute(), correct)
        for metric in [*self.values.values(), self.confidence, self.correct, self.uncalibrated_confidence]:
            metric.reset()
        episode_index, codes = values.pop("episode_index").long(), values.pop("domain").long()
        # Sensitivity and specificity only when every episode is binary, kappa and grade error when graded.
        values = {name: v for name, v in values.items() if name in METRICS or not v.isnan().any()}
        domains = None
        if domain_names is not None and len(domain_names) > 1:
            domains = [domain_names[c] if c >= 0 else MIXED_DOMAIN for c in codes.tolist()]
        n_way, n_shot, n_query = self.shape or (-1, -1, -1)
        report = MetaTestReport.of_episodes(
            algorithm,
            n_way=n_way,
            n_shot=n_shot,
            n_query=n_query,
            values=values,
            episode_index=episode_index,
            domains=domains,
        )
        report.reliability, report.reliability_uncalibrated = reliability, uncalibrated
        report.extra["temperature"] = temperature
        return report


def positive_classes(batch: TaskBatch) -> Tensor | None:
    """Local id of each binary episode's positive class (for sensitivity and specificity), ``(tasks,)``.

    The data layer sets it (``batch.positive_class``); an episode built by hand without it takes local
    class 1, the second class. ``None`` for episodes of more than two classes.
    """
    if batch.n_way != 2:
        return None
    if batch.positive_class is not None:
        return batch.positive_class.to(batch.query_y.device)
    return torch.ones(len(batch), dtype=torch.long, device=batch.query_y.device)
