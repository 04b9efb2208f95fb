"""Per-episode metrics of query predictions, computed with torchmetrics.

Few-shot results are means over episodes with a confidence interval, so every function here returns one
value per episode: ``logits (tasks, queries, n_way)``, ``labels (tasks, queries)`` -> ``(tasks,)``. Labels
are episode-local (``0 .. n_way-1``) and every class of an episode has queries; the prediction of a query
is its highest-scoring class, its probabilities the softmax of its logits.

==================  ==============================================================================
accuracy            fraction of queries predicted correctly
balanced_accuracy   mean over the episode's classes of their recall (macro recall)
macro_f1            mean over the episode's classes of their F1 score
auroc               ROC AUC from the probabilities; one-vs-rest and macro-averaged beyond 2 classes
ece                 expected calibration error: queries binned by top probability (10 equal bins in
                    [0, 1]), mean of |accuracy - mean top probability| per bin, weighted by bin size
sensitivity         (binary episodes) recall of the positive class: positives predicted positive
specificity         (binary episodes) recall of the negative class: negatives predicted negative
quadratic_kappa     (graded episodes) Cohen's kappa of predicted against true grades, weighted by the
                    squared grade difference: 1 perfect, 0 chance agreement, below 0 worse than chance
grade_mae           (graded episodes) mean absolute difference of predicted and true grade, in grades
==================  ==============================================================================

Which local class of a binary episode is positive is arbitrary to the episode sampler; the caller says it
(``positive``, one local class per episode), by default local class 1, the episode's second class. Graded
episodes are those whose classes are grades of one ordinal scale (RetinaMNIST's 0-4); the caller gives each
local class's grade, since an episode's classes are any of the scale's grades in any order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics.functional import cohen_kappa, mean_absolute_error
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_recall,
    binary_specificity,
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_calibration_error,
    multiclass_f1_score,
    multiclass_recall,
)

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece")
BINARY_METRICS = ("sensitivity", "specificity")  # only for episodes of two classes
ORDINAL_METRICS = ("quadratic_kappa", "grade_mae")  # only for episodes of grades; not fractions, not in %
ECE_BINS = 10


def episode_metrics(logits: Tensor, labels: Tensor, positive: Tensor | None = None) -> dict[str, Tensor]:
    """Every metric of :data:`METRICS` for each episode, and those of :data:`BINARY_METRICS` when binary.

    Args:
        logits: ``(tasks, queries, n_way)`` query scores.
        labels: ``(tasks, queries)`` episode-local labels.
        positive: ``(tasks,)`` local id of each binary episode's positive class (default 1).
    """
    values = {
        "accuracy": episode_accuracy(logits, labels),
        "balanced_accuracy": episode_balanced_accuracy(logits, labels),
        "macro_f1": episode_macro_f1(logits, labels),
        "auroc": episode_auroc(logits, labels),
        "ece": episode_calibration_error(logits, labels),
    }
    if logits.shape[-1] == 2:
        values["sensitivity"] = episode_sensitivity(logits, labels, positive)
        values["specificity"] = episode_specificity(logits, labels, positive)
    return values


def _per_episode(metric, logits: Tensor, labels: Tensor, average: str) -> Tensor:
    """A torchmetrics classification metric of the top-scoring class, one value per episode."""
    predicted = logits.argmax(-1)
    return metric(
        predicted, labels, num_classes=logits.shape[-1], average=average, multidim_average="samplewise"
    )


def episode_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of each episode's queries whose highest-scoring class is their label."""
    return _per_episode(multiclass_accuracy, logits, labels, "micro")


def episode_balanced_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean recall of the episode's classes (sklearn's ``balanced_accuracy_score`` when all have queries)."""
    return _per_episode(multiclass_recall, logits, labels, "macro")


def episode_macro_f1(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean F1 score of the episode's classes (sklearn's ``f1_score(average="macro")``)."""
    return _per_episode(multiclass_f1_score, logits, labels, "macro")


def episode_auroc(logits: Tensor, labels: Tensor) -> Tensor:
    """Area under the ROC curve of each episode, from softmax probabilities.

    Binary episodes score class 1 against class 0 (which class is "1" does not change the value); episodes
    with more classes average the one-vs-rest AUROCs of their classes (macro).
    """
    probabilities = _probabilities(logits)
    n_way = logits.shape[-1]
    values = [
        binary_auroc(p[:, 1], y) if n_way == 2 else multiclass_auroc(p, y, num_classes=n_way, average="macro")
        for p, y in zip(probabilities, labels, strict=True)
    ]
    return torch.stack(values)


def episode_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = ECE_BINS) -> Tensor:
    """Expected calibration error (l1) of each episode's top-class probabilities, in ``n_bins`` bins.

    A query falls in bin ``b`` when its top probability is in ``[b / n_bins, (b + 1) / n_bins)``; the error
    is ``sum_b |B_b| / n * |accuracy(B_b) - mean top probability(B_b)|`` (Guo et al. 2017,
    https://arxiv.org/abs/1706.04599). 0 is perfectly calibrated.
    """
    probabilities = _probabilities(logits)
    n_way = logits.shape[-1]
    values = [
        multiclass_calibration_error(p, y, num_classes=n_way, n_bins=n_bins, norm="l1")
        for p, y in zip(probabilities, labels, strict=True)
    ]
    return torch.stack(values)


def episode_sensitivity(logits: Tensor, labels: Tensor, positive: Tensor | None = None) -> Tensor:
    """Fraction of each binary episode's positive queries predicted positive (recall of ``positive``)."""
    return binary_recall(*_positive_vs_negative(logits, labels, positive), multidim_average="samplewise")


def episode_specificity(logits: Tensor, labels: Tensor, positive: Tensor | None = None) -> Tensor:
    """Fraction of each binary episode's negative queries predicted negative (recall of the other class)."""
    return binary_specificity(*_positive_vs_negative(logits, labels, positive), multidim_average="samplewise")


def episode_ordinal_metrics(logits: Tensor, labels: Tensor, grades: Tensor) -> dict[str, Tensor]:
    """The metrics of :data:`ORDINAL_METRICS` for episodes whose classes are grades of one scale.

    A query's predicted grade is the grade of its highest-scoring class, its true grade that of its label,
    so both are on the scale, not in local ids: with classes of grades 1 and 3, predicting 3 for a 1 is an
    error of two grades. The classes must be grades of a single scale (the kappa compares values across
    episodes' classes); the data layer says so by giving grades only to such episodes.

    Args:
        logits: ``(tasks, queries, n_way)`` query scores.
        labels: ``(tasks, queries)`` episode-local labels.
        grades: ``(tasks, n_way)`` the grade (a non-negative integer) of each local class.
    """
    grades = grades.to(labels.device).long()
    predicted, true = grades.gather(1, logits.argmax(-1)), grades.gather(1, labels)
    return {
        "quadratic_kappa": episode_quadratic_kappa(predicted, true),
        "grade_mae": torch.stack(
            [mean_absolute_error(p.float(), t.float()) for p, t in zip(predicted, true, strict=True)]
        ),
    }


def episode_quadratic_kappa(predicted: Tensor, true: Tensor) -> Tensor:
    """Quadratic-weighted Cohen's kappa of each episode's predicted against true grades ``(tasks, queries)``.

    ``1 - sum_ij w_ij O_ij / sum_ij w_ij E_ij`` with ``w_ij = (i - j)^2``, ``O`` the counts of (true grade,
    predicted grade) pairs and ``E`` those expected from their marginals alone; an error of two grades
    weighs four times one of one grade. Weights are grade differences on the scale, also when the episode
    has only some of its grades (scikit-learn's ``cohen_kappa_score`` weighs by rank among the grades
    present unless given the whole scale as ``labels``). An episode has at least two true grades, so ``E``
    puts weight off the diagonal and the value is defined. Cohen, "Weighted kappa: Nominal scale agreement
    provision for scaled disagreement or partial credit", Psychological Bulletin 70(4), 1968.
    """
    num_classes = int(max(predicted.max(), true.max())) + 1  # unused grades add empty rows: no change
    values = [
        cohen_kappa(p, t, task="multiclass", num_classes=num_classes, weights="quadratic")
        for p, t in zip(predicted, true, strict=True)
    ]
    return torch.stack(values)


def _probabilities(logits: Tensor) -> Tensor:
    return logits.detach().float().softmax(-1)


def _positive_vs_negative(logits: Tensor, labels: Tensor, positive: Tensor | None) -> tuple[Tensor, Tensor]:
    """Predictions and labels as 1 (the episode's positive class) or 0, ``(tasks, queries)`` each."""
    if logits.shape[-1] != 2:
        raise ValueError(f"sensitivity and specificity need binary episodes, got {logits.shape[-1]} classes")
    if positive is None:
        positive = torch.ones(len(labels), dtype=torch.long, device=labels.device)
    positive = positive.to(labels.device).view(-1, 1)
    return (logits.argmax(-1) == positive).long(), (labels == positive).long()


def reliability_bins(confidence: Tensor, correct: Tensor, bins: int = 10) -> dict[str, list[float]]:
    """Queries pooled into ``bins`` equal-width bins of top-class probability, for a reliability diagram.

    For each bin: its upper edge, the number of queries, their mean confidence and their accuracy (NaN in
    empty bins). Perfect calibration puts accuracy equal to confidence in every bin.
    """
    confidence, correct = confidence.detach().double().flatten(), correct.detach().double().flatten()
    index = (confidence * bins).long().clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins).double()

    def mean(values: Tensor) -> list[float]:  # math.nan in empty bins, so equal reports compare equal
        means = torch.bincount(index, weights=values, minlength=bins) / count
        return [math.nan if m != m else m for m in means.tolist()]

    return {
        "bin_upper": [(i + 1) / bins for i in range(bins)],
        "count": count.tolist(),
        "confidence": mean(confidence),
        "accuracy": mean(correct),
    }
