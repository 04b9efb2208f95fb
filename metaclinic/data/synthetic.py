"""Small MedMNIST-format files with learnable classes, for tests, notebooks and trying metaclinic offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metaclinic.data.medmnist import IMAGE_SPLITS, dataset_info


def write_synthetic_medmnist(
    root: Path,
    name: str,
    per_class: dict[str, int] | int = 20,
    seed: int = 0,
    noise: float = 40.0,
    contrast: float = 20.0,
    flat_labels: bool = False,
) -> Path:
    """Writes ``root/<name>.npz`` in the official layout, with ``name``'s classes, channels and 28x28 size.

    Each class is a faint random 4x4 pattern (``128 ± contrast``, upsampled to 28x28) under pixel noise of
    standard deviation ``noise``: with the defaults an untrained Conv-4 adapted by MAML is near 50% on 5-way
    2-shot episodes and a few dozen meta-training steps take it above 90%. ``per_class`` gives images per
    class in every official split (or per split name); ``flat_labels`` stores labels as ``(N,)``, not
    ``(N, 1)``.
    """
    info, rng = dataset_info(name), np.random.default_rng(seed)
    num_classes, channels = len(info.labels), info.channels
    shape = (num_classes, 4, 4, channels)
    templates = (128 + rng.uniform(-contrast, contrast, size=shape)).repeat(7, axis=1).repeat(7, axis=2)
    arrays = {}
    for split in IMAGE_SPLITS:
        count = per_class if isinstance(per_class, int) else per_class[split]
        labels = np.repeat(np.arange(num_classes), count)
        images = templates[labels] + rng.normal(0, noise, size=(len(labels), 28, 28, channels))
        images = np.clip(images, 0, 255).astype(np.uint8)
        if channels == 1:
            images = images[..., 0]
        if info.multi_label:
            one_hot = np.eye(num_classes, dtype=np.uint8)[labels]
            arrays[f"{split}_labels"] = one_hot
        else:
            arrays[f"{split}_labels"] = (
                labels.astype(np.uint8) if flat_labels else labels[:, None].astype(np.uint8)
            )
        arrays[f"{split}_images"] = images
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.npz"
    np.savez(path, **arrays)
    return path
