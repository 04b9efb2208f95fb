"""Data for the notebooks and demos: the real files when they are there, generated look-alikes otherwise.

The generated files have the real files' layout, so every config and command runs on them unchanged; they
are written under the system's temporary folder, never next to real data.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from metaclinic.data.datamodule import default_data_root
from metaclinic.data.synthetic import write_synthetic_heart_disease, write_synthetic_medmnist

MEDMNIST_FILES = ("organamnist.npz", "bloodmnist.npz")
HEART_FILES = tuple(f"processed.{h}.data" for h in ("cleveland", "hungarian", "switzerland", "va"))


def _generated(name: str) -> Path:
    return Path(tempfile.gettempdir()) / "metaclinic-examples" / name


def medmnist_root(images_per_class: int = 40) -> Path:
    """The folder with OrganAMNIST and BloodMNIST: ``$METACLINIC_DATA_DIR/medmnist``, else generated files."""
    real = default_data_root() / "medmnist"
    if all((real / name).is_file() for name in MEDMNIST_FILES):
        return real
    print(
        f"The real MedMNIST files ({', '.join(MEDMNIST_FILES)}) are not in {real}; using generated images of "
        "the same shapes and classes. To use the real ones, download them from "
        "https://zenodo.org/records/10519652 into $METACLINIC_DATA_DIR/medmnist/ (or set download: true "
        "in a config)."
    )
    return generated_medmnist_root(images_per_class)


def generated_medmnist_root(images_per_class: int = 40) -> Path:
    """Generated OrganAMNIST and BloodMNIST files with ``images_per_class`` images per class and split."""
    root = _generated(f"medmnist-{images_per_class}")
    for name, seed, flat in (("organamnist", 1, False), ("bloodmnist", 2, True)):
        if not (root / f"{name}.npz").is_file():
            write_synthetic_medmnist(root, name, per_class=images_per_class, seed=seed, flat_labels=flat)
    return root


def heart_disease_root(patients: int = 120) -> Path:
    """The data root holding ``uci_heart_disease/``: ``$METACLINIC_DATA_DIR``, else generated hospitals."""
    real = default_data_root()
    if all((real / "uci_heart_disease" / name).is_file() for name in HEART_FILES):
        return real
    print(
        f"The UCI Heart Disease files are not in {real / 'uci_heart_disease'}; using generated patients in "
        "the same format. To use the real ones, download processed.{cleveland,hungarian,switzerland,va}.data "
        "from https://archive.ics.uci.edu/dataset/45/heart+disease into "
        "$METACLINIC_DATA_DIR/uci_heart_disease/."
    )
    root = _generated("heart")
    if not all((root / "uci_heart_disease" / name).is_file() for name in HEART_FILES):
        write_synthetic_heart_disease(root / "uci_heart_disease", patients=patients)
    return root
