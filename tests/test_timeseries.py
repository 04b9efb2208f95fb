"""Time series as few-shot tasks: UCR files and arrays, labels, resampling, errors, FCN, fit and adapt."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from metaclinic.adapt import load_meta_trained, main
from metaclinic.algorithms import ProtoNet
from metaclinic.data import TimeSeriesEpisodes, timeseries
from metaclinic.data.datamodule import DATA_DIR_ENV
from metaclinic.data.synthetic_series import ECG_DATA_SETS, write_synthetic_ecg, write_synthetic_ucr
from metaclinic.data.timeseries_datamodule import parse_selector
from metaclinic.errors import DataError
from metaclinic.evaluation.metrics import episode_sensitivity, episode_specificity
from metaclinic.models import FCN1D
from metaclinic.models.normalization import forward_queries

from .conftest import REPO, SHARED_DATA, fit_in_process, one_thread
from .test_adapt import csv_probabilities, evaluation_probabilities, exported_probabilities

CONFIG = REPO / "configs" / "ecg_protonet.yaml"
CONFIGS = [CONFIG, REPO / "configs" / "ecg_maml.yaml"]
SPLIT = yaml.safe_load((REPO / "configs" / "parts" / "ecg_data.yaml").read_text())["init_args"]
SELECTORS = {split: SPLIT[split] for split in ("meta_train", "meta_val", "meta_test")}
PER_CLASS = 10  # series per class in each generated file: 20 per class, both files pooled
K = 3  # support series per class given to adapt


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These networks are tiny: on a shared 2-core machine a second thread only adds waiting (25x here)."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def ecg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Look-alikes of the four UCR ECG data sets (names, labels, lengths): the data dir's ucr_ecg/."""
    data = tmp_path_factory.mktemp("data")
    write_synthetic_ecg(data / "ucr_ecg", per_class=PER_CLASS)
    return data / "ucr_ecg"


def make_data(root: Path, **overrides) -> TimeSeriesEpisodes:
    settings = dict(
        SELECTORS, root=str(root), length=64, n_way=2, n_shot=2, n_query=3, val_episodes=4, test_episodes=8
    )
    return TimeSeriesEpisodes(**{**settings, **overrides})


def write_tsv(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(row + "\n" for row in rows))
    return path


# -- reading -------------------------------------------------------------------------------------------------
def test_a_ucr_file_reads_labels_values_and_rows(tmp_path: Path):
    path = write_tsv(
        tmp_path / "A_TRAIN.tsv", ["-1\t0.5\t1.5\t2", "1.0000000e+00\t3\t4\t5", "", "2\t6\t7\t8"]
    )
    series = timeseries.read_ucr(path)
    assert series.values.shape == (3, 1, 3) and series.values.dtype == np.float64
    assert series.labels.tolist() == [-1, 1, 2]  # as written: negative, and 1.0000000e+00 is 1
    assert series.rows.tolist() == [1, 2, 4]  # line numbers, the blank line counted
    np.testing.assert_array_equal(series.values[1, 0], [3.0, 4.0, 5.0])
    # A well-formed file takes the fast reader, which reads what the line reader reads.
    generated = write_synthetic_ucr(tmp_path, "B", labels=(3, 7), per_class=4, length=20)["TRAIN"]
    fast, rows = timeseries.read_ucr(generated), timeseries._read_rows(generated, labelled=True)
    np.testing.assert_array_equal(fast.values, rows.values)
    np.testing.assert_array_equal(fast.labels, rows.labels)


def test_arrays_read_like_ucr_files(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 2, 30)).astype(np.float32)
    y = np.repeat([5, 9], 6)
    np.savez(tmp_path / "Z.npz", x=x, y=y)
    np.save(tmp_path / "N.npy", x[:, 0])  # (N, length): one channel
    np.save(tmp_path / "N_labels.npy", y[:, None].astype(np.float64))  # integral floats, (N, 1)
    z = timeseries.read_data_set("Z", tmp_path)
    np.testing.assert_array_equal(z.values, x.astype(np.float64))
    assert z.labels.tolist() == y.tolist()
    n = timeseries.read_data_set("N", tmp_path)
    assert n.values.shape == (12, 1, 30) and n.labels.tolist() == y.tolist()
    data = TimeSeriesEpisodes(["Z:5"], [], ["Z:9"], length=16, channels=2, root=str(tmp_path), n_shot=2)
    assert data.example_shape == (2, 16)
    pools = data.build_pools()
    assert (
        pools["meta_train"].examples.shape == (6, 2, 16)
        and pools["meta_train"].examples.dtype == torch.float32
    )


# -- label mapping and selectors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("ECG5000", ("ECG5000", None)),
        ("ECG5000:3", ("ECG5000", [3])),
        ("ECG5000:1-5", ("ECG5000", [1, 2, 3, 4, 5])),
        ("ECG200:-1,1", ("ECG200", [-1, 1])),
        ("X:-3--1,4", ("X", [-3, -2, -1, 4])),
        ("X:-1-1", ("X", [-1, 0, 1])),
    ],
)
def test_selectors(selector: str, expected: tuple):
    assert parse_selector(selector, "meta_train") == expected


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("X:a", r"cannot read 'X:a'; write 'dataset', 'dataset:3', 'dataset:1-5' or 'dataset:-1,1'"),
        ("X:", "cannot read 'X:'"),
        ("X:3-1", r"the range '3-1' is empty"),
        ("X:1,1", "names a label twice"),
        (":1", "names no data set"),
    ],
)
def test_bad_selectors(selector: str, message: str):
    with pytest.raises(DataError, match=message):
        TimeSeriesEpisodes(meta_train=[selector], meta_val=[], meta_test=[], length=10)


def test_every_data_set_label_pair_is_a_class_keyed_by_its_label(ecg_root: Path):
    data = make_data(ecg_root)
    data.setup()
    keys = {split: [c.key for c in pool.classes] for split, pool in data.pools.items()}
    assert keys == {
        "meta_train": [*(f"ECG5000:{i}" for i in (1, 2)), *(f"CinCECGTorso:{i}" for i in (1, 2, 3, 4))],
        "meta_val": [f"ECG5000:{i}" for i in (3, 4, 5)],
        "meta_test": ["ECG200:-1", "ECG200:1", "ECGFiveDays:1", "ECGFiveDays:2"],
    }
    assert data.pools["meta_test"].classes[0].name == "label -1"
    assert data.pools["meta_test"].class_sizes() == [2 * PER_CLASS] * 4  # TRAIN and TEST pooled
    # The pool's class j holds exactly the series of the file whose label is that class's.
    raw = timeseries.read_data_set("ECG200", ecg_root)
    test = data.pools["meta_test"]
    for j, label in enumerate((-1, 1)):
        rows = np.flatnonzero(raw.labels == label)
        expected = timeseries.to_examples(raw.values[rows], 64)
        torch.testing.assert_close(test.examples[test.class_indices[j]], expected, atol=0, rtol=0)
    picked = make_data(ecg_root, meta_val=["ECG5000:3,5"]).build_pools()["meta_val"]
    assert [c.key for c in picked.classes] == ["ECG5000:3", "ECG5000:5"]


# -- resampling and z-normalisation --------------------------------------------------------------------------
def test_resampling_is_linear_interpolation_keeping_both_ends():
    x = torch.tensor([[[0.0, 1.0, 2.0, 3.0]], [[0.0, 3.0, 0.0, 3.0]]], dtype=torch.float64)
    torch.testing.assert_close(timeseries.resample(x, 7)[0, 0], torch.arange(7, dtype=torch.float64) / 2)
    torch.testing.assert_close(
        timeseries.resample(x, 7)[1, 0], torch.tensor([0, 1.5, 3, 1.5, 0, 1.5, 3], dtype=torch.float64)
    )
    torch.testing.assert_close(timeseries.resample(x, 2)[0, 0], torch.tensor([0.0, 3.0], dtype=torch.float64))
    assert timeseries.resample(x, 4) is x


def test_z_normalisation_is_the_archives_and_constant_series_become_zeros():
    rng = np.random.default_rng(1)
    values = rng.normal(3.0, 2.0, size=(5, 2, 50))
    values[1, 0] = 7.25  # constant
    values[2, 1] = 1e4 + np.zeros(50)
    out = timeseries.to_examples(values, 80)
    assert out.shape == (5, 2, 80) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out[1, 0].eq(0).all() and out[2, 1].eq(0).all()  # zeros, not NaN, also after resampling
    resampled = timeseries.resample(torch.from_numpy(values), 80).numpy()
    mean, std = resampled.mean(-1, keepdims=True), resampled.std(-1, ddof=1, keepdims=True)
    expected = np.where(std > 0, (resampled - mean) / np.where(std > 0, std, 1), 0)
    np.testing.assert_allclose(out[0].numpy(), expected[0], atol=1e-6)  # normalised after resampling
    assert np.allclose(out[0].numpy().std(-1, ddof=1), 1, atol=1e-5)
    raw = timeseries.to_examples(values, 50, normalise=False)
    np.testing.assert_allclose(raw.numpy(), values.astype(np.float32))


# -- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["1\t0.1\t0.2\t0.3", "2\t0.1\t0.2"], r"A_TRAIN\.tsv, row 2: 2 values, but row 1 has 3"),
        (["1\t0.1\t0.2", "2\t0.1\t0.2\t0.3"], r"A_TRAIN\.tsv, row 2: 3 values, but row 1 has 2"),
        (["1\t0.1\t0.2", "1.5\t0.1\t0.2"], r"A_TRAIN\.tsv, row 2: label '1.5' is not an integer"),
        (["normal\t0.1\t0.2"], r"A_TRAIN\.tsv, row 1: label 'normal' is not an integer"),
        (["1\t0.1\t0.2", "", "1\t0.1\tNaN"], r"A_TRAIN\.tsv, row 3, value 2 \(column 3\): 'NaN' is NaN"),
        (["1\t0.1\tinf"], r"row 1, value 2 \(column 3\): 'inf' is infinite"),
        (["1\t0.1\t0.2", "1\t0,5\t0.2"], r"row 2, value 1 \(column 2\): '0,5' is not a number"),
        (["1,0.1,0.2"], r"row 1: one field .* tab-separated"),
        ([], r"A_TRAIN\.tsv: no series"),
    ],
)
def test_malformed_ucr_files_are_named_with_row_and_value(tmp_path: Path, rows: list[str], message: str):
    write_tsv(tmp_path / "A_TRAIN.tsv", rows)
    write_tsv(tmp_path / "A_TEST.tsv", ["1\t0.1\t0.2\t0.3"])
    with pytest.raises(DataError, match=message):
        timeseries.read_data_set("A", tmp_path)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((3, 1, 5))}, r"Z\.npz: holds \['x'\]; a series file holds x .* and y"),
        (
            {"x": np.zeros((3, 5)), "y": np.array([1, 2, 2.5])},
            r"Z\.npz: label of series 2 is 2\.5, not an int",
        ),
        (
            {"x": np.zeros((3, 5)), "y": np.array([1, 2])},
            r"labels should be \(3,\), one per series, got \(2,\)",
        ),
        ({"x": np.zeros((3, 1, 1, 5)), "y": np.array([1, 2, 2])}, r"x should be numbers of shape \(N, chann"),
        (
            {"x": np.array([[0, 1, np.nan]]), "y": np.array([1])},
            r"Z\.npz: series 0, channel 0, value 2 is nan",
        ),
    ],
)
def test_malformed_arrays_are_named(tmp_path: Path, arrays: dict, message: str):
    np.savez(tmp_path / "Z.npz", **arrays)
    with pytest.raises(DataError, match=message):
        timeseries.read_data_set("Z", tmp_path)


def test_missing_files_say_what_is_expected_and_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_tsv(tmp_path / "A_TRAIN.tsv", ["1\t0.1\t0.2"])
    with pytest.raises(FileNotFoundError, match=r"A_TEST\.tsv: no such file; the UCR data set A is the pair"):
        timeseries.read_data_set("A", tmp_path)
    data = TimeSeriesEpisodes(["Nope"], [], ["A"], length=10, root=str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        data.prepare_data()  # every missing file in one message
    assert "A_TEST.tsv: no such file" in str(error.value)
    assert re.search(
        r"'Nope' not found in .*Nope_TRAIN\.tsv and Nope_TEST\.tsv .*Nope\.npz", str(error.value)
    )
    np.save(tmp_path / "N.npy", np.zeros((2, 4)))
    with pytest.raises(DataError, match=r"N_labels\.npy: no such file"):
        timeseries.read_data_set("N", tmp_path)
    monkeypatch.setenv("METACLINIC_DATA_DIR", str(tmp_path))
    assert TimeSeriesEpisodes(**SELECTORS, length=10).root == tmp_path / "ucr_ecg"


def test_files_of_one_data_set_must_have_one_length(tmp_path: Path):
    write_tsv(tmp_path / "A_TRAIN.tsv", ["1\t0.1\t0.2"])
    write_tsv(tmp_path / "A_TEST.tsv", ["1\t0.1\t0.2\t0.3"])
    with pytest.raises(DataError, match=r"A_TRAIN\.tsv has series of 2 values, A_TEST\.tsv of 3"):
        timeseries.read_data_set("A", tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # Meta-train too (same-dataset pools would otherwise leave the class out with a warning).
        ({"n_shot": 5, "n_query": 16}, r"meta_train: 6 class\(es\) have fewer than 21 examples.*ECG5000:1"),
        ({"meta_val": ["ECG5000:2-4"]}, r"class ECG5000:2 \(label 2\) is in both meta_train and meta_val"),
        ({"meta_val": ["ECG5000:3-4", "ECG5000:4"]}, "meta_val: class ECG5000:4 is selected twice"),
        ({"meta_val": ["ECG5000:3,6"]}, r"ECG5000 has no label 6; its labels are 1, 2, 3, 4, 5"),
        ({"n_way": 3}, r"meta_train: data set ECG5000 has 2 class\(es\) .*fewer than n_way=3"),
        ({"channels": 2}, r"CinCECGTorso: series of 1 channel\(s\), but data.channels is 2"),
        ({"positive_labels": {"ECG201": -1}}, r"positive_labels names ECG201, which no meta-split selects"),
        ({"positive_labels": {"ECG200": 2}}, r"positive_labels.ECG200: .* no label 2; its labels are -1, 1"),
        ({"positive_labels": {"ECG200": "-1"}}, r"positive_labels.ECG200: '-1' is not a label of the file"),
    ],
)
def test_bad_configurations_are_named(ecg_root: Path, overrides: dict, message: str):
    with pytest.raises(DataError, match=message):
        make_data(ecg_root, **overrides).setup()


# -- episodes ------------------------------------------------------------------------------------------------
def test_episodes_are_seeded_from_one_data_set_and_disjoint_across_splits(ecg_root: Path):
    data = make_data(ecg_root)
    data.setup()
    owners = {c.key: split for split, pool in data.pools.items() for c in pool.classes}
    assert len(owners) == sum(pool.num_classes for pool in data.pools.values())  # no class in two splits
    for split, pool in data.pools.items():
        episodes = data._episodes(split, seed=0, num_episodes=6)
        for i in range(6):
            task, _ = episodes[i]
            assert task.support_x.shape == (4, 1, 64) and task.query_x.shape == (6, 1, 64)
            names = {pool.classes[c].domain for c in task.classes.tolist()}
            assert len(names) == 1 and int(task.domain) >= 0  # both classes from one data set
            assert {owners[pool.classes[c].key] for c in task.classes.tolist()} == {split}
            support = {tuple(x.flatten().tolist()) for x in task.support_x}
            assert not support & {tuple(x.flatten().tolist()) for x in task.query_x}
            again, _ = data._episodes(split, seed=0, num_episodes=6)[i]
            assert torch.equal(again.query_x, task.query_x)
    assert data.domain_names("meta_test") == ["ECG200", "ECGFiveDays"]


@pytest.mark.parametrize(
    ("positive_labels", "expected"),
    [
        ({"ECG200": -1}, {"ECG200": "ECG200:-1", "ECGFiveDays": "ECGFiveDays:2"}),
        ({}, {"ECG200": "ECG200:1", "ECGFiveDays": "ECGFiveDays:2"}),  # the key sorting last
    ],
)
def test_a_data_sets_positive_label_is_the_positive_class_of_its_episodes(
    ecg_root: Path, positive_labels: dict, expected: dict
):
    data = make_data(ecg_root, positive_labels=positive_labels)
    data.setup()
    pool = data.pools["meta_test"]
    episodes = data._episodes("meta_test", seed=0, num_episodes=12)
    seen = set()
    for i in range(12):
        task, _ = episodes[i]
        keys = [pool.classes[c].key for c in task.classes.tolist()]
        domain = pool.classes[int(task.classes[0])].domain
        assert keys[int(task.positive_class)] == expected[domain]
        seen.add((domain, int(task.positive_class)))
        # A model that calls every query positive: sensitivity 1, specificity 0, for the positive class.
        logits = torch.nn.functional.one_hot(task.positive_class.expand(len(task.query_y)), 2).float()[None]
        assert episode_sensitivity(logits, task.query_y[None], task.positive_class[None]).item() == 1.0
        assert episode_specificity(logits, task.query_y[None], task.positive_class[None]).item() == 0.0
    assert {positive for _, positive in seen} == {0, 1}  # either local class, as the draw orders them
    assert {domain for domain, _ in seen} == {"ECG200", "ECGFiveDays"}


def test_both_ecg_configs_share_data_and_budget_and_name_infarction_positive():
    configs = [yaml.safe_load(path.read_text()) for path in CONFIGS]
    assert {(c["data"], c["trainer"]) for c in configs} == {("parts/ecg_data.yaml", "parts/ecg_trainer.yaml")}
    assert [c["model"]["class_path"].rsplit(".", 1)[1] for c in configs] == ["ProtoNet", "MAML"]
    assert configs[0]["model"]["init_args"]["backbone"] == configs[1]["model"]["init_args"]["backbone"]
    assert configs[1]["model"]["init_args"]["first_order"] is False
    assert SPLIT["positive_labels"] == {"ECG200": -1}


# -- the backbone --------------------------------------------------------------------------------------------
def test_fcn_is_the_papers_network_and_inductive():
    fcn = FCN1D((1, 140))
    convs = [m for m in fcn.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [(128, 8), (256, 5), (128, 3)]
    assert fcn.out_features == 128
    small = FCN1D((3, 50), filters=(4, 8, 6)).eval()
    assert small(torch.randn(5, 3, 50)).shape == (5, 6)
    assert small(torch.randn(5, 3, 17)).shape == (5, 6)  # global average pooling: any length
    support, query = torch.randn(4, 3, 50), torch.randn(6, 3, 50)
    with torch.no_grad():
        torch.testing.assert_close(
            forward_queries(small, support, query)[2:3], forward_queries(small, support, query[2:3])
        )
    with pytest.raises(ValueError, match=r"takes series \(channels, length\)"):
        FCN1D((3, 28, 28))


# -- meta-training and adapting ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ecg_run(ecg_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/ecg_protonet.yaml on the generated look-alikes, a small FCN, 30 steps."""
    runs = tmp_path_factory.mktemp("runs")
    args = [
        "--config", str(CONFIG), f"--runs_dir={runs}", "--trainer.max_steps=30",
        "--trainer.callbacks.init_args.every_n_train_steps=15", "--data.init_args.meta_batch_size=2",
        "--data.init_args.meta_batches_per_epoch=15", "--data.init_args.n_query=5",
        "--data.init_args.val_episodes=4", "--data.init_args.test_episodes=20",
        "--model.init_args.backbone.init_args.filters=[8, 16, 8]",
    ]  # fmt: skip
    return fit_in_process(args, data_dir=ecg_root.parent)


def untrained_accuracy(model: ProtoNet, data: TimeSeriesEpisodes) -> float:
    """Query accuracy of ``model`` on the data's meta-test episodes (the report's)."""
    model.eval()
    correct = []
    with torch.no_grad():
        for batch in data.test_dataloader():
            batch = data.on_after_batch_transfer(batch, 0)
            correct.append((model.score_tasks(batch).argmax(-1) == batch.query_y).float().flatten())
    return torch.cat(correct).mean().item()


def test_protonet_on_the_fcn_learns_the_series(ecg_run: Path, ecg_root: Path):
    report = json.loads((ecg_run / "meta_test_report.json").read_text())
    accuracy = report["metrics"]["accuracy"]["mean"]
    centroid = report["references"]["NearestCentroid"]["metrics"]["accuracy"]["mean"]
    assert report["n_way"] == 2 and report["episodes"] == 20
    assert sorted(report["breakdown"]) == ["ECG200", "ECGFiveDays"]
    # Random phases cancel in class means: the raw series' nearest centroid is near chance.
    assert accuracy > 0.95 and centroid < 0.65
    # The run's meta-test episodes (same split, settings and eval_seed), scored by the network untrained.
    data = make_data(ecg_root, length=SPLIT["length"], n_shot=SPLIT["n_shot"], n_query=5, test_episodes=20)
    data.setup()
    assert data.split_fingerprint == report["extra"]["split_fingerprint"]
    torch.manual_seed(0)
    fresh = ProtoNet(FCN1D(data.example_shape, filters=(8, 16, 8)))
    assert accuracy > untrained_accuracy(fresh, data) + 0.04  # better than the same network untrained


def test_adapt_to_a_support_file_gives_the_evaluation_probabilities(
    ecg_run: Path, ecg_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(DATA_DIR_ENV, str(ecg_root.parent))  # to set up the data, for the evaluation path
    checkpoint = next((ecg_run / "checkpoints").glob("best-*.ckpt"))
    meta_trained = load_meta_trained(checkpoint)
    data = meta_trained.data
    assert meta_trained.input_shape == (1, 140) and meta_trained.data_state["series"]["length"] == 140
    data.setup()
    pool = data.pools["meta_test"]
    # ECG200's series as they are in its files: support rows with their labels, cases to predict with "?".
    raw = timeseries.read_data_set("ECG200", ecg_root)
    in_file = [np.flatnonzero(raw.labels == label) for label in (-1, 1)]
    line = lambda i, label: "\t".join([label, *map(repr, raw.values[i, 0].tolist())])  # noqa: E731
    support_rows = [pool.class_indices[j][:K] for j in range(2)]
    query_rows = [int(pool.class_indices[j][k]) for k in range(K, K + 3) for j in range(2)]
    query_lines = [line(in_file[j][k], "?") for k in range(K, K + 3) for j in range(2)]
    write_tsv(
        tmp_path / "support.tsv",
        [line(in_file[j][k], str(lab)) for j, lab in enumerate((-1, 1)) for k in range(K)],
    )
    write_tsv(tmp_path / "predict.tsv", query_lines)

    out = tmp_path / "adapted"
    main([f"--ckpt_path={checkpoint}", f"--support={tmp_path / 'support.tsv'}",
          f"--predict={tmp_path / 'predict.tsv'}", f"--out={out}"])  # fmt: skip

    predictions = pd.read_csv(out / "predictions.csv", dtype={"prediction": str})
    assert list(predictions.columns) == ["row", "prediction", "probability_-1", "probability_1"]
    assert predictions["row"].tolist() == list(range(1, 7))
    probabilities = csv_probabilities(out / "predictions.csv", ["-1", "1"])
    expected = evaluation_probabilities(meta_trained.model, data, support_rows, query_rows)
    torch.testing.assert_close(probabilities, expected, atol=1e-5, rtol=0)
    x = pool.examples[torch.tensor(query_rows)]
    torch.testing.assert_close(exported_probabilities(out, x), probabilities, atol=1e-5, rtol=0)
    torch.testing.assert_close(exported_probabilities(out, x[2:3]), probabilities[2:3], atol=1e-5, rtol=0)
    info = json.loads((out / "adapted_model.json").read_text())
    assert info["classes"] == ["-1", "1"] and info["support"]["counts"] == {"-1": K, "1": K}
    assert info["input"]["kind"] == "series" and info["input"]["shape"] == [1, 140]
    assert not info["batch_dependent"]


def test_case_files_may_carry_labels_and_must_have_the_label_column(tmp_path: Path):
    reader = timeseries.SeriesCases(channels=1, length=8)
    path = write_tsv(tmp_path / "new.tsv", ["?\t1\t2\t3", "1\t3\t2\t1", "\t0\t0\t0"])
    cases = reader.read_cases(path)
    assert cases.x.shape == (3, 1, 8) and cases.x[2].eq(0).all()
    assert cases.ids["row"].tolist() == [1, 2, 3]
    assert cases.ids["label"].tolist() == [pd.NA, 1, pd.NA]
    with pytest.raises(DataError, match=r"row 1: label '0.5' is not an integer; .* or a placeholder: \?"):
        reader.read_cases(write_tsv(tmp_path / "values_only.tsv", ["0.5\t1\t2"]))
    with pytest.raises(DataError, match=r"row 1: label '\?' is not an integer"):
        reader.read_support(path)
    with pytest.raises(DataError, match=r"--label_column is for table models"):
        TimeSeriesEpisodes(**SELECTORS, length=8).case_reader({}, label_column="y")


# -- the real files ------------------------------------------------------------------------------------------
@pytest.mark.skipif(not (SHARED_DATA / "ucr_ecg").is_dir(), reason="../shared/data/ucr_ecg is not here")
def test_the_real_ecg_files_read_as_the_config_expects():
    root = SHARED_DATA / "ucr_ecg"
    data = TimeSeriesEpisodes(**SELECTORS, root=str(root), length=SPLIT["length"], n_way=SPLIT["n_way"],
                              n_shot=SPLIT["n_shot"], n_query=SPLIT["n_query"])  # fmt: skip
    data.setup()
    sizes = {
        c.key: n
        for pool in data.pools.values()
        for c, n in zip(pool.classes, pool.class_sizes(), strict=True)
    }
    assert sizes["ECG200:-1"] == 67 and sizes["ECG200:1"] == 133
    assert sizes["ECG5000:5"] == 24 == min(sizes.values()) >= SPLIT["n_shot"] + SPLIT["n_query"]
    assert sum(sizes.values()) == 5000 + 1420 + 200 + 884  # every series of both files of each data set
    first_rows = {name: (root / f"{name}_TRAIN.tsv").open().readline() for name in ECG_DATA_SETS}
    assert {name: length for name, (_, length) in ECG_DATA_SETS.items()} == {
        name: row.count("\t") for name, row in first_rows.items()
    }  # the look-alikes have the real lengths
    # The archive's series are z-normalised already (sample std 1): at their own length nothing changes.
    ecg5000 = timeseries.read_ucr(root / "ECG5000_TRAIN.tsv")
    torch.testing.assert_close(
        timeseries.to_examples(ecg5000.values, 140),
        torch.from_numpy(ecg5000.values).float(),
        atol=2e-6,
        rtol=0,
    )
