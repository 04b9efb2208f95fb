"""``metaclinic.compare``: paired differences over the same episodes, refused for different episodes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metaclinic.compare import main
from metaclinic.report import MetaTestReport


def write_report(
    path: Path, accuracy: list[float], fingerprint: str = "abc", algorithm: str = "MAML"
) -> Path:
    values = torch.tensor(accuracy, dtype=torch.float64)
    report = MetaTestReport.of_episodes(algorithm, 5, 1, 15, {"accuracy": values},
                                        torch.arange(len(accuracy)).flip(0))  # fmt: skip
    report.extra.update(split_fingerprint=fingerprint, eval_seed=0)
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
