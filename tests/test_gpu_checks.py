"""scripts/gpu_checks.sh: without a CUDA GPU it says so and exits 0, writing nothing; the peak table."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_peak import peak_tflops

from .conftest import REPO

RESULTS = REPO / "benchmarks" / "results"


def test_gpu_checks_skip_cleanly_without_a_gpu():
    before = set(RESULTS.glob("gpu_checks_*.md"))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        ["bash", "scripts/gpu_checks.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines() == ["no CUDA GPU: skipped"]
    assert set(RESULTS.glob("gpu_checks_*.md")) == before


def test_gpu_checks_need_a_python_with_torch(tmp_path: Path):
    bin_dir = tmp_path / "bin"  # a PATH without any python3
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    env = {**os.environ, "PYTHON": str(tmp_path / "no-python"), "PATH": str(bin_dir)}
    result = subprocess.run(["/bin/bash", "scripts/gpu_checks.sh"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "bash scripts/setup.sh, or PYTHON=" in result.stderr


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200", 989.5),
        ("NVIDIA H200 NVL", 835.5),
        ("NVIDIA H100 80GB HBM3", 989.5),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.5),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA GeForce RTX 4090", None),  # not listed: the benchmark runs without --peak_tflops
    ],
)
def test_the_peak_is_the_cards_dense_bf16_figure(name: str, peak: float | None):
    assert peak_tflops(name) == peak
