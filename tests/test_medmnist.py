"""Reading the official MedMNIST format, class selection, and the errors a user can run into."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from metaclinic.data import MedMNISTEpisodes, medmnist
from metaclinic.data.synthetic import write_synthetic_medmnist
from metaclinic.errors import DataError

from .conftest import SPLIT


def test_grayscale_and_rgb_pool_together_as_three_channels(make_datamodule):
    dm = make_datamodule()
    assert dm.example_shape == (3, 28, 28)
    dm.setup()
    train = dm.pools["meta_train"]
    assert [c.key for c in train.classes][:2] == ["organamnist:0", "organamnist:1"]
    assert train.classes[-1].name == "erythroblast"
    assert train.class_sizes() == [12] * 9  # official train images only
    organ = train.examples[train.class_indices[0]]
    assert torch.equal(organ[:, 0], organ[:, 2])  # grayscale repeated


def test_image_splits_choose_official_splits(make_datamodule):
    dm = make_datamodule(image_splits={"meta_test": ["val", "test"]})
    dm.setup()
    assert dm.pools["meta_test"].class_sizes() == [24] * 5
    assert dm.pools["meta_val"].class_sizes() == [12] * 5


def test_multi_label_files_keep_single_finding_images_only(tmp_path: Path):
    path = write_synthetic_medmnist(tmp_path, "chestmnist", per_class=3)
    data = dict(np.load(path))
    data["train_labels"][0, 5] = 1  # image 0 now has two findings
    data["train_labels"][3] = 0  # image 3 has none
    np.savez(path, **data)
    pool = medmnist.load_pool(path, "chestmnist", [0, 1], ["train"], channels=1)
    assert pool.class_sizes() == [2, 2]


def test_labels_outside_the_dataset_are_rejected(tmp_path: Path):
    path = write_synthetic_medmnist(tmp_path, "pneumoniamnist", per_class=2)
    data = dict(np.load(path))
    data["train_labels"][0] = 7
    np.savez(path, **data)
    with pytest.raises(ValueError, match=r"train_labels holds label 7; expected 0..1"):
        medmnist.load_pool(path, "pneumoniamnist", [0, 1], ["train"], channels=1)


def test_labels_shorter_than_images_are_rejected(tmp_path: Path):
    path = write_synthetic_medmnist(tmp_path, "bloodmnist", per_class=2)
    data = dict(np.load(path))
    images = len(data["val_images"])
    data["val_labels"] = data["val_labels"][:-3]
    np.savez(path, **data)
    expected = (
        rf"bloodmnist\.npz: val_labels should have one row per image of val_images "
        rf"\({images}\), got {images - 3}$"
    )
    with pytest.raises(DataError, match=expected):
        medmnist.load_pool(path, "bloodmnist", [0, 1], ["train", "val"], channels=3)


def test_missing_file_lists_expected_files_and_where_to_get_them(tmp_path: Path):
    dm = MedMNISTEpisodes(**SPLIT, root=str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert str(tmp_path / "bloodmnist.npz") in message and str(tmp_path / "organamnist.npz") in message
    assert "zenodo.org/records/10519652/files/bloodmnist.npz" in message and "download: true" in message


def test_root_defaults_to_environment_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("METACLINIC_DATA_DIR", str(tmp_path))
    assert MedMNISTEpisodes(**SPLIT).root == tmp_path / "medmnist"


def test_corrupt_file_is_named(tmp_path: Path):
    (tmp_path / "bloodmnist.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"bloodmnist.npz is not a readable .npz"):
        medmnist.load_pool(tmp_path / "bloodmnist.npz", "bloodmnist", [0], ["train"], channels=3)


def test_download_checks_md5_and_keeps_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    served = write_synthetic_medmnist(tmp_path / "server", "breastmnist", per_class=2)
    served = served.rename(served.with_name("breastmnist.npz?download=1"))  # a file:// URL keeps the query
    monkeypatch.setattr(medmnist, "RECORD_URL", (tmp_path / "server").as_uri())
    real_md5 = hashlib.md5(served.read_bytes()).hexdigest()
    target = tmp_path / "root"
    monkeypatch.setitem(medmnist.MEDMNIST_2D, "breastmnist", medmnist.MedMNISTInfo(1, "0" * 32, ("a", "b")))
    with pytest.raises(ValueError, match="expected 0000"):
        medmnist.locate(["breastmnist"], target, allow_download=True)
    assert list(target.iterdir()) == []
    monkeypatch.setitem(medmnist.MEDMNIST_2D, "breastmnist", medmnist.MedMNISTInfo(1, real_md5, ("a", "b")))
    paths = medmnist.locate(["breastmnist"], target, allow_download=True)
    assert paths["breastmnist"].read_bytes() == served.read_bytes()


def test_offline_download_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(medmnist, "RECORD_URL", (tmp_path / "nowhere").as_uri())
    with pytest.raises(FileNotFoundError, match=r"offline(.|\n)*breastmnist.npz(.|\n)*copy the files to"):
        medmnist.locate(["breastmnist"], tmp_path, allow_download=True)


def test_overlapping_splits_are_rejected(make_datamodule):
    dm = make_datamodule(meta_val=["organamnist:5-9"])
    with pytest.raises(
        ValueError, match=r"organamnist:5 \(kidney-right\) is in both meta_train and meta_val"
    ):
        dm.setup()


def test_class_with_too_few_examples_is_named(make_datamodule):
    dm = make_datamodule(n_shot=5, n_query=10)
    with pytest.raises(
        ValueError, match=r"meta_train: 9 class\(es\) have fewer than 15 examples.*organamnist:0"
    ):
        dm.setup()


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("livermnist", "unknown MedMNIST dataset 'livermnist'"),
        ("bloodmnist:8", "outside 0..7"),
        ("bloodmnist:x", "cannot read 'bloodmnist:x'"),
    ],
)
def test_bad_class_selectors(selector: str, message: str):
    with pytest.raises(ValueError, match=message):
        MedMNISTEpisodes(meta_train=[selector], meta_val=[], meta_test=[])


def test_unknown_image_split_key():
    with pytest.raises(ValueError, match="unknown key"):
        MedMNISTEpisodes(**SPLIT, image_splits={"meta_tset": ["test"]})


# -- MedMNIST+ (64, 128, 224 px) -----------------------------------------------------------------------------
def test_larger_medmnist_plus_files_read_like_the_28_pixel_ones(tmp_path: Path):
    root = tmp_path / "medmnist"
    write_synthetic_medmnist(root, "organamnist", per_class=8, size=64)
    write_synthetic_medmnist(root, "bloodmnist", per_class=8, size=64)
    assert sorted(p.name for p in root.iterdir()) == ["bloodmnist_64.npz", "organamnist_64.npz"]
    data = MedMNISTEpisodes(**SPLIT, root=str(root), size=64, n_way=5, n_shot=2, n_query=2)
    assert data.example_shape == (3, 64, 64)
    data.setup("fit")
    task, _ = data._episodes("meta_test", 0, 1)[0]
    assert task.support_x.shape == (10, 3, 64, 64)
    with pytest.raises(FileNotFoundError, match=r"organamnist_128\.npz(.|\n)*files/organamnist_128\.npz"):
        MedMNISTEpisodes(**SPLIT, root=str(root), size=128).prepare_data()


def test_a_file_of_another_size_and_an_unknown_size_are_refused(tmp_path: Path):
    path = write_synthetic_medmnist(tmp_path, "bloodmnist", per_class=2)
    with pytest.raises(DataError, match=r"train_images are \(28, 28\) pixels, expected \(64, 64\)"):
        medmnist.load_pool(path, "bloodmnist", [0], ["train"], channels=3, size=64)
    with pytest.raises(DataError, match="image size 32 does not exist"):
        MedMNISTEpisodes(**SPLIT, size=32)


def test_every_medmnist_plus_file_has_its_checksum():
    assert all((name, size) in medmnist.PLUS_MD5 for name in medmnist.MEDMNIST_2D for size in (64, 128, 224))
