"""MedMNIST v2 (2D, 28x28) and MedMNIST+ (64, 128, 224 px) as a source of classes: every (dataset, label)
pair is one class.

Reads the official ``.npz`` files (``train_images``, ``train_labels``, ``val_*``, ``test_*``). Labels may be
``(N,)`` or ``(N, 1)``; multi-label files (ChestMNIST, ``(N, 14)`` of 0/1) contribute, as classes, for each
finding the images that have exactly that one finding (the number of images left out is logged, never
dropped silently), or, as findings (:func:`load_finding_pool`), two classes per finding: every image with
the finding and every image without it.

Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image
classification", Scientific Data 10, 41 (2023). Licence CC BY 4.0. The larger MedMNIST+ images are the
same images at 64, 128 and 224 pixels (``<name>_64.npz`` ...), in the same record and layout.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metaclinic.data.pool import ClassInfo, ClassPool
from metaclinic.errors import DataError, MissingDataError

log = logging.getLogger(__name__)

RECORD_URL = "https://zenodo.org/records/10519652/files"
IMAGE_SPLITS = ("train", "val", "test")
SIZES = (28, 64, 128, 224)


@dataclass(frozen=True)
class MedMNISTInfo:
    """What metaclinic needs to know of one official 2D dataset (from ``medmnist.info.INFO`` v3.0.2)."""

    channels: int
    md5: str
    labels: tuple[str, ...]
    multi_label: bool = False
    ordinal: bool = False  # labels are grades of one scale (INFO's task "ordinal-regression")


MEDMNIST_2D: dict[str, MedMNISTInfo] = {
    "pathmnist": MedMNISTInfo(
        3,
        "a8b06965200029087d5bd730944a56c1",
        (
            "adipose",
            "background",
            "debris",
            "lymphocytes",
            "mucus",
            "smooth muscle",
            "normal colon mucosa",
            "cancer-associated stroma",
            "colorectal adenocarcinoma epithelium",
        ),
    ),
    "chestmnist": MedMNISTInfo(
        1,
        "02c8a6516a18b556561a56cbdd36c4a8",
        (
            "atelectasis",
            "cardiomegaly",
            "effusion",
            "infiltration",
            "mass",
            "nodule",
            "pneumonia",
            "pneumothorax",
            "consolidation",
            "edema",
            "emphysema",
            "fibrosis",
            "pleural",
            "hernia",
        ),
        multi_label=True,
    ),
    "dermamnist": MedMNISTInfo(
        3,
        "0744692d530f8e62ec473284d019b0c7",
        (
            "actinic keratoses and intraepithelial carcinoma",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevi",
            "vascular lesions",
        ),
    ),
    "octmnist": MedMNISTInfo(
        1,
        "c68d92d5b585d8d81f7112f81e2d0842",
        ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
    ),
    "pneumoniamnist": MedMNISTInfo(1, "28209eda62fecd6e6a2d98b1501bb15f", ("normal", "pneumonia")),
    "retinamnist": MedMNISTInfo(
        3, "bd4c0672f1bba3e3a89f0e4e876791e4", ("0", "1", "2", "3", "4"), ordinal=True
    ),
    "breastmnist": MedMNISTInfo(1, "750601b1f35ba3300ea97c75c52ff8f6", ("malignant", "normal, benign")),
    "bloodmnist": MedMNISTInfo(
        3,
        "7053d0359d879ad8a5505303e11de1dc",
        (
            "basophil",
            "eosinophil",
            "erythroblast",
            "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
            "lymphocyte",
            "monocyte",
            "neutrophil",
            "platelet",
        ),
    ),
    "tissuemnist": MedMNISTInfo(
        1,
        "ebe78ee8b05294063de985d821c1c34b",
        (
            "Collecting Duct, Connecting Tubule",
            "Distal Convoluted Tubule",
            "Glomerular endothelial cells",
            "Interstitial endothelial cells",
            "Leukocytes",
            "Podocytes",
            "Proximal Tubule Segments",
            "Thick Ascending Limb",
        ),
    ),
    **{
        name: MedMNISTInfo(
            1,
            md5,
            (
                "bladder",
                "femur-left",
                "femur-right",
                "heart",
                "kidney-left",
                "kidney-right",
                "liver",
                "lung-left",
                "lung-right",
                "pancreas",
                "spleen",
            ),
        )
        for name, md5 in (
            ("organamnist", "68e3f8846a6bd62f0c9bf841c0d9eacc"),
            ("organcmnist", "b9ceb9546e10131b32923c5bbeaea2b1"),
            ("organsmnist", "9ab87b696fb54e2a387ebe992d6ed5f1"),
        )
    },
}


# MD5 of the MedMNIST+ files (``<name>_<size>.npz``), from ``medmnist.info.INFO`` v3.0.2.
PLUS_MD5: dict[tuple[str, int], str] = {
    ("pathmnist", 64): "55aa9c1e0525abe5a6b9d8343a507616",
    ("pathmnist", 128): "ac42d08fb904d92c244187169d1fd1d9",
    ("pathmnist", 224): "2c51a510bcdc9cf8ddb2af93af1eadec",
    ("chestmnist", 64): "9de6cd0b934ebb5b7426cfba5efbae16",
    ("chestmnist", 128): "db107e5590b27930b62dbaf558aebee3",
    ("chestmnist", 224): "45bd33e6f06c3e8cdb481c74a89152aa",
    ("dermamnist", 64): "b70a2f5635c6199aeaa28c31d7202e1f",
    ("dermamnist", 128): "2defd784463fa5243564e855ed717de1",
    ("dermamnist", 224): "8974907d8e169bef5f5b96bc506ae45d",
    ("octmnist", 64): "e229e9440236b774d9f0dfef9d07bdaf",
    ("octmnist", 128): "0a97e76651ace45c5d943ee3f65b63ae",
    ("octmnist", 224): "abc493b6d529d5de7569faaef2773ba3",
    ("pneumoniamnist", 64): "8f4eceb4ccffa70c672198ea285246c6",
    ("pneumoniamnist", 128): "05b46931834c231683c68f40c47b2971",
    ("pneumoniamnist", 224): "d6a3c71de1b945ea11211b03746c1fe1",
    ("retinamnist", 64): "afda852cc34dcda56f86ad2b2457dbcc",
    ("retinamnist", 128): "e48e916a24454daf90583d4e6efb1a18",
    ("retinamnist", 224): "eae7e3b6f3fcbda4ae613ebdcbe35348",
    ("breastmnist", 64): "742edef2a1fd1524b2efff4bd7ba9364",
    ("breastmnist", 128): "363e4b3f8d712e9b5de15470a2aaadf1",
    ("breastmnist", 224): "b56378a6eefa9fed602bb16d192d4c8b",
    ("bloodmnist", 64): "2b94928a2ae4916078ca51e05b6b800b",
    ("bloodmnist", 128): "adace1e0ed228fccda1f39692059dd4c",
    ("bloodmnist", 224): "b718ff6835fcbdb22ba9eacccd7b2601",
    ("tissuemnist", 64): "123ece2eba09d0aa5d698fda57103344",
    ("tissuemnist", 128): "61b955355d7425a89687b06cca3ce0c2",
    ("tissuemnist", 224): "b077128c4a949f0a4eb01517f9037b9c",
    ("organamnist", 64): "2dcccc29b88e6da5a01161ef20cda288",
    ("organamnist", 128): "eeae80d0a227a8d099027e1b3cfd3b60",
    ("organamnist", 224): "50747347e05c87dd3aaf92c49f9f3170",
    ("organcmnist", 64): "3ce34a8724ea6f548e6db4744d03b6a9",
    ("organcmnist", 128): "773c1f009daa3fe5d9a2a201b2a7ed94",
    ("organcmnist", 224): "050f5e875dc056f6768abf94ec9995d1",
    ("organsmnist", 64): "53a6d115339d874c25e309a994ff46d3",
    ("organsmnist", 128): "ded0c5fa01a95dc4978b956f613e9b8e",
    ("organsmnist", 224): "b354719e553fbbb2513d5533f52a4cb1",
}


def dataset_info(name: str) -> MedMNISTInfo:
    if name not in MEDMNIST_2D:
        raise DataError(f"unknown MedMNIST dataset {name!r}; expected one of {sorted(MEDMNIST_2D)}")
    return MEDMNIST_2D[name]


def file_name(name: str, size: int = 28) -> str:
    """The official file of ``name`` at ``size`` pixels: ``<name>.npz`` at 28, ``<name>_<size>.npz`` above."""
    if size not in SIZES:
        raise DataError(f"MedMNIST image size {size} does not exist; expected one of {list(SIZES)}")
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def file_url(name: str, size: int = 28) -> str:
    return f"{RECORD_URL}/{file_name(name, size)}?download=1"


def file_md5(name: str, size: int = 28) -> str:
    return dataset_info(name).md5 if size == 28 else PLUS_MD5[(name, size)]


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(name: str, root: Path, size: int = 28) -> Path:
    """Fetches the official file into ``root`` and checks its MD5; a partial download never stays behind.

    The download goes to a file of this host and process, moved over the target once complete: the first
    process of every node prepares the data, and on a shared folder two nodes may download at once.
    """
    md5, target, url = file_md5(name, size), root / file_name(name, size), file_url(name, size)
    root.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{socket.gethostname()}.{os.getpid()}.part")
    log.info("Downloading %s from %s", target.name, url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
        if (got := md5sum(partial)) != md5:
            raise DataError(f"{url} downloaded with MD5 {got}, expected {md5}; nothing was saved, try again")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def locate(names: list[str], root: Path, allow_download: bool, size: int = 28) -> dict[str, Path]:
    """Returns the file of every dataset at ``size`` pixels, downloading missing ones only when allowed."""
    paths = {name: root / file_name(name, size) for name in names}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if not missing:
        return paths
    listed = "\n".join(f"  {paths[name]}  <- {file_url(name, size)}" for name in missing)
    where = (
        "point data.init_args.root (or METACLINIC_DATA_DIR, whose medmnist/ sub-folder is used) at a folder "
        "that holds them"
    )
    if not allow_download:
        raise MissingDataError(
            f"MedMNIST file(s) not found in {root}:\n{listed}\nDownload them from the official record "
            f"(MedMNIST v2, https://zenodo.org/records/10519652) into that folder, set "
            f"data.init_args.download: true to fetch them automatically, or {where}."
        )
    for name in missing:
        try:
            download(name, root, size)
        except OSError as error:
            raise MissingDataError(
                f"Could not download {file_url(name, size)} ({error}); this machine seems to be offline. "
                f"On a machine that is online, download\n{listed}\nand copy the files to {root}, or {where}."
            ) from error
    return paths


def _to_nchw(images: np.ndarray, channels: int, path: Path, key: str) -> torch.Tensor:
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(
            f"{path}: {key} should be uint8 (N,H,W) or (N,H,W,C), got {images.dtype} {images.shape}"
        )
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    if tensor.shape[1] < channels:  # grayscale beside RGB datasets: repeat the channel
        tensor = tensor.expand(-1, channels, -1, -1)
    elif tensor.shape[1] > channels:
        raise DataError(f"{path}: {key} has {tensor.shape[1]} channels, more than the {channels} requested")
    return tensor.contiguous()


def _single_labels(labels: np.ndarray, info: MedMNISTInfo, path: Path, key: str) -> np.ndarray:
    """Returns one label per image, or -1 for images that fit no single class (multi-label files)."""
    if info.multi_label:
        if labels.ndim != 2 or labels.shape[1] != len(info.labels):
            raise DataError(f"{path}: {key} should be (N, {len(info.labels)}), got {labels.shape}")
        positive = labels.sum(axis=1)
        return np.where(positive == 1, labels.argmax(axis=1), -1)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{path}: {key} should be (N,) or (N, 1), got {labels.shape}")
    bad = labels[(labels < 0) | (labels >= len(info.labels))]
    if bad.size:
        raise DataError(f"{path}: {key} holds label {int(bad[0])}; expected 0..{len(info.labels) - 1}")
    return labels.astype(np.int64)


def finding_labels(labels: np.ndarray, info: MedMNISTInfo, path: Path, key: str) -> np.ndarray:
    """A multi-label file's ``(N, findings)`` 0/1 labels, checked: 1 where the image has the finding."""
    if labels.ndim != 2 or labels.shape[1] != len(info.labels):
        raise DataError(f"{path}: {key} should be (N, {len(info.labels)}) of 0/1, got {labels.shape}")
    bad = np.argwhere((labels != 0) & (labels != 1))
    if bad.size:
        row, finding = (int(i) for i in bad[0])
        value = labels[row, finding].item()
        raise DataError(
            f"{path}: {key} holds {value!r} at image {row}, finding {finding}; expected 0 (absent) or 1 "
            "(present)"
        )
    return labels.astype(np.uint8)


def _read_splits(
    path: Path,
    image_splits: list[str],
    channels: int,
    size: int,
    read_labels: Callable[[np.ndarray, str], np.ndarray],
) -> tuple[torch.Tensor, np.ndarray]:
    """The images ``(N, C, H, W)`` of the given official splits of one file, and their labels as
    ``read_labels(labels, key)`` returns them, concatenated in split order."""
    unknown = [s for s in image_splits if s not in IMAGE_SPLITS]
    if unknown:
        raise DataError(f"unknown image split(s) {unknown}; expected a subset of {list(IMAGE_SPLITS)}")
    try:
        archive = np.load(path)
        images, targets = [], []
        for split in image_splits:
            for key in (f"{split}_images", f"{split}_labels"):
                if key not in archive.files:
                    raise DataError(f"{path}: key {key!r} is missing; the file has {archive.files}")
            targets.append(read_labels(archive[f"{split}_labels"], f"{split}_labels"))
            images.append(_to_nchw(archive[f"{split}_images"], channels, path, f"{split}_images"))
            if tuple(images[-1].shape[-2:]) != (size, size):
                raise DataError(
                    f"{path}: {split}_images are {tuple(images[-1].shape[-2:])} pixels, expected "
                    f"({size}, {size}) for data.size={size}"
                )
            if len(targets[-1]) != len(images[-1]):  # else labels would shift onto other images of the file
                raise DataError(
                    f"{path}: {split}_labels should have one row per image of {split}_images "
                    f"({len(images[-1])}), got {len(targets[-1])}"
                )
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise DataError(
            f"{path} is not a readable .npz file ({error}); delete it and download it again"
        ) from error
    return torch.cat(images), np.concatenate(targets)


def load_pool(
    path: Path,
    name: str,
    labels: list[int],
    image_splits: list[str],
    channels: int,
    size: int = 28,
    graded: bool = False,
) -> ClassPool:
    """Reads the images of the given labels from the given official splits of one dataset file.

    ``graded``: every class carries its label as its grade (:attr:`ClassInfo.grade`), for a dataset whose
    labels are grades of one scale (RetinaMNIST).
    """
    info = dataset_info(name)
    images, label_of = _read_splits(
        path, image_splits, channels, size, lambda raw, key: _single_labels(raw, info, path, key)
    )
    if (excluded := int((label_of < 0).sum())) > 0:
        log.info("%s: %d images with no or several findings are not in any class", name, excluded)
    wanted = np.isin(label_of, labels)
    examples = images[torch.from_numpy(wanted)]
    kept = label_of[wanted]
    class_indices = [torch.from_numpy(np.flatnonzero(kept == label)) for label in labels]
    classes = [
        ClassInfo(f"{name}:{label}", info.labels[label], name, grade=label if graded else None)
        for label in labels
    ]
    return ClassPool(examples, class_indices, classes)


NEGATIVE, POSITIVE = "negative", "positive"


def finding_domain(name: str, finding: int) -> str:
    """The task family of one finding, as selectors name it: ``"chestmnist:finding=3"``."""
    return f"{name}:finding={finding}"


def load_finding_pool(
    path: Path, name: str, findings: list[int], image_splits: list[str], channels: int, size: int = 28
) -> ClassPool:
    """Two classes per finding of a multi-label file, negative then positive, from the given official splits.

    The positives of finding ``f`` are every image whose label ``f`` is 1, whatever its other findings; the
    negatives every image whose label ``f`` is 0 (no finding at all, or only others). The two partition the
    images, so an episode of one finding never holds an image twice; across findings they overlap (an image
    with two findings is a positive of both), which is why the images are stored once and each finding is a
    domain of its own (``"chestmnist:finding=3"``), never mixed with another in an episode.
    """
    info = dataset_info(name)
    if not info.multi_label:
        raise DataError(f"{name} has one label per image; findings are for multi-label datasets")
    images, labels = _read_splits(
        path, image_splits, channels, size, lambda raw, key: finding_labels(raw, info, path, key)
    )
    indices, classes = [], []
    for finding in findings:
        present = labels[:, finding] == 1
        domain, what = finding_domain(name, finding), info.labels[finding]
        indices += [torch.from_numpy(np.flatnonzero(~present)), torch.from_numpy(np.flatnonzero(present))]
        classes += [
            ClassInfo(f"{domain}:{NEGATIVE}", f"{what}: {NEGATIVE}", domain),
            ClassInfo(f"{domain}:{POSITIVE}", f"{what}: {POSITIVE}", domain),
        ]
        log.info(
            "%s finding %d (%s), %s images: %d positive, %d negative",
            name, finding, what, "+".join(image_splits), int(present.sum()), int((~present).sum()),
        )  # fmt: skip
    return ClassPool(images, indices, classes)
