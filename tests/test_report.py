"""The meta-test statistics against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest
import torch

from metaclinic.report import Estimate, MetaTestReport


def test_confidence_interval_matches_hand_computation():
    values = torch.tensor([0.6, 0.8, 0.7, 0.9, 0.5])
    estimate = Estimate.of(values)
    # mean 0.7, sample std sqrt(0.025) = 0.158114, t(0.975, df=4) = 2.776445
    assert estimate.mean == pytest.approx(0.7)
    assert estimate.std == pytest.approx(math.sqrt(0.025))
    assert estimate.ci95 == pytest.approx(2.776445 * math.sqrt(0.025) / math.sqrt(5), rel=1e-6)
    assert estimate.n == 5


def test_single_episode_has_no_interval_and_none_is_an_error():
    assert math.isnan(Estimate.of(torch.tensor([1.0])).ci95)
    with pytest.raises(ValueError, match="no episodes"):
        Estimate.of(torch.tensor([]))


def test_report_table_and_json(tmp_path):
    report = MetaTestReport("MAML", 5, 1, 15, 600, {"accuracy": Estimate(0.4567, 0.0123, 0.15, 600)})
    assert "accuracy          45.67        1.23" in report.table()
    report.write(tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["metrics"]["accuracy"] == {"mean": 0.4567, "ci95": 0.0123, "std": 0.15, "n": 600}
