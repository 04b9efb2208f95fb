"""What the benchmarks share: the configs' MedMNIST split, the learn2learn view of it, reporting helpers."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import torch

from metaclinic.data import MedMNISTEpisodes
from metaclinic.data.examples import generated_medmnist_root

REPO = Path(__file__).resolve().parents[1]
SPLIT = {
    "meta_train": ["organamnist:0-5", "bloodmnist:0-2"],  # as in configs/*_medmnist.yaml
    "meta_val": ["organamnist:6-10"],
    "meta_test": ["bloodmnist:3-7"],
    "image_splits": {"meta_train": ["train"], "meta_val": ["val"], "meta_test": ["test"]},
}


def data_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the options every benchmark has: where the MedMNIST files are, or generated ones instead."""
    parser.add_argument("--root", default=None, help="MedMNIST folder (default: $METACLINIC_DATA_DIR)")
    parser.add_argument("--synthetic", action="store_true", help="generated files instead of the real ones")
    return parser


def medmnist(root: str | None, synthetic: bool, **episodes: Any) -> MedMNISTEpisodes:
    """The configs' MedMNIST split (real files from ``root`` or $METACLINIC_DATA_DIR), or generated files."""
    if synthetic:
        root = str(generated_medmnist_root(images_per_class=60))
    data = MedMNISTEpisodes(**SPLIT, root=root, download=False, **episodes)
    data.setup()
    return data


def meta_train_tensors(data: MedMNISTEpisodes) -> tuple[torch.Tensor, torch.Tensor]:
    """Every meta-train example (as stored, uint8) with its pool-wide class id: learn2learn's dataset."""
    pool = data.pools["meta_train"]
    labels = torch.empty(len(pool.examples), dtype=torch.long)
    for c, rows in enumerate(pool.class_indices):
        labels[rows] = c
    return pool.examples, labels


def spread(values: list[float]) -> str:
    """Median with the range over repeats."""
    return f"{statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f}, n={len(values)})"


def hardware() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU")
    )


class _Saved:
    """A tensor autograd saved, which gives its bytes back to the meter when autograd lets it go."""

    __slots__ = ("meter", "size", "tensor")

    def __init__(self, meter: LiveSavedTensors, tensor: torch.Tensor) -> None:
        self.meter, self.tensor = meter, tensor
        self.size = tensor.numel() * tensor.element_size()

    def __del__(self) -> None:
        self.meter.live -= self.size


class LiveSavedTensors:
    """The bytes autograd holds for backward passes, now and at most (a tensor saved twice counts twice)."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def pack(self, tensor: torch.Tensor) -> _Saved:
        saved = _Saved(self, tensor)
        self.live += saved.size
        self.peak = max(self.peak, self.live)
        return saved

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda saved: saved.tensor)
