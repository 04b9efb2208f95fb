"""Tables as users bring them (issue 20): every common shape has a route, and set-up says all that is wrong.

Each section reproduces one finding on a generated table and checks the new behaviour and its message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch import Trainer

from metaclinic.algorithms import ProtoNet
from metaclinic.baselines import PooledLogisticRegression, SupportLogisticRegression
from metaclinic.cli import MetaClinicCLI
from metaclinic.data import TableEpisodes, TableSpec
from metaclinic.data.preprocess import TablePreprocessor
from metaclinic.data.synthetic import write_synthetic_heart_disease
from metaclinic.errors import DataError
from metaclinic.models import MLP

from .conftest import REPO, SHARED_DATA, fit_in_process

EPISODES = dict(n_way=2, n_shot=3, n_query=4, meta_batch_size=2, meta_batches_per_epoch=5, test_episodes=20)


def cohort_table(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """One hospital, one binary outcome, no site column: the most common clinical table."""
    rng = np.random.default_rng(seed)
    sick = np.arange(n) % 2
    return pd.DataFrame(
        {
            "age": rng.normal(55, 8, n).round(1),
            "marker": (rng.normal(0, 1, n) + 2 * sick).round(3),
            "smoker": np.where(rng.random(n) < 0.5 + 0.3 * (2 * sick - 1), "yes", "no"),
            "outcome": sick,
        }
    )


def episodes(tmp_path: Path, frame: pd.DataFrame, splits=(["0", "1"], [], ["0", "1"]), **settings):
    frame.to_csv(tmp_path / "t.csv", index=False)
    table = {"path": str(tmp_path / "t.csv"), "label_column": "outcome", **settings.pop("table", {})}
    options = {"task_mode": "cohort", **EPISODES, **settings}
    return TableEpisodes(TableSpec(**table), *splits, **options)


def trainer(**settings) -> Trainer:
    options = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, inference_mode=False, max_steps=2)  # fmt: skip
    return Trainer(**{**options, **settings})


# -- 1. a single binary table without a site column ----------------------------------------------------------
def test_class_mode_on_a_binary_table_says_to_use_cohort_mode(tmp_path: Path):
    with pytest.raises(DataError) as error:
        episodes(tmp_path, cohort_table(), (["0"], [], ["1"]), task_mode="class").setup()
    assert str(error.value) == (
        "the table has 2 problems:\n"
        "  1. data.meta_train lists 1 value(s) of 'outcome' (['0']), fewer than n_way=2: a class-mode task "
        "draws n_way label values of one split. For one outcome column, use task_mode: cohort (its patients "
        "are divided between the meta-splits; README: 'Which task mode for my table').\n"
        "  2. data.meta_test lists 1 value(s) of 'outcome' (['1']), fewer than n_way=2: a class-mode task "
        "draws n_way label values of one split. For one outcome column, use task_mode: cohort (its patients "
        "are divided between the meta-splits; README: 'Which task mode for my table')."
    )
    overlap = (
        r"^data\.meta_train and data\.meta_test both list value\(s\) of 'outcome' \['0', '1'\]; meta-splits "
        r"must be disjoint: class mode meta-tests on label values that meta-train never showed\. For one "
        r"outcome column, use task_mode: cohort"
    )
    with pytest.raises(DataError, match=overlap):
        episodes(tmp_path, cohort_table(), task_mode="class").setup()


def test_label_mode_with_one_column_in_two_splits_says_to_use_cohort_mode(tmp_path: Path):
    data = episodes(tmp_path, cohort_table(), (["outcome"], [], ["outcome"]), task_mode="label")
    with pytest.raises(DataError, match=r"both list label column\(s\) \['outcome'\]; meta-splits must be "
                       r"disjoint: label mode meta-tests on label columns \(diseases\) meta-train never "
                       r"showed\. For one outcome column, use task_mode: cohort"):  # fmt: skip
        data.setup()


def test_cohort_mode_divides_the_patients_and_keeps_the_outcome(tmp_path: Path):
    frame = cohort_table()
    data = episodes(tmp_path, frame, table={"categorical_columns": ["smoker"]})
    data.setup()
    train, test = data.pools["meta_train"], data.pools["meta_test"]
    assert [c.key for c in train.classes] == ["meta_train/0", "meta_train/1"]
    assert [c.target for c in test.classes] == ["0", "1"]  # the same outcome: a pooled model can score it
    train_rows, test_rows = (np.sort(torch.cat(p.class_indices).numpy()) for p in (train, test))
    assert set(train_rows).isdisjoint(test_rows) and len(train_rows) + len(test_rows) == len(frame)
    assert len(test_rows) == 30  # meta_val is empty: its share goes to the others, 0.2 / 0.8 of 120
    age = data.feature_names.index("age")
    assert data.preprocessor.means[age] == pytest.approx(frame.age[train_rows].mean())  # meta-train only
    batch = next(iter(data.test_dataloader()))
    assert batch.support_x.shape == (8, 6, 4)  # age, marker, smoker=no, smoker=yes
    pooled = PooledLogisticRegression()
    trainer().test(pooled, datamodule=data, verbose=False)
    assert pooled.test_report.metrics["auroc"].mean > 0.8  # the marker separates the outcome


def test_an_evaluation_only_run_standardises_within_each_episode(tmp_path: Path):
    frame = cohort_table()
    frame.loc[3, "age"] = np.nan
    data = episodes(tmp_path, frame, ([], [], ["0", "1"]), table={"categorical_columns": ["smoker"]})
    data.setup()
    assert data.preprocessor.per_episode and data.pools["meta_test"].class_sizes() == [60, 60]
    raw = data.pools["meta_test"].examples[:, :2]  # numbers as written: no statistic of other patients
    torch.testing.assert_close(raw[:3, 0], torch.tensor(frame.age[:3].to_numpy(), dtype=torch.float32))
    assert torch.isnan(raw[3, 0])
    model = SupportLogisticRegression()
    trainer().test(model, datamodule=data, verbose=False)
    assert model.test_report.episodes == 20 and model.test_report.metrics["auroc"].mean > 0.8
    refused = (
        r"^data\.meta_train is empty \(an evaluation-only run\), but ProtoNet is meta-trained; evaluate a "
        r"method with nothing to meta-train"
    )
    with pytest.raises(DataError, match=refused):
        trainer().fit(ProtoNet(MLP(data.example_shape, hidden=4)), datamodule=data)


def test_episode_standardisation_uses_the_support_set_alone():
    preprocessor = TablePreprocessor.for_episodes({"a": np.zeros(1), "b": np.zeros(1)}, {})
    support = torch.tensor([[[1.0, 5.0], [3.0, float("nan")], [5.0, 7.0]]])
    query = torch.tensor([[[3.0, float("nan")], [100.0, 0.0]]])
    s, q = preprocessor.standardise_episodes(support, query)
    torch.testing.assert_close(s.mean(1), torch.zeros(1, 2))
    assert q[0, 0, 1] == s[0, 1, 1]  # both missing: the support median (6), standardised alike
    other_query = query.clone()
    other_query[0, 1] = torch.tensor([-50.0, 9.0])  # another patient changes nothing for the first
    torch.testing.assert_close(preprocessor.standardise_episodes(support, other_query)[1][0, 0], q[0, 0])


# -- 2. identifier columns -----------------------------------------------------------------------------------
def test_identifier_columns_are_left_out_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    frame = cohort_table().assign(
        id=lambda f: np.arange(1, len(f) + 1), PatientCode=lambda f: "p" + f.index.astype(str)
    )
    frame["hospital_id"] = 7
    data = episodes(tmp_path, frame, table={"categorical_columns": ["smoker"]})
    data.setup()
    assert data.feature_names[:2] == ["age", "marker"] and not any("id" in n for n in data.feature_names)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned[:3] == [
        f"column {name!r} looks like an identifier ({reason}): it is not used as a feature. List it in "
        "table.feature_columns to use it, or in table.exclude_columns to silence this"
        for name, reason in [
            ("id", "named like an identifier"),
            ("PatientCode", "text unique on every row"),
            ("hospital_id", "named like an identifier"),
        ]
    ]
    assert data.roles.excluded == {
        "id": "named like an identifier", "PatientCode": "text unique on every row",
        "hospital_id": "named like an identifier",
    }  # fmt: skip


def test_a_row_number_is_an_identifier_and_exclude_columns_drops_any_column(tmp_path: Path, caplog):
    frame = cohort_table().assign(visit=lambda f: np.arange(100, 100 + len(f))[::-1])
    data = episodes(tmp_path, frame, table={"exclude_columns": ["smoker"]})
    data.setup()
    assert data.feature_names == ["age", "marker"]
    assert "'visit' looks like an identifier (integers unique on every row, like a row number)" in caplog.text
    assert "smoker" not in caplog.text.split("table columns:")[0]  # excluded by the config: no warning
    kept = episodes(tmp_path, frame, table={"feature_columns": ["age", "visit"]})
    assert kept.feature_names == ["age", "visit"]  # listed by the config: used as given


# -- 3. text columns -----------------------------------------------------------------------------------------
def test_text_columns_are_categorical_with_one_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="metaclinic")
    frame = cohort_table().assign(ecg=lambda f: np.where(f.age > 55, "lvh", "normal"), unit="icu")
    data = episodes(tmp_path, frame)
    assert data.feature_names == [
        "age",
        "marker",
        "smoker=no",
        "smoker=yes",
        "ecg=lvh",
        "ecg=normal",
        "unit=icu",
    ]
    assert (
        "3 text column(s) are one-hot encoded as categorical: ['smoker', 'ecg', 'unit'] (list them in "
        "table.categorical_columns to say so yourself)"
    ) in caplog.messages


def test_every_problem_of_a_table_is_reported_in_one_error(tmp_path: Path):
    frame = cohort_table(20).astype({"age": object, "marker": object})
    frame.loc[[2, 5], "age"] = "fifty"
    frame.loc[7, "marker"] = "high"
    frame.loc[9, "marker"] = "inf"
    frame.loc[4, "outcome"] = None
    with pytest.raises(DataError) as error:
        episodes(tmp_path, frame).setup()
    file = tmp_path / "t.csv"
    assert str(error.value) == (
        "the table has 3 problems:\n"
        f"  1. label column 'outcome' is missing in 1 row(s): {file}, row 5; every row needs a label in "
        "'cohort' task mode (or set table.drop_rows_missing: [label])\n"
        f"  2. column 'age' must be numeric, but 2 cell(s) are not numbers: {file}, row 3; {file}, row 6. "
        "Fix them, list the column in categorical_columns, or add their text to missing_values (or "
        "column_missing_values).\n"
        f"  3. column 'marker' must be numeric, but 1 cell(s) are not numbers: {file}, row 8. Fix them, list "
        "the column in categorical_columns, or add their text to missing_values (or column_missing_values)."
    )


# -- 4. text labels ------------------------------------------------------------------------------------------
def test_text_labels_are_binarised_by_positive_or_negative_values(tmp_path: Path):
    frame = cohort_table().assign(
        outcome=lambda f: np.where(f.outcome == 1, "I21." + (f.index % 3).astype(str), "-")
    )
    data = episodes(tmp_path, frame, table={"negative_values": ["-"], "feature_columns": ["age", "marker"]})
    data.setup()
    assert data.pools["meta_test"].class_sizes() == [15, 15]
    with pytest.raises(DataError) as error:
        episodes(tmp_path, frame, table={"positive_above": 0}).setup()
    assert str(error.value).startswith(
        f"label column 'outcome' has 120 text cell(s) ({tmp_path / 't.csv'}, row 1; "
    )
    assert str(error.value).endswith(
        "which positive_above (for numeric labels) cannot binarise; say which values are positive with "
        "table.positive_values, or which are negative with table.negative_values"
    )
    both = {"positive_values": ["I21.0", "I21.1"], "negative_values": ["-"]}
    neither = (
        r"^label column 'outcome': 20 row\(s\) have a value in neither positive_values nor negative_values: "
        r".*, row 6; .* and 15 more; add it to one of them$"
    )
    with pytest.raises(DataError, match=neither):
        episodes(tmp_path, frame, table=both).setup()


# -- 5. missing-value markers per column, rows without a site or label ---------------------------------------
def test_column_markers_replace_the_global_ones_and_rows_can_be_dropped(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger="metaclinic")
    frame = cohort_table(160).astype({"outcome": object})
    frame["sex"] = np.array(["?", "?", "f", "f", "m", "m", "m", "m"] * 20)  # "?": a value, not a missing one
    frame.loc[[3, 7], "outcome"] = "?"
    frame.loc[[10, 11, 12], "sex"] = ""
    sites = (["m"], ["f"], ["?"])
    table = {"site_column": "sex", "feature_columns": ["age", "marker"]}
    with pytest.raises(DataError) as error:
        episodes(tmp_path, frame, sites, task_mode="site", table=table).setup()
    assert str(error.value).startswith(
        "the table has 2 problems:\n  1. label column 'outcome' is missing in 2 "
    )
    assert re.search(r"\n  2. site column 'sex' is missing in .*, row 1; .* and 38 more \(set "
                     r"table.drop_rows_missing: \[site\] to drop those rows", str(error.value))  # fmt: skip
    table |= {"column_missing_values_only": {"sex": [""]}, "drop_rows_missing": ["site", "label"]}
    data = episodes(tmp_path, frame, sites, task_mode="site", table=table)
    data.setup()
    assert (
        "drop_rows_missing: 5 of 160 rows dropped (3 without a site ('sex'), 2 without a label "
        "('outcome')); 155 remain"
    ) in caplog.messages
    assert sum(data.pools["meta_test"].class_sizes()) == 40  # a "?" in sex is a value of its own here


# -- 6. messages that misled -------------------------------------------------------------------------------
def test_an_overlap_is_reported_before_any_warning_about_derived_state(tmp_path: Path, caplog):
    frame = cohort_table().assign(grade=lambda f: np.arange(len(f)) % 4)
    data = episodes(tmp_path, frame, (["0", "1"], [], ["0", "1", "2", "3"]), task_mode="class",
                    table={"label_column": "grade", "feature_columns": ["age"]})  # fmt: skip
    with pytest.raises(
        DataError, match=r"both list value\(s\) of 'grade' \['0', '1'\]; meta-splits must be disjoint"
    ):
        data.setup()
    assert caplog.records == []  # no "missing in every meta-train row", no other warning first


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "the file is empty (no header, no data rows)"),
     ("age,marker,outcome\r\n", "no data rows (only a header); every table needs at least one patient")],
)  # fmt: skip
def test_an_empty_or_header_only_file_says_so(tmp_path: Path, text: str, message: str):
    (tmp_path / "t.csv").write_text(text)
    data = TableEpisodes(TableSpec(path=str(tmp_path / "t.csv"), label_column="outcome"), ["0", "1"], [],
                         ["0", "1"], task_mode="cohort", **EPISODES)  # fmt: skip
    with pytest.raises(DataError) as error:
        data.setup()
    assert str(error.value) == f"{tmp_path / 't.csv'}: {message}"


def test_several_site_files_report_all_their_problems_at_once(tmp_path: Path):
    cohort_table(20).to_csv(tmp_path / "a.csv", index=False)
    (tmp_path / "b.csv").write_text("age,marker,smoker,outcome\n")
    spec = TableSpec(path={"a": "a.csv", "b": "b.csv", "c": "c.csv"}, label_column="outcome")
    with pytest.raises(DataError) as error:
        TableEpisodes(spec, ["a"], [], ["b"], task_mode="site", root=str(tmp_path), **EPISODES).setup()
    assert str(error.value) == (
        "the table has 2 problems:\n"
        f"  1. {tmp_path / 'b.csv'}: no data rows (only a header); every table needs at least one patient\n"
        f"  2. table file(s) not found: {tmp_path / 'c.csv'} (relative paths start at data.init_args.root, "
        "by default $METACLINIC_DATA_DIR, else ./data)"
    )


def test_a_config_typo_shows_the_key_and_the_closest_one_without_usage(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["metaclinic.fit"])
    config = (REPO / "configs/heart_disease_cohort.yaml").read_text()
    (tmp_path / "typo.yaml").write_text(config.replace("categorical_columns", "categorical_colums"))
    with pytest.raises(SystemExit) as exit_info:
        MetaClinicCLI(args=["--config", str(tmp_path / "typo.yaml")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: unknown config key data.init_args.table.categorical_colums; did you mean "
        "categorical_columns?\n(python -m metaclinic.fit --help lists every option)\n"
    )
    with pytest.raises(SystemExit):
        MetaClinicCLI(
            args=["--config", str(REPO / "configs/heart_disease_cohort.yaml"), "--trainer.max_stepz=5"]
        )
    assert capsys.readouterr().err.splitlines()[0] == (
        "error: unknown config key trainer.max_stepz; did you mean trainer.max_steps?"
    )
    (tmp_path / "numbers.yaml").write_text(config.replace('meta_test: ["0", "1"]', "meta_test: [0, 1]"))
    with pytest.raises(SystemExit):
        MetaClinicCLI(args=["--config", str(tmp_path / "numbers.yaml")])
    err = capsys.readouterr().err
    assert "Expected a <class 'str'>. Got value: 0" in err and "usage:" not in err
    assert '(YAML reads 0, 1 or 2.5 as numbers; quote label values and sites: ["0", "1"])' in err


def test_no_validation_split_trains_without_lightning_noise(tmp_path: Path):
    data = episodes(tmp_path, cohort_table(), table={"feature_columns": ["age", "marker"]})
    model = ProtoNet(MLP(data.example_shape, hidden=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(max_steps=3).fit(model, datamodule=data)
    assert not [w for w in caught if "across ranks is zero" in str(w.message)]
    assert model.global_step == 3


# -- 7. rare classes in a small evaluation site ----------------------------------------------------------
def rare_diagnoses(tmp_path: Path, **settings) -> TableEpisodes:
    """A big site with diagnoses 0 and 1; a small one with 0, 1, 2 and two rare ones, 3 and 4 (5 each)."""
    frame = cohort_table(200)
    frame["site"] = np.repeat(["big", "small"], 100)
    frame.loc[100:, "outcome"] = [0] * 35 + [1] * 35 + [2] * 20 + [3] * 5 + [4] * 5
    table = {"site_column": "site", "feature_columns": ["age", "marker"]}
    return episodes(tmp_path, frame, (["big"], [], ["small"]), task_mode="site", table=table, **settings)


def test_rare_classes_are_dropped_or_merged_with_a_log_line(tmp_path: Path, caplog):
    too_small = (
        r"^meta_test: 2 class\(es\) have fewer than 7 examples, which n_shot \+ n_query = 3 \+ 4 needs: "
        r"small/3 \(small: outcome=3\): 5, small/4 \(small: outcome=4\): 5"
    )
    with pytest.raises(DataError, match=too_small):
        rare_diagnoses(tmp_path).setup()
    dropped = rare_diagnoses(tmp_path, min_class_size=7)
    dropped.setup()
    assert [c.key for c in dropped.pools["meta_test"].classes] == ["small/0", "small/1", "small/2"]
    assert (
        "meta_test: classes with fewer than min_class_size=7 patients: dropped: small/3 (5), small/4 (5)"
    ) in caplog.messages
    merged = rare_diagnoses(tmp_path, min_class_size=7, merge_rare_into="other")
    merged.setup()
    assert [c.key for c in merged.pools["meta_test"].classes] == [
        "small/0",
        "small/1",
        "small/2",
        "small/other",
    ]
    assert merged.pools["meta_test"].class_sizes() == [35, 35, 20, 10]
    assert (
        "meta_test: classes with fewer than min_class_size=7 patients: small/3, small/4 merged into "
        "small/other"
    ) in caplog.messages


# -- the one-cohort config, end to end ---------------------------------------------------------------
def test_the_one_cohort_config_ends_with_the_baselines_beside_it(tmp_path: Path, capsys):
    write_synthetic_heart_disease(tmp_path / "data" / "uci_heart_disease", patients=300)
    short = ["--config", str(REPO / "configs/heart_disease_cohort.yaml"), f"--runs_dir={tmp_path / 'runs'}",
             "--trainer.max_steps=3", "--data.init_args.test_episodes=12"]  # fmt: skip
    run_dir = fit_in_process(short, data_dir=tmp_path / "data")
    report = json.loads((run_dir / "meta_test_report.json").read_text())
    assert (report["algorithm"], report["n_way"], report["n_shot"], report["episodes"]) == (
        "ProtoNet",
        2,
        5,
        12,
    )
    assert sorted(report["references"]) == ["NearestCentroid", "SupportLogisticRegression"]
    printed = capsys.readouterr().out
    assert re.search(r"\| SupportLogisticRegression \(no learning\) \| \d+\.\d\d ± ", printed)
    assert "| NearestCentroid (no learning) |" in printed


@pytest.mark.skipif(not (SHARED_DATA / "uci_heart_disease").is_dir(), reason="needs the real UCI files")
def test_the_real_cleveland_file_divides_into_cohort_splits():
    spec = TableSpec(
        path=str(SHARED_DATA / "uci_heart_disease/processed.cleveland.data"), header=False,
        label_column="num", positive_above=0, categorical_columns=["cp", "restecg", "slope", "thal"],
        column_names=["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak",
                      "slope", "ca", "thal", "num"],
    )  # fmt: skip
    data = TableEpisodes(spec, ["0", "1"], [], ["0", "1"], task_mode="cohort", n_way=2, n_shot=5, n_query=15)
    data.setup()
    assert data.pools["meta_train"].class_sizes() == [131, 96]  # 164 healthy, 139 diseased in all
    assert data.pools["meta_test"].class_sizes() == [33, 43]
    assert data.roles.excluded == {} and len(data.roles.numeric) == 9
