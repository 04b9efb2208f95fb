"""Every per-episode metric against scikit-learn or a hand computation, and the confidence interval."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    mean_absolute_error,
    recall_score,
    roc_auc_score,
)

from metaclinic.evaluation.metrics import (
    episode_accuracy,
    episode_auroc,
    episode_balanced_accuracy,
    episode_calibration_error,
    episode_macro_f1,
    episode_metrics,
    episode_ordinal_metrics,
    episode_sensitivity,
    episode_specificity,
    reliability_bins,
)
from metaclinic.evaluation.report import Estimate

# Two 3-way episodes of 6 queries, with scores that rank well but not perfectly. Real episodes have as many
# queries of every class, which makes balanced accuracy equal accuracy; the second episode here has not.
LOGITS3 = torch.tensor(
    [
        [
            [2.0, 0.1, 0.3],
            [0.2, 1.0, 0.9],
            [0.1, 1.5, 0.2],
            [0.3, 0.4, 0.1],
            [0.0, 0.2, 2.2],
            [1.1, 0.3, 0.9],
        ],
        [
            [0.5, 0.4, 0.1],
            [0.1, 0.2, 0.3],
            [0.9, 0.8, 0.1],
            [0.2, 1.9, 0.4],
            [0.3, 0.2, 0.6],
            [0.2, 0.1, 1.7],
        ],
    ]
)
LABELS3 = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 2, 2]])
# Two binary episodes of 6 queries (3 per class, then 4 and 2).
LOGITS2 = torch.tensor(
    [
        [[1.0, 0.2], [0.3, 0.8], [0.9, 0.1], [0.2, 1.4], [0.7, 0.6], [0.1, 0.9]],
        [[0.2, 0.9], [1.2, 0.1], [0.6, 0.2], [0.8, 0.3], [0.3, 0.7], [0.2, 1.1]],
    ]
)
LABELS2 = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]])


def per_episode(metric, logits: torch.Tensor, labels: torch.Tensor, **kwargs) -> list[float]:
    """``metric(y_true, y_pred, **kwargs)`` of sklearn for each episode."""
    return [metric(y.numpy(), s.argmax(-1).numpy(), **kwargs) for s, y in zip(logits, labels, strict=True)]


@pytest.mark.parametrize(("logits", "labels"), [(LOGITS3, LABELS3), (LOGITS2, LABELS2)], ids=["3way", "2way"])
def test_prediction_metrics_match_sklearn(logits: torch.Tensor, labels: torch.Tensor):
    expected = {
        episode_accuracy: per_episode(accuracy_score, logits, labels),
        episode_balanced_accuracy: per_episode(balanced_accuracy_score, logits, labels),
        episode_macro_f1: per_episode(f1_score, logits, labels, average="macro"),
    }
    for metric, values in expected.items():
        assert metric(logits, labels).tolist() == pytest.approx(values, abs=1e-6), metric.__name__
    # Balanced: equal to accuracy; unbalanced: not (the example is not degenerate).
    accuracy, balanced = expected[episode_accuracy], expected[episode_balanced_accuracy]
    assert balanced[0] == pytest.approx(accuracy[0]) and balanced[1] != pytest.approx(accuracy[1])
    assert expected[episode_macro_f1] != pytest.approx(accuracy)


def test_auroc_matches_sklearn_binary_and_multiclass_one_vs_rest_macro():
    binary = [roc_auc_score(y, s.softmax(-1)[:, 1]) for s, y in zip(LOGITS2, LABELS2, strict=True)]
    multiclass = [
        roc_auc_score(y, s.softmax(-1), multi_class="ovr", average="macro")
        for s, y in zip(LOGITS3, LABELS3, strict=True)
    ]
    assert episode_auroc(LOGITS2, LABELS2).tolist() == pytest.approx(binary, abs=1e-6)
    assert episode_auroc(LOGITS3, LABELS3).tolist() == pytest.approx(multiclass, abs=1e-6)
    assert all(0 < value < 1 for value in binary + multiclass)


def test_sensitivity_and_specificity_are_sklearn_recalls_of_the_positive_and_negative_class():
    positive = torch.tensor([1, 0])  # the second episode's positive class is its local class 0
    recall = {
        p: [
            recall_score(y.numpy(), s.argmax(-1).numpy(), pos_label=p)
            for s, y in zip(LOGITS2, LABELS2, strict=True)
        ]
        for p in (0, 1)
    }
    sensitivity = episode_sensitivity(LOGITS2, LABELS2, positive)
    specificity = episode_specificity(LOGITS2, LABELS2, positive)
    assert sensitivity.tolist() == pytest.approx([recall[1][0], recall[0][1]])
    assert specificity.tolist() == pytest.approx([recall[0][0], recall[1][1]])
    # By default local class 1 is positive.
    assert episode_sensitivity(LOGITS2, LABELS2).tolist() == pytest.approx(recall[1])
    assert episode_specificity(LOGITS2, LABELS2).tolist() == pytest.approx(recall[0])
    with pytest.raises(ValueError, match="binary episodes"):
        episode_sensitivity(LOGITS3, LABELS3)


def test_calibration_error_matches_hand_computation():
    # Top probabilities 0.95 (right), 0.85 (right), 0.85 (wrong), 0.62 (right) fall in 10 equal bins as
    # [0.9, 1): acc 1, conf 0.95;  [0.8, 0.9): acc 0.5, conf 0.85;  [0.6, 0.7): acc 1, conf 0.62.
    probabilities = torch.tensor([[0.95, 0.05], [0.15, 0.85], [0.85, 0.15], [0.38, 0.62]])
    labels = torch.tensor([[0, 1, 1, 1]])
    expected = 1 / 4 * 0.05 + 2 / 4 * 0.35 + 1 / 4 * 0.38  # = 0.2825
    ece = episode_calibration_error(probabilities.log().unsqueeze(0), labels)
    assert ece.tolist() == pytest.approx([expected], abs=1e-6)


def test_episode_metrics_adds_sensitivity_and_specificity_for_binary_episodes_only():
    assert set(episode_metrics(LOGITS3, LABELS3)) == {
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "auroc",
        "ece",
    }
    binary = episode_metrics(LOGITS2, LABELS2, positive=torch.tensor([1, 0]))
    assert {"sensitivity", "specificity"} < set(binary)
    assert all(v.shape == (2,) for v in binary.values())
    assert (
        binary["sensitivity"].tolist() == episode_sensitivity(LOGITS2, LABELS2, torch.tensor([1, 0])).tolist()
    )


def test_confidence_interval_of_three_episodes_matches_hand_computation():
    estimate = Estimate.of(torch.tensor([0.5, 0.7, 0.9]))
    # mean 0.7, sample std sqrt((0.04 + 0 + 0.04) / 2) = 0.2, t(0.975, df=2) = 4.302653
    assert (estimate.mean, estimate.std, estimate.n) == (pytest.approx(0.7), pytest.approx(0.2), 3)
    assert estimate.ci95 == pytest.approx(4.302653 * 0.2 / math.sqrt(3), rel=1e-6)
    assert estimate.ci95 == pytest.approx(0.4969, abs=1e-4)


def test_reliability_bins_pool_queries_by_confidence():
    confidence = torch.tensor([0.05, 0.15, 0.12, 0.95, 1.0])
    correct = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0])
    bins = reliability_bins(confidence, correct, bins=10)
    assert bins["count"] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert bins["accuracy"][1] == 0.5 and bins["confidence"][1] == pytest.approx(0.135)
    assert bins["confidence"][9] == pytest.approx(0.975) and math.isnan(bins["accuracy"][2])


# -- ordinal grades ------------------------------------------------------------------------------------------
def scored_as(predicted: list[list[int]], n_way: int) -> torch.Tensor:
    """Logits whose top class is ``predicted`` (local ids), ``(tasks, queries, n_way)``."""
    return torch.nn.functional.one_hot(torch.tensor(predicted), n_way).float()


def test_a_perfect_prediction_has_kappa_1_and_no_grade_error():
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]])
    values = episode_ordinal_metrics(scored_as(labels.tolist(), 3), labels, torch.tensor([[4, 0, 2]]))
    assert values["quadratic_kappa"].tolist() == [1.0] and values["grade_mae"].tolist() == [0.0]


def test_off_by_one_predictions_match_the_hand_computation_in_grades():
    # Three queries of true grades 0, 1, 2 predicted 1, 2, 2. O has one count at (0,1), (1,2), (2,2); the
    # marginals (1, 1, 1) true and (0, 1, 2) predicted give E[i, j] = 1/3 * (0, 1, 2)[j]. With w = (i - j)^2:
    # sum w O = 1 + 1 + 0 = 2, sum w E = (1/3 + 8/3) + (0 + 2/3) + (1/3 + 0) = 4, kappa = 1 - 2/4 = 0.5;
    # the grade error is (1 + 1 + 0) / 3.
    labels, predicted = torch.tensor([[0, 1, 2]]), [[1, 2, 2]]
    values = episode_ordinal_metrics(scored_as(predicted, 3), labels, torch.tensor([[0, 1, 2]]))
    assert values["quadratic_kappa"].item() == pytest.approx(0.5)
    assert values["grade_mae"].item() == pytest.approx(2 / 3)
    # The same local predictions when the classes are grades 0, 1 and 4: predicting class 2 for class 1 is now
    # three grades off, so the error is (1 + 3 + 0) / 3; sum w O = 1 + 9 = 10, sum w E = 11 + 6 + 3 = 20.
    values = episode_ordinal_metrics(scored_as(predicted, 3), labels, torch.tensor([[0, 1, 4]]))
    assert values["grade_mae"].item() == pytest.approx(4 / 3)
    assert values["quadratic_kappa"].item() == pytest.approx(0.5)
    # Two grades, 1 and 3, two queries each, one grade-1 case predicted 3: error 2 / 4 = 0.5 grades;
    # sum w O = 4, E = [[0.5, 1.5], [0.5, 1.5]], sum w E = 4 * (1.5 + 0.5) = 8, kappa = 0.5.
    values = episode_ordinal_metrics(
        scored_as([[0, 1, 1, 1]], 2), torch.tensor([[0, 0, 1, 1]]), torch.tensor([[1, 3]])
    )
    assert values["grade_mae"].item() == pytest.approx(0.5)
    assert values["quadratic_kappa"].item() == pytest.approx(0.5)


def test_ordinal_metrics_match_sklearn_on_grades_in_any_order():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 12, 3, generator=generator)
    labels = torch.arange(3).repeat_interleave(4).repeat(6, 1)
    grades = torch.stack([torch.randperm(5, generator=generator)[:3] for _ in range(6)])  # 3 of grades 0-4
    values = episode_ordinal_metrics(logits, labels, grades)
    for i in range(6):
        true, predicted = grades[i][labels[i]].numpy(), grades[i][logits[i].argmax(-1)].numpy()
        # On the whole scale: sklearn would weigh by rank among the grades present (0, 2, 4 as 0, 1, 2).
        expected = cohen_kappa_score(true, predicted, labels=list(range(5)), weights="quadratic")
        assert values["quadratic_kappa"][i].item() == pytest.approx(expected, abs=1e-5)
        assert values["grade_mae"][i].item() == pytest.approx(mean_absolute_error(true, predicted))
