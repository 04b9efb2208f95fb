"""Small UCR-format files with learnable classes, for tests and for trying the time-series data offline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from metaclinic.data.timeseries import UCR_FILES


def synthetic_series(
    labels: Sequence[int], per_class: int, length: int, rng: np.random.Generator, noise: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` series ``(N, length)`` of each label and their labels ``(N,)``, in label order.

    The series of the ``j``-th label are sinusoids of ``2 + 1.5 j`` cycles per series, with a random phase,
    an amplitude in ``[0.8, 1.2]`` and an offset in ``[-1, 1]``, under Gaussian noise of standard deviation
    ``noise``. The frequency is counted per series, so a class keeps it when resampled to another length.
    The random phase cancels out in class means, so the nearest centroid of the raw series stays near
    chance, while a convolutional network that averages over time tells the frequencies apart.
    """
    t = np.linspace(0.0, 1.0, length)
    cycles = np.repeat(2.0 + 1.5 * np.arange(len(labels)), per_class)[:, None]
    count = len(cycles)
    phase = rng.uniform(0, 2 * np.pi, (count, 1))
    amplitude = rng.uniform(0.8, 1.2, (count, 1))
    offset = rng.uniform(-1.0, 1.0, (count, 1))
    series = (
        amplitude * np.sin(2 * np.pi * cycles * t + phase) + offset + rng.normal(0, noise, (count, length))
    )
    return series, np.repeat(np.asarray(labels, dtype=np.int64), per_class)


def write_synthetic_ucr(
    root: Path,
    name: str,
    labels: Sequence[int] = (1, 2),
    per_class: int = 10,
    length: int = 64,
    seed: int = 0,
    noise: float = 0.3,
) -> dict[str, Path]:
    """Writes ``root/<name>_TRAIN.tsv`` and ``root/<name>_TEST.tsv`` in the UCR archive's layout: made-up
    series of :func:`synthetic_series`, ``per_class`` of each label in each file, rows of the classes
    interleaved (as in the archive, where files are not sorted by class).

    ``labels`` are written as given (e.g. ``(-1, 1)`` as ECG200 has them); values with 7 significant digits,
    like the archive's files. Returns the two paths by part (``"TRAIN"``, ``"TEST"``).
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for part in UCR_FILES:
        series, y = synthetic_series(labels, per_class, length, rng, noise)
        order = rng.permutation(len(y))
        lines = ["\t".join([str(int(y[i])), *(f"{v:.7g}" for v in series[i])]) + "\n" for i in order.tolist()]
        paths[part] = root / f"{name}_{part}.tsv"
        paths[part].write_text("".join(lines))
    return paths


# The four ECG data sets of ../shared/data/ucr_ecg: their labels and series lengths.
ECG_DATA_SETS: dict[str, tuple[tuple[int, ...], int]] = {
    "ECG5000": ((1, 2, 3, 4, 5), 140),
    "CinCECGTorso": ((1, 2, 3, 4), 1639),
    "ECG200": ((-1, 1), 96),
    "ECGFiveDays": ((1, 2), 136),
}


def write_synthetic_ecg(root: Path, per_class: int = 10, seed: int = 0) -> dict[str, dict[str, Path]]:
    """Writes made-up look-alikes of the four UCR ECG data sets into ``root``: their file names, labels and
    lengths, :func:`synthetic_series` in place of heartbeats, so ``configs/ecg_protonet.yaml`` runs on them
    unchanged (with ``data.init_args.root`` pointed at ``root``, and ``n_shot + n_query <= 2 * per_class``).
    """
    return {
        name: write_synthetic_ucr(root, name, labels, per_class, length, seed=seed + i)
        for i, (name, (labels, length)) in enumerate(ECG_DATA_SETS.items())
    }
