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


# -- multi-label findings as binary task families (ChestMNIST) -----------------------------------------------
FINDINGS = {
    "meta_train": ["chestmnist:finding=0-9"],
    "meta_val": [],
    "meta_test": ["chestmnist:finding=12-13"],
}


def write_chest_findings(root: Path, per_split: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    """``root/chestmnist.npz`` with ``(N, 14)`` 0/1 labels, about 30% of each finding, so many images have
    several findings and some none; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in medmnist.IMAGE_SPLITS:
        arrays[f"{split}_labels"] = (rng.random((per_split, 14)) < 0.3).astype(np.uint8)
        arrays[f"{split}_images"] = rng.integers(0, 256, (per_split, 28, 28), dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "chestmnist.npz", **arrays)
    return arrays


def finding_datamodule(root: Path, **overrides) -> MedMNISTEpisodes:
    settings = dict(FINDINGS, root=str(root), n_way=2, n_shot=2, n_query=3, test_episodes=24, val_episodes=4)
    return MedMNISTEpisodes(**{**settings, **overrides})


def test_a_finding_is_every_image_with_it_against_every_image_without_it(tmp_path: Path):
    arrays = write_chest_findings(tmp_path)
    dm = finding_datamodule(tmp_path)
    dm.setup()
    test = dm.pools["meta_test"]
    assert [c.key for c in test.classes] == [
        "chestmnist:finding=12:negative",
        "chestmnist:finding=12:positive",
        "chestmnist:finding=13:negative",
        "chestmnist:finding=13:positive",
    ]
    assert test.classes[1].name == "pleural: positive" and test.classes[1].domain == "chestmnist:finding=12"
    labels = arrays["test_labels"]
    for position, finding in enumerate((12, 13)):
        negative, positive = test.class_indices[2 * position : 2 * position + 2]
        assert negative.tolist() == np.flatnonzero(labels[:, finding] == 0).tolist()
        assert positive.tolist() == np.flatnonzero(labels[:, finding] == 1).tolist()
    both = np.flatnonzero(labels[:, 12] & labels[:, 13])
    assert both.size > 0 and set(both) <= set(test.class_indices[1].tolist()) & set(
        test.class_indices[3].tolist()
    )
    assert torch.equal(
        test.examples[:, 0], torch.from_numpy(arrays["test_images"])
    )  # official test images only
    assert dm.pools["meta_train"].num_classes == 20 and dm.pools["meta_train"].same_domain_episodes


def test_finding_episodes_are_one_finding_positive_against_negative_broken_down_by_finding(tmp_path: Path):
    from metaclinic.data.task import TaskBatch
    from metaclinic.evaluation.recorder import MetaTestRecorder

    arrays = write_chest_findings(tmp_path)
    row_of = {image.tobytes(): row for row, image in enumerate(arrays["test_images"])}
    dm = finding_datamodule(tmp_path)
    dm.setup()
    names = dm.domain_names("meta_test")
    assert names == ["chestmnist:finding=12", "chestmnist:finding=13"]
    episodes = dm._episodes("meta_test", dm.eval_seed, dm.test_episodes)
    tasks = [episodes[i] for i in range(dm.test_episodes)]
    for task, _ in tasks:
        finding = int(names[int(task.domain)].rsplit("=", 1)[1])
        keys = [dm.pools["meta_test"].classes[c].key for c in task.classes]
        assert {k.rsplit(":", 1)[0] for k in keys} == {names[int(task.domain)]}  # both classes of one finding
        assert keys[int(task.positive_class)].endswith(":positive")
        for x, y in [(task.support_x, task.support_y), (task.query_x, task.query_y)]:
            rows = [row_of[image[0].numpy().tobytes()] for image in x]
            has_finding = arrays["test_labels"][rows, finding] == 1
            assert has_finding.tolist() == (y == task.positive_class).tolist()
    assert {int(task.domain) for task, _ in tasks} == {0, 1}
    recorder = MetaTestRecorder()
    batch = TaskBatch.collate(tasks)
    recorder.record(
        torch.randn(len(tasks), 6, 2, generator=torch.Generator().manual_seed(0)), batch, torch.ones(())
    )
    report = recorder.report("random", names, 1.0)
    assert list(report.breakdown) == names and "sensitivity" in report.breakdown[names[0]]
    assert "quadratic_kappa" not in report.metrics  # findings are no grades


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"meta_train": ["chestmnist:finding=3"], "meta_test": ["chestmnist:finding=3-4"]},
            r"chestmnist finding 3 \(infiltration\) is in both data.meta_train \(as 'chestmnist:finding=3'\) "
            r"and data.meta_test",
        ),
        (
            {"meta_train": ["chestmnist:3"], "meta_test": ["chestmnist:finding=3"]},
            r"finding 3 \(infiltration\) is in both data.meta_train \(as 'chestmnist:3'\)",
        ),
        (
            {"meta_test": ["chestmnist:finding=12", "chestmnist:finding=11-12"]},
            r"selects chestmnist finding 12 \(pleural\) twice "
            r"\('chestmnist:finding=12', 'chestmnist:finding=11-12'\)",
        ),
        (
            {"image_splits": {"meta_test": ["train", "test"]}},
            r"meta_train and meta_test both draw chestmnist images from the official 'train' split",
        ),
        (
            {"unlabelled": ["chestmnist"]},
            r"unlabelled: chestmnist images of the 'train' split are also meta_train",
        ),
        ({"n_way": 5}, "n_way must be 2 with finding selectors"),
        ({"meta_test": ["bloodmnist:finding=1"]}, "bloodmnist has one label per image"),
        ({"meta_test": ["chestmnist:finding=14"]}, r"names findings of chestmnist outside 0..13"),
        ({"meta_test": ["chestmnist:finding=x"]}, r"cannot read 'chestmnist:finding=x'"),
        (
            {"unlabelled": ["chestmnist:finding=2"]},
            r"data.unlabelled: 'chestmnist:finding=2' selects a finding",
        ),
    ],
)
def test_finding_selectors_that_leak_or_make_no_sense_are_refused(overrides: dict, message: str):
    with pytest.raises(DataError, match=message):
        finding_datamodule(Path("nowhere"), **overrides)


def test_multi_label_values_other_than_0_and_1_are_named(tmp_path: Path):
    arrays = write_chest_findings(tmp_path)
    arrays["val_labels"][5, 1] = 2
    np.savez(tmp_path / "chestmnist.npz", **arrays)
    with pytest.raises(
        DataError, match=r"val_labels holds 2 at image 5, finding 1; expected 0 \(absent\) or 1"
    ):
        medmnist.load_finding_pool(tmp_path / "chestmnist.npz", "chestmnist", [1], ["val"], channels=1)
    arrays["val_labels"] = arrays["val_labels"][:, :13]
    np.savez(tmp_path / "chestmnist.npz", **arrays)
    with pytest.raises(DataError, match=r"val_labels should be \(N, 14\) of 0/1, got \(40, 13\)"):
        medmnist.load_finding_pool(tmp_path / "chestmnist.npz", "chestmnist", [1], ["val"], channels=1)


# -- ordinal grades (RetinaMNIST) ----------------------------------------------------------------------------
def test_ordinal_episodes_carry_grades_and_the_report_adds_kappa_and_grade_error(tmp_path: Path):
    from metaclinic.data.task import TaskBatch
    from metaclinic.evaluation.recorder import MetaTestRecorder

    write_synthetic_medmnist(tmp_path, "organamnist", per_class=5, seed=1)
    write_synthetic_medmnist(tmp_path, "retinamnist", per_class=5, seed=2)
    splits = {"meta_train": ["organamnist:0-5"], "meta_val": [], "meta_test": ["retinamnist"]}
    settings = dict(splits, root=str(tmp_path), n_way=3, n_shot=2, n_query=2, test_episodes=12)
    dm = MedMNISTEpisodes(**settings, ordinal=True)
    dm.setup()
    episodes = dm._episodes("meta_test", dm.eval_seed, dm.test_episodes)
    tasks = [episodes[i] for i in range(dm.test_episodes)]
    for task, _ in tasks:  # each local class's grade is its RetinaMNIST label
        keys = [dm.pools["meta_test"].classes[c].key for c in task.classes]
        assert task.grades.tolist() == [int(k.split(":")[1]) for k in keys]
    assert dm._episodes("meta_train", 0)[0][0].grades is None  # organ classes are no grades
    batch = TaskBatch.collate(tasks)
    recorder = MetaTestRecorder()
    recorder.record(torch.nn.functional.one_hot(batch.query_y, 3).float() * 5, batch, torch.ones(()))
    report = recorder.report("perfect", dm.domain_names("meta_test"), 1.0)
    assert report.metrics["quadratic_kappa"].mean == pytest.approx(1.0)
    assert report.metrics["grade_mae"].mean == 0.0
    table = report.table()
    assert "quadratic_kappa" in table and "1.000" in table and "not in %" in table
    plain = MedMNISTEpisodes(**settings)
    plain.setup()
    assert plain._episodes("meta_test", 0, 1)[0][0].grades is None


@pytest.mark.parametrize(
    "meta_test", [["bloodmnist:0-2"], ["retinamnist:0-2", "bloodmnist:0"], ["chestmnist:finding=1"]]
)
def test_ordinal_needs_meta_test_grades_of_one_ordinal_dataset(meta_test: list[str]):
    with pytest.raises(DataError, match=r"data.ordinal: the meta-test classes must be grades of one ordinal"):
        MedMNISTEpisodes(meta_train=["organamnist"], meta_val=[], meta_test=meta_test, ordinal=True, n_way=2)
