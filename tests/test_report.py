"""The meta-test statistics against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from metaclinic.algorithms.base import EpisodicModule
from metaclinic.data.datamodule import EpisodicDataModule
from metaclinic.data.pool import ClassInfo, ClassPool
from metaclinic.data.task import TaskBatch
from metaclinic.evaluation.metrics import BINARY_METRICS, METRICS
from metaclinic.evaluation.report import Estimate, MetaTestReport


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


def test_report_sorts_episodes_and_survives_a_json_round_trip(tmp_path):
    # As gathered from two processes: each holds every other episode.
    index = torch.tensor([0, 2, 4, 1, 3])
    values = {
        "accuracy": torch.tensor([0.5, 0.7, 0.9, 0.6, 0.8]),
        "ece": torch.tensor([0.1, 0.3, 0.5, 0.2, 0.4]),
    }
    domains = ["east", "west", "east", "mixed", "east"]
    report = MetaTestReport.of_episodes("ProtoNet", 2, 5, 5, values, index, domains)
    assert report.episode_index == [0, 1, 2, 3, 4] and report.episodes == 5
    assert report.per_episode["accuracy"] == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])
    assert report.metrics["ece"] == Estimate.of(values["ece"])
    assert list(report.breakdown) == ["east", "west", "mixed"]  # domains sorted, mixed last
    assert report.breakdown["east"]["accuracy"] == Estimate.of(torch.tensor([0.5, 0.8, 0.9]))
    assert report.breakdown["west"]["accuracy"].n == 1 and math.isnan(
        report.breakdown["west"]["accuracy"].ci95
    )
    report.checkpoint, report.extra = "checkpoints/best.ckpt", {"eval_seed": 0}
    report.write(tmp_path / "r.json")
    assert MetaTestReport.read(tmp_path / "r.json") == report
    assert '"episode_index": [0, 1, 2, 3, 4],' in (tmp_path / "r.json").read_text()  # a list on one line
    lines = report.table().splitlines()
    assert lines[3].split() == ["accuracy", "70.00", f"{100 * report.metrics['accuracy'].ci95:.2f}"]
    assert "west (1 episode)" in lines and "  ece" in report.table()
    with pytest.raises(ValueError, match="more than once"):
        MetaTestReport.of_episodes("ProtoNet", 2, 5, 5, values, torch.tensor([0, 1, 1, 2, 3]))


def test_reports_written_before_the_per_episode_fields_still_read(tmp_path):
    accuracy = {"mean": 0.5, "ci95": 0.01, "std": 0.1, "n": 600}
    old = {"algorithm": "MAML", "n_way": 5, "n_shot": 1, "n_query": 15, "episodes": 600, "checkpoint": None,
           "metrics": {"accuracy": accuracy}, "extra": {}}  # fmt: skip
    (tmp_path / "old.json").write_text(json.dumps(old))
    report = MetaTestReport.read(tmp_path / "old.json")
    assert report.metrics["accuracy"] == Estimate(0.5, 0.01, 0.1, 600)
    assert (report.breakdown, report.per_episode, report.episode_index) == ({}, {}, [])


# -- the report of a meta-test run on a tiny two-hospital pool ---------------------------------------------
class TwoHospitals(EpisodicDataModule):
    """Diagnoses "0" and "1" in hospitals east and west: feature 0 is the diagnosis, 1 the hospital."""

    def __init__(self, same_domain_episodes: bool, n_way: int = 2) -> None:
        super().__init__(n_way=n_way, n_shot=1, n_query=2, test_episodes=16, eval_meta_batch_size=5)
        self.same_domain_episodes = same_domain_episodes

    @property
    def example_shape(self) -> tuple[int, ...]:
        return (2,)

    def build_pools(self) -> dict[str, ClassPool]:
        def pool(prefix: str, hospitals: list[str], same_domain: bool) -> ClassPool:
            classes = [
                ClassInfo(f"{prefix}{h}/{y}", f"{h}: {y}", h, label=y) for h in hospitals for y in "01"
            ]
            examples = torch.tensor([[float(c.label), float(hospitals.index(c.domain))] for c in classes])
            examples = examples.repeat_interleave(4, dim=0)
            return ClassPool(examples, list(torch.arange(len(examples)).split(4)), classes, None, same_domain)

        return {
            "meta_train": pool("train-", ["north", "south"], False),
            "meta_val": ClassPool(torch.empty(0, 2), [], []),
            "meta_test": pool("", ["east", "west"], self.same_domain_episodes),
        }


class DiagnosesInEastMissesInWest(EpisodicModule):
    """Predicts the class whose support has diagnosis "1" for east patients, the other for west patients."""

    meta_trained = False

    def score_tasks(self, batch: TaskBatch) -> torch.Tensor:
        support = F.one_hot(batch.support_y, batch.n_way).float()  # (tasks, support, n_way)
        diagnosis = (support * batch.support_x[..., :1]).sum(1) / support.sum(1)  # (tasks, n_way)
        west = batch.query_x[..., 1:]  # (tasks, queries, 1)
        return (1 - 2 * west) * diagnosis.unsqueeze(1)


def meta_test_episodes(data: EpisodicDataModule) -> dict[int, list[ClassInfo]]:
    """The pool classes of every meta-test episode, by episode index."""
    pool = data.pools["meta_test"]
    return {
        i: [pool.classes[c] for c in classes]
        for batch in data.test_dataloader()
        for i, classes in zip(batch.episode_index.tolist(), batch.classes.tolist(), strict=True)
    }


def run_meta_test(data: EpisodicDataModule) -> MetaTestReport:
    model = DiagnosesInEastMissesInWest()
    Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).test(
        model, datamodule=data, verbose=False
    )
    assert model.test_report is not None
    return model.test_report


def test_binary_report_is_broken_down_by_hospital_with_sensitivity_of_the_diagnosed_class(tmp_path):
    data = TwoHospitals(same_domain_episodes=True)
    report = run_meta_test(data)
    episodes = meta_test_episodes(data)
    assert set(report.metrics) == {
        *METRICS,
        "ece_uncalibrated",
        *BINARY_METRICS,
    } and report.episode_index == list(range(16))
    assert list(report.breakdown) == ["east", "west"]
    # The positive class is the one labelled "1", whichever local id the episode gave it.
    assert {tuple(c.label for c in classes) for classes in episodes.values()} == {("0", "1"), ("1", "0")}
    expected = {"east": (1.0, 0.0), "west": (0.0, 1.0)}  # (sensitivity, specificity)
    for i, classes in episodes.items():
        hospital = classes[0].domain
        k = report.episode_index.index(i)
        assert (report.per_episode["sensitivity"][k], report.per_episode["specificity"][k]) == expected[
            hospital
        ]
    for hospital, metrics in report.breakdown.items():
        mine = [k for k, i in enumerate(report.episode_index) if episodes[i][0].domain == hospital]
        for name, estimate in metrics.items():
            assert estimate == Estimate.of(torch.tensor([report.per_episode[name][k] for k in mine])), name
        assert (metrics["sensitivity"].mean, metrics["specificity"].mean) == expected[hospital]
        assert metrics["accuracy"].mean == 0.5
    report.write(tmp_path / "r.json")
    assert MetaTestReport.read(tmp_path / "r.json") == report
    assert "east (" in report.table() and "  sensitivity" in report.table()


@pytest.mark.parametrize("n_way", [2, 3])
def test_episodes_that_span_hospitals_count_as_mixed(n_way: int):
    data = TwoHospitals(same_domain_episodes=False, n_way=n_way)
    report = run_meta_test(data)
    spans = [len({c.domain for c in classes}) > 1 for classes in meta_test_episodes(data).values()]
    assert report.breakdown["mixed"]["accuracy"].n == sum(spans) > 0
    assert sum(metrics["accuracy"].n for metrics in report.breakdown.values()) == 16
    # Sensitivity and specificity only for binary episodes.
    assert set(report.metrics) == {*METRICS, "ece_uncalibrated", *(BINARY_METRICS if n_way == 2 else ())}
