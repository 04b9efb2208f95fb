"""Patient tables as episodic tasks: reading, the three task modes, patients, leakage-free preprocessing."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch import Trainer

from metaclinic.algorithms import MAML, ProtoNet
from metaclinic.baselines import PooledLogisticRegression, SupportLogisticRegression
from metaclinic.data import TableEpisodes, TableSpec
from metaclinic.errors import DataError
from metaclinic.models import MLP

SITES = ("north", "south", "east", "west")


def clinic_table(
    patients_per_site: int = 40, seed: int = 0, visits: int = 1, noise_columns: int = 0
) -> pd.DataFrame:
    """A learnable four-hospital table: the diagnosis depends on ``marker`` and ``smoker``; each site shifts
    ``age`` so that statistics fitted on all sites would differ from those of the training sites.
    ``noise_columns`` uninformative features hide the signal from an untrained network."""
    rng = np.random.default_rng(seed)
    frames = []
    for s, site in enumerate(SITES):
        n = patients_per_site
        diseased = np.arange(n) % 2
        smoker = np.where(rng.random(n) < 0.7, diseased, 1 - diseased)
        frame = pd.DataFrame(
            {
                "patient": [f"{site}-{i}" for i in range(n)],
                "site": site,
                "age": rng.normal(50 + 15 * s, 5, n).round(1),
                "marker": (rng.normal(0, 1, n) + 2.5 * diseased).round(3),
                "smoker": np.where(smoker == 1, "yes", "no"),
                "diagnosis": np.where(diseased == 1, "disease", "healthy"),
                "diabetes": rng.integers(0, 2, n),
                "stroke": rng.integers(0, 2, n),
            }
        )
        for j in range(noise_columns):
            frame[f"noise{j}"] = rng.normal(0, 1, n).round(3)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    return pd.concat([table] * visits, ignore_index=True) if visits > 1 else table


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def site_episodes(path: Path, **overrides) -> TableEpisodes:
    spec = TableSpec(
        path=str(path),
        label_column="diagnosis",
        site_column="site",
        patient_column="patient",
        categorical_columns=["smoker"],
        feature_columns=["age", "marker", "smoker"],
    )
    settings = dict(
        table=spec,
        meta_train=["north", "south"],
        meta_val=["east"],
        meta_test=["west"],
        task_mode="site",
        n_way=2,
        n_shot=3,
        n_query=4,
        meta_batch_size=4,
        meta_batches_per_epoch=10,
        val_episodes=8,
        test_episodes=40,
        eval_meta_batch_size=20,
    )
    settings.update(overrides)
    return TableEpisodes(**settings)


# -- reading -------------------------------------------------------------------------------------------------
def test_bom_crlf_and_quoted_fields_are_read_as_written(tmp_path: Path):
    rows = ["id,note,value,label", '1,"cough, fever",1.5,a', '2,"said ""ok""",2.5,b', "3,none,?,a", "4,x,4,b"]
    text = "\r\n".join(rows) + "\r\n"
    (tmp_path / "t.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    spec = TableSpec(path="t.csv", label_column="label", categorical_columns=["note"], patient_column="id")
    data = TableEpisodes(spec, ["a", "b"], [], [], root=str(tmp_path), n_way=2, n_shot=1, n_query=1)
    names = data.feature_names
    assert names[:2] == ["value", "value:missing"]  # the BOM did not stick to the first column's name
    assert "note=cough, fever" in names and 'note=said "ok"' in names
    features = data.build_pools()["meta_train"].examples
    missing = features[:, names.index("value:missing")]
    assert missing.tolist() == [0, 0, 1, 0]
    assert torch.isfinite(features).all()


def test_headerless_uci_file_with_question_marks(tmp_path: Path):
    (tmp_path / "h.data").write_text("63.0,1.0,?,0\n67,1,4.0,2\n37,0,3,0\n41,0,?,1\n")
    spec = TableSpec(
        path="h.data",
        header=False,
        column_names=["age", "sex", "cp", "num"],
        label_column="num",
        positive_above=0,
        categorical_columns=["cp"],
        missing_values=["?"],
    )
    data = TableEpisodes(spec, ["0", "1"], [], [], root=str(tmp_path), n_way=2, n_shot=1, n_query=1)
    assert data.feature_names == ["age", "sex", "cp=3", "cp=4", "cp:missing"]  # "4.0" and "4" are one code
    pool = data.build_pools()["meta_train"]
    assert [c.key for c in pool.classes] == ["0", "1"]
    assert pool.class_sizes() == [2, 2]  # num 2 and 1 are both "1"


def test_parquet_gives_the_same_features_as_csv(tmp_path: Path):
    frame = clinic_table(10)
    frame.loc[3, "age"] = None
    write_csv(frame, tmp_path / "t.csv")
    frame.to_parquet(tmp_path / "t.parquet")
    features = []
    for name in ("t.csv", "t.parquet"):
        data = site_episodes(tmp_path / name, n_shot=1, n_query=1)
        data.setup()
        features.append(data.pools["meta_train"].examples)
    torch.testing.assert_close(features[0], features[1])


# -- the three task modes ------------------------------------------------------------------------------------
def test_class_tasks_are_n_way_k_shot_over_label_values(tmp_path: Path):
    frame = clinic_table(30)
    frame["grade"] = np.arange(len(frame)) % 6
    spec = TableSpec(path=str(write_csv(frame, tmp_path / "t.csv")), label_column="grade",
                     feature_columns=["age", "marker"])  # fmt: skip
    data = TableEpisodes(spec, ["0", "1", "2"], [], ["4", "5"], n_way=2, n_shot=2, n_query=3)
    data.setup()
    batch = next(iter(data.test_dataloader()))
    assert batch.support_x.shape == (8, 4, 2) and batch.query_x.shape == (8, 6, 2)
    assert {c.key for c in data.pools["meta_test"].classes} == {"4", "5"}
    assert_support_and_query_disjoint(batch)


def test_site_tasks_draw_every_episode_within_one_site(tmp_path: Path):
    data = site_episodes(write_csv(clinic_table(), tmp_path / "t.csv"))
    data.setup()
    pool = data.pools["meta_train"]
    batch = next(iter(data.train_dataloader()))
    assert batch.support_x.shape == (4, 6, 4)  # age, marker, smoker=no, smoker=yes
    for classes in batch.classes.tolist():
        infos = [pool.classes[c] for c in classes]
        assert len({i.domain for i in infos}) == 1 and {i.label for i in infos} == {"disease", "healthy"}
    assert_support_and_query_disjoint(batch)


def test_label_tasks_are_binary_columns_on_disjoint_patients(tmp_path: Path):
    frame = clinic_table(50, visits=2)  # two rows per patient
    spec = TableSpec(path=str(write_csv(frame, tmp_path / "t.csv")),
                     label_column=["diabetes", "stroke", "diagnosis"], patient_column="patient",
                     feature_columns=["age", "marker"])  # fmt: skip
    data = TableEpisodes(spec, ["diabetes", "diagnosis"], [], ["stroke"], task_mode="label", n_way=2,
                         n_shot=2, n_query=3)  # fmt: skip
    data.setup()
    batch = next(iter(data.test_dataloader()))
    assert batch.support_x.shape == (8, 4, 2)
    patients = data._patients
    rows = {s: np.unique(torch.cat(p.class_indices)) for s, p in data.pools.items() if p.num_classes}
    assert set(patients[rows["meta_train"]]).isdisjoint(patients[rows["meta_test"]])
    assert len(rows["meta_train"]) == pytest.approx(0.75 * len(frame), abs=4)  # 0.6 of 0.6 + 0.2 shares
    assert [c.key for c in data.pools["meta_test"].classes] == ["stroke=0", "stroke=1"]


def assert_support_and_query_disjoint(batch) -> None:
    for support, query in zip(batch.support_x, batch.query_x, strict=True):
        assert not (support[:, None, :] == query[None, :, :]).all(-1).any()


# -- patients ------------------------------------------------------------------------------------------------
def test_no_patient_is_in_both_support_and_query_of_an_episode(tmp_path: Path):
    frame = clinic_table(16, visits=3)  # every patient has three rows of one class
    frame["visit"] = np.arange(len(frame))  # rows differ, patients repeat
    path = write_csv(frame, tmp_path / "t.csv")
    data = site_episodes(path, n_shot=3, n_query=5, test_episodes=100)
    data.spec.feature_columns = ["age", "marker", "smoker", "visit"]
    data.setup()
    preprocessor = data.preprocessor
    visit = data.feature_names.index("visit")
    mean, std = preprocessor.means[visit], preprocessor.stds[visit]
    patient_of_row = frame["patient"].to_numpy()
    for batch in data.test_dataloader():
        for support, query in zip(batch.support_x, batch.query_x, strict=True):
            rows = lambda x: np.rint(x[:, visit].numpy() * std + mean).astype(int)  # noqa: E731
            support_patients, query_patients = patient_of_row[rows(support)], patient_of_row[rows(query)]
            assert len(set(support_patients)) == len(support_patients)  # distinct patients
            assert set(support_patients).isdisjoint(query_patients)


def test_a_patient_in_two_splits_is_an_error(tmp_path: Path):
    frame = clinic_table(10)
    frame.loc[frame.index[-1], "patient"] = frame.loc[0, "patient"]  # a west row of a north patient
    with pytest.raises(DataError, match=r"1 patient\(s\) of column 'patient' have rows in more than one"):
        site_episodes(write_csv(frame, tmp_path / "t.csv"), n_shot=1, n_query=1).setup()


def test_too_few_patients_for_k_plus_q_in_a_test_site_is_an_error(tmp_path: Path):
    frame = clinic_table(20)
    frame = frame[(frame.site != "west") | (frame.index % 20 < 12)]  # 6 west patients per class
    data = site_episodes(write_csv(frame, tmp_path / "t.csv"), n_shot=4, n_query=4)
    with pytest.raises(DataError, match=r"west/disease \(west: diagnosis=disease\): 6"):
        data.setup()


def test_a_small_training_site_sits_out_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    frame = clinic_table(40)
    frame = frame[~((frame.site == "south") & (frame.diagnosis == "healthy") & (frame.index % 40 > 4))]
    data = site_episodes(write_csv(frame, tmp_path / "t.csv"), n_shot=3, n_query=4)
    data.setup()
    assert "south/healthy" in caplog.text and "left out of meta-training episodes" in caplog.text
    pool = data.pools["meta_train"]
    for batch in list(data.train_dataloader())[:5]:
        assert all(pool.classes[c].domain == "north" for c in batch.classes.flatten().tolist())


# -- preprocessing -------------------------------------------------------------------------------------------
def test_preprocessing_is_fitted_on_meta_train_rows_only(tmp_path: Path):
    frame = clinic_table()
    data = site_episodes(write_csv(frame, tmp_path / "t.csv"))
    data.setup()
    train = frame[frame.site.isin(["north", "south"])]
    age = data.feature_names.index("age")
    assert data.preprocessor.means[age] == pytest.approx(train.age.mean())
    assert data.preprocessor.means[age] != pytest.approx(frame.age.mean(), abs=1.0)
    test_features = torch.cat(data.pools["meta_test"].class_indices)
    west_age = data.pools["meta_test"].examples[test_features, age]
    assert west_age.mean() > 2.0  # west is older than the training sites, and stays so


def test_a_column_missing_in_a_whole_site_is_imputed_and_flagged(tmp_path: Path):
    frame = clinic_table().astype({"marker": object, "age": object})
    frame.loc[frame.site == "west", ["marker", "age"]] = "?"  # never measured in the test hospital
    frame.loc[frame.index[:3], "marker"] = "?"  # and now and then in a training hospital
    frame.loc[frame.site == "north", "smoker"] = "NA"  # a whole training hospital without it
    data = site_episodes(write_csv(frame, tmp_path / "t.csv"))
    data.setup()
    names, features = data.feature_names, data.pools["meta_test"].examples
    west = torch.cat(data.pools["meta_test"].class_indices)
    assert torch.isfinite(features).all()
    assert (features[west, names.index("marker:missing")] == 1).all()
    for column in ("marker", "age"):  # imputed with the meta-train median, the same for every patient
        assert (features[west, names.index(column)] == features[west[0], names.index(column)]).all()
    assert "age:missing" not in names  # age was never missing in meta-train: nothing to learn from a flag
    assert "smoker:missing" in names


def test_the_preprocessing_travels_in_the_checkpoint(tmp_path: Path):
    path = write_csv(clinic_table(), tmp_path / "t.csv")
    data = site_episodes(path)
    model = ProtoNet(MLP(data.example_shape, hidden=8))
    trainer = Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, inference_mode=False)  # fmt: skip
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)  # plain numbers and strings
    assert checkpoint["TableEpisodes"]["preprocessor"]["means"] == data.preprocessor.means
    # A DataModule that would fit other statistics (other training sites) takes the checkpoint's.
    other = site_episodes(path, meta_train=["north", "east"], meta_val=["south"])
    other.setup()
    other.load_state_dict(checkpoint["TableEpisodes"])
    assert other.preprocessor == data.preprocessor
    torch.testing.assert_close(other.pools["meta_test"].examples, data.pools["meta_test"].examples)


# -- errors --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label_column": "diagnosiss"}, "no column 'diagnosiss'"),
        ({"feature_columns": ["age", "weight"]}, "no column 'weight'"),
        ({"categorical_columns": ["smokr"]}, "no column 'smokr'"),
    ],
)
def test_unknown_columns_are_named(tmp_path: Path, change: dict, message: str):
    data = site_episodes(write_csv(clinic_table(8), tmp_path / "t.csv"))
    for key, value in change.items():
        setattr(data.spec, key, value)
    with pytest.raises(DataError, match=message):
        data.setup()


def test_a_label_column_with_one_value_is_an_error(tmp_path: Path):
    frame = clinic_table(8).assign(diagnosis="disease")
    with pytest.raises(DataError, match=r"label column 'diagnosis' has a single value \['disease'\]"):
        site_episodes(write_csv(frame, tmp_path / "t.csv")).setup()


def table_with_cell(path: Path, column: str, index: int, text: str) -> Path:
    """A clinic table whose ``column`` holds ``text`` in data row ``index + 1``."""
    frame = clinic_table(16).astype({column: object})
    frame.loc[index, column] = text
    return write_csv(frame, path)


def test_text_in_a_numeric_column_names_file_column_and_row(tmp_path: Path):
    path = table_with_cell(tmp_path / "t.csv", "age", 2, "fifty")
    with pytest.raises(DataError, match=rf"column 'age' must be numeric.*{path}, row 3\b"):
        site_episodes(path).setup()


def test_nan_left_after_the_missing_markers_is_an_error(tmp_path: Path):
    path = table_with_cell(tmp_path / "t.csv", "marker", 5, "NaN")
    with pytest.raises(DataError, match=rf"'marker' has 1 NaN/inf cell.*{path}, row 6"):
        site_episodes(path).setup()
    data = site_episodes(path)
    data.spec.missing_values = ["", "?", "NA", "NaN"]
    data.setup()  # declared as a marker, it is a missing value


def test_unknown_sites_and_headerless_without_names(tmp_path: Path):
    path = write_csv(clinic_table(8), tmp_path / "t.csv")
    with pytest.raises(DataError, match=r"unknown site\(s\) \['wset'\]; the table has \['east', 'north'"):
        site_episodes(path, meta_test=["wset"]).setup()
    data = site_episodes(path)
    data.spec.header = False
    with pytest.raises(DataError, match="without header needs column_names"):
        data.setup()


# -- learning ------------------------------------------------------------------------------------------------
def fit_and_test(model, data: TableEpisodes, steps: int) -> tuple[float, float]:
    trainer = Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, inference_mode=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.test(model, datamodule=data, verbose=False)
    before = model.test_report.metrics["accuracy"].mean
    if model.meta_trained:
        trainer.fit(model, datamodule=data)
        trainer.test(model, datamodule=data, verbose=False)
    return before, model.test_report.metrics["accuracy"].mean


@pytest.mark.parametrize("algorithm", ["maml", "protonet"])
def test_maml_and_protonet_learn_a_synthetic_table(tmp_path: Path, algorithm: str):
    torch.manual_seed(0)
    frame = clinic_table(noise_columns=8)
    data = site_episodes(write_csv(frame, tmp_path / "t.csv"), n_shot=2, n_query=6)
    data.spec.feature_columns = ["age", "marker", "smoker", *(c for c in frame if c.startswith("noise"))]
    backbone = MLP(data.example_shape, hidden=16)
    optimizer = functools.partial(torch.optim.Adam, lr=0.01)
    model = (
        MAML(backbone, n_way=2, inner_lr=0.1, train_steps=3, eval_steps=5, optimizer=optimizer)
        if algorithm == "maml"
        else ProtoNet(backbone, optimizer=optimizer)
    )
    before, after = fit_and_test(model, data, steps=40)
    assert after > 0.75 and after > before + 0.15, (before, after)  # chance is 0.5; measured 0.88, 0.84


def test_logistic_regression_baselines_on_the_same_episodes(tmp_path: Path):
    data = site_episodes(write_csv(clinic_table(), tmp_path / "t.csv"), n_shot=5, n_query=6)
    _, support_only = fit_and_test(SupportLogisticRegression(), data, steps=0)
    _, pooled = fit_and_test(PooledLogisticRegression(), data, steps=0)
    assert support_only > 0.7 and pooled > 0.7, (support_only, pooled)
    frame = clinic_table(30).assign(grade=lambda f: np.arange(len(f)) % 4)
    class_tasks = TableEpisodes(
        TableSpec(path=str(write_csv(frame, tmp_path / "g.csv")), label_column="grade",
                  feature_columns=["marker"]),
        ["0", "1"], [], ["2", "3"], n_way=2, n_shot=1, n_query=1,
    )  # fmt: skip
    with pytest.raises(DataError, match=r"trained on outcomes \['0', '1'\] and cannot score"):
        fit_and_test(PooledLogisticRegression(), class_tasks, steps=0)
