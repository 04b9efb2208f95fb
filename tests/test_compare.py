"""``metaclinic.compare``: paired differences over the same episodes, refused for different episodes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from metaclinic.compare import find_baseline_reports, main, show_baselines
from metaclinic.evaluation.report import MetaTestReport


def write_report(
    path: Path,
    accuracy: list[float],
    fingerprint: str = "abc",
    algorithm: str = "MAML",
    baseline: bool = False,
) -> Path:
    values = torch.tensor(accuracy, dtype=torch.float64)
    report = MetaTestReport.of_episodes(algorithm, 5, 1, 15, {"accuracy": values},
                                        torch.arange(len(accuracy)).flip(0))  # fmt: skip
    report.extra.update(split_fingerprint=fingerprint, eval_seed=0, baseline=baseline)
    path.parent.mkdir(parents=True)
    report.write(path)
    return path


def test_paired_difference_matches_a_hand_computation(tmp_path: Path, capsys: pytest.CaptureFixture):
    # Episode values are written in episode order (the report sorts them); B beats A by 0.1, 0.2, 0.3.
    a = write_report(tmp_path / "a" / "r.json", [0.5, 0.6, 0.7])
    b = write_report(tmp_path / "b" / "r.json", [0.6, 0.8, 1.0], algorithm="ProtoNet")
    main([str(a), str(b)])
    out = capsys.readouterr().out
    # differences 0.3, 0.2, 0.1 (episode order reversed twice): mean 0.2, sd 0.1, t(0.975, 2) = 4.302653
    assert "(Δ +20.00 ± 24.84)" in out
    assert "| ProtoNet (b) |" in out and "| MAML (a) | 60.00 ± 24.84 |" in out


def test_reports_on_different_episodes_are_refused(tmp_path: Path):
    a = write_report(tmp_path / "a" / "r.json", [0.5, 0.6, 0.7])
    b = write_report(tmp_path / "b" / "r.json", [0.6, 0.8, 1.0], fingerprint="other")
    with pytest.raises(SystemExit, match="not scored on the same episodes"):
        main([str(a), str(b)])


def test_the_newest_baseline_runs_on_the_same_episodes_are_shown_beside_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture
):
    runs = tmp_path / "runs"
    maml = write_report(runs / "maml" / "20261122-000002" / "meta_test_report.json", [0.5, 0.6, 0.7])
    simpleshot = {"algorithm": "SimpleShot", "baseline": True}
    old = write_report(
        runs / "ss" / "20261122-000001" / "meta_test_report.json", [0.1, 0.1, 0.1], **simpleshot
    )
    new = write_report(
        runs / "ss" / "20261122-000002" / "meta_test_report.json", [0.6, 0.7, 0.8], **simpleshot
    )
    os.utime(old, (1, 1))  # older than the other
    write_report(runs / "b" / "1" / "meta_test_report.json", [0.6, 0.7, 0.8], algorithm="Baseline",
                 baseline=True, fingerprint="another split")  # fmt: skip
    write_report(runs / "proto" / "1" / "meta_test_report.json", [0.9, 0.9, 0.9], algorithm="ProtoNet")
    (runs / "broken" / "1").mkdir(parents=True)
    (runs / "broken" / "1" / "meta_test_report.json").write_text("{")  # a run still being written

    assert find_baseline_reports(runs, json.loads(maml.read_text())) == [new]
    table = show_baselines(maml, runs)
    assert table is not None and "SimpleShot (ss)" in table and "(Δ +10.00" in table
    assert (maml.parent / "baselines.md").read_text() == table + "\n"
    assert "ProtoNet" not in table and "Baseline " not in table
    assert "Beside the baselines" in capsys.readouterr().out


def test_without_a_baseline_run_a_report_says_how_to_get_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    maml = write_report(tmp_path / "maml" / "1" / "meta_test_report.json", [0.5, 0.6, 0.7])
    assert show_baselines(maml, tmp_path) is None
    assert "--model=metaclinic.baselines.SimpleShot" in caplog.text
    config = maml.parent / "config.yaml"
    config.write_text("model: {}\n")
    caplog.clear()
    assert show_baselines(maml, tmp_path) is None  # with the run's config: the command to type
    command = f"python -m metaclinic.fit --config {config} --model=metaclinic.baselines.SimpleShot"
    assert command in caplog.text
