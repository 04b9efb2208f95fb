"""Shared fixtures: tiny MedMNIST-format files with learnable classes, written once per test session."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from metaclinic.cli import RUN_DIR_ENV
from metaclinic.data import MedMNISTEpisodes
from metaclinic.data.datamodule import DATA_DIR_ENV
from metaclinic.data.synthetic import write_synthetic_medmnist
from metaclinic.fit import run as fit

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Same class split as configs/quickstart.yaml.
SPLIT = {
    "meta_train": ["organamnist:0-5", "bloodmnist:0-2"],
    "meta_val": ["organamnist:6-10"],
    "meta_test": ["bloodmnist:3-7"],
}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch with one thread inside the block: tiny networks gain nothing from a second (on a busy 2-core
    machine it costs up to 25x), and a reference computed in-process rounds as subprocesses started with
    ``OMP_NUM_THREADS=1`` do."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _offline_and_seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("METACLINIC_RUN_DIR", raising=False)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def medmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "medmnist"
    write_synthetic_medmnist(root, "organamnist", per_class=12, seed=1)
    write_synthetic_medmnist(root, "bloodmnist", per_class=12, seed=2, flat_labels=True)
    return root


@pytest.fixture
def make_datamodule(medmnist_root: Path):
    def make(**overrides) -> MedMNISTEpisodes:
        settings = dict(
            SPLIT,
            root=str(medmnist_root),
            n_way=5,
            n_shot=2,
            n_query=4,
            meta_batch_size=4,
            meta_batches_per_epoch=10,
            val_episodes=8,
            test_episodes=40,
            eval_meta_batch_size=8,
        )
        settings.update(overrides)
        return MedMNISTEpisodes(**settings)

    return make


def fit_in_process(args: list[str], data_dir: Path | None = None) -> Path:
    """Runs ``metaclinic.fit`` here (no interpreter start-up) and returns the run directory."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["metaclinic.fit"])
        patch.setenv("WANDB_MODE", "offline")
        if data_dir is not None:
            patch.setenv(DATA_DIR_ENV, str(data_dir))
        os.environ.pop(RUN_DIR_ENV, None)
        try:
            fit([*args, "--trainer.logger=false", "--trainer.enable_progress_bar=false"])
            return Path(os.environ[RUN_DIR_ENV].partition(":")[2])
        finally:
            os.environ.pop(RUN_DIR_ENV, None)
