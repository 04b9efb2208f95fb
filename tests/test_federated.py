"""Federated meta-learning on Flower: FedAvg of what the sites sent, nothing else crossing the wire, failures.

Every federation here is real: a Flower gRPC server and one Flower client per site on a loopback port, in
this process, on generated hospital tables (one file per site), two rounds of two local meta-batches.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
from flwr.common import serde

import metaclinic.federated  # noqa: F401  (before flwr: Flower's telemetry off)
from metaclinic.data.preprocess import TablePreprocessor
from metaclinic.errors import DataError
from metaclinic.federated.client import SiteClient
from metaclinic.federated.config import FederatedConfig, FederationError
from metaclinic.federated.parameters import model_arrays
from metaclinic.federated.run import (
    LOG_FILE,
    MODEL_FILE,
    ROUNDS_FILE,
    meta_test_checkpoint,
    run_on_one_machine,
)
from metaclinic.federated.statistics import combine_summaries, site_summary

from .conftest import REPO
from .test_table import clinic_table

SITES = ("north", "south", "west")  # north and south train, west is held out
CANARY_ID, CANARY_VALUE = "CANARY-PATIENT-42", 987654.321


def write_site_files(folder: Path, canary: bool = False) -> dict[str, str]:
    """One CSV per hospital (the site is the file), 24 patients each; optionally a canary patient in north."""
    folder.mkdir(parents=True, exist_ok=True)
    table = clinic_table(patients_per_site=24, seed=0)
    paths = {}
    for site in SITES:
        rows = table[table.site == site].drop(columns="site").reset_index(drop=True)
        if canary and site == "north":
            rows.loc[0, "patient"], rows.loc[0, "age"] = CANARY_ID, CANARY_VALUE
        rows.to_csv(folder / f"{site}.csv", index=False)
        paths[site] = str(folder / f"{site}.csv")
    return paths


def federated_config(tmp_path: Path, canary: bool = False, **federation) -> FederatedConfig:
    """A MAML fit config on the generated hospitals and a two-round federation of north and south."""
    fit = {
        "seed_everything": 0,
        "model": {
            "class_path": "metaclinic.algorithms.MAML",
            "init_args": {
                "backbone": {"class_path": "metaclinic.models.MLP", "init_args": {"hidden": 8, "depth": 1}},
                "inner_lr": 0.1,
                "train_steps": 1,
                "eval_steps": 1,
            },
        },
        "data": {
            "class_path": "metaclinic.data.TableEpisodes",
            "init_args": {
                "table": {
                    "path": write_site_files(tmp_path / "data", canary),
                    "site_column": "hospital",
                    "label_column": "diagnosis",
                    "patient_column": "patient",
                    "categorical_columns": ["smoker"],
                    "feature_columns": ["age", "marker", "smoker"],
                },
                "task_mode": "site",
                "meta_train": ["north", "south"],
                "meta_val": [],
                "meta_test": ["west"],
                "n_way": 2,
                "n_shot": 2,
                "n_query": 3,
                "meta_batch_size": 2,
                "test_episodes": 10,
                "eval_meta_batch_size": 10,
            },
        },
    }
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(fit))
    settings = {
        "sites": ["north", "south"], "held_out": ["west"], "rounds": 2, "local_steps": 2, "min_clients": 2,
        "round_timeout": 60, "connect_timeout": 60, "client_max_wait": 10, **federation,
    }  # fmt: skip
    (tmp_path / "federated.yaml").write_text(
        yaml.safe_dump({"fit_config": "fit.yaml", "federation": settings})
    )
    return FederatedConfig.read(tmp_path / "federated.yaml")


class RecordingClient(SiteClient):
    """A site that records what it received and what it sent back in every round."""

    def __init__(self, config: FederatedConfig, site: str, records: list, fail_in_round: int | None = None):
        super().__init__(config, site)
        self.records, self.fail_in_round = records, fail_in_round

    def fit(self, parameters, config):
        if config["server_round"] == self.fail_in_round:
            raise RuntimeError(f"site {self.site} crashed in round {config['server_round']}")
        arrays, tasks, metrics = super().fit(parameters, config)
        self.records.append(
            {"round": config["server_round"], "site": self.site, "received": [a.copy() for a in parameters],
             "sent": [a.copy() for a in arrays], "tasks": tasks}
        )  # fmt: skip
        return arrays, tasks, metrics


def fedavg(records: list[dict]) -> list[np.ndarray]:
    """FedAvg by hand: the task-weighted mean of the weights the sites sent, in float64."""
    total = sum(r["tasks"] for r in records)
    return [
        sum(r["tasks"] * r["sent"][i].astype(np.float64) for r in records) / total
        for i in range(len(records[0]["sent"]))
    ]


def assert_arrays_close(actual: list[np.ndarray], expected: list[np.ndarray], atol: float = 1e-5) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, atol=atol, rtol=0)


# -- FedAvg -------------------------------------------------------------------------------------------------
def test_two_rounds_of_two_sites_give_the_fedavg_of_what_they_sent(tmp_path: Path):
    # south trains 3 tasks per meta-batch, north 2: FedAvg weighs south's weights 6 : 4
    config = federated_config(tmp_path, sites={"north": [], "south": ["--data.init_args.meta_batch_size=3"]})
    records: list[dict] = []
    run = run_on_one_machine(
        config, tmp_path / "runs", client_factory=lambda c, s: RecordingClient(c, s, records)
    )
    assert not run.failed_sites
    first = [r for r in records if r["round"] == 1]
    second = [r for r in records if r["round"] == 2]
    assert sorted(r["site"] for r in first) == sorted(r["site"] for r in second) == ["north", "south"]
    assert {r["site"]: r["tasks"] for r in first} == {"north": 4, "south": 6}
    for record in first:  # the sites trained: what they sent is not what they received
        assert (
            max(np.abs(s - r).max() for s, r in zip(record["sent"], record["received"], strict=True)) > 1e-4
        )
    for record in second:  # round 2 starts from Flower's FedAvg of round 1
        assert_arrays_close(record["received"], fedavg(first))
    assert_arrays_close(model_arrays(run.federation.model), fedavg(second))
    rounds = json.loads((run.run_dir / ROUNDS_FILE).read_text())
    assert [r["tasks"] for r in rounds] == [10, 10] and rounds[1]["sites"] == ["north", "south"]
    # and the global model is meta-tested on the held-out hospital, beside the baselines
    report = json.loads((run.run_dir / "meta_test_report.json").read_text())
    assert report["algorithm"] == "MAML" and report["episodes"] == 10
    beside = (run.run_dir / "baselines.md").read_text()
    assert "MAML (federated)" in beside and "NearestCentroid" in beside and "every site pooled" in beside


def test_the_held_out_site_alone_scores_the_global_model_as_the_one_machine_run_did(tmp_path: Path):
    config = federated_config(tmp_path, rounds=1)
    run = run_on_one_machine(config, tmp_path / "runs")
    for site in ("north", "south"):  # the held-out hospital has only its own file
        (tmp_path / "data" / f"{site}.csv").unlink()
    alone = meta_test_checkpoint(config, run.run_dir / MODEL_FILE, tmp_path / "west")
    one_machine = json.loads((run.run_dir / "meta_test_report.json").read_text())
    assert alone.to_dict()["per_episode"] == one_machine["per_episode"]
    assert "NearestCentroid (no learning)" in (tmp_path / "west" / "baselines.md").read_text()


# -- what crosses the wire ----------------------------------------------------------------------------------
def test_no_patient_value_or_identifier_crosses_the_wire_or_reaches_the_log(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
):
    sent: list[bytes] = []  # every message a site sent, as the server received it from gRPC

    def recording(name: str):
        original = getattr(serde, name)

        def read(message):
            sent.append(message.SerializeToString())
            return original(message)

        monkeypatch.setattr(serde, name, read)

    for name in ("get_properties_res_from_proto", "get_parameters_res_from_proto", "fit_res_from_proto"):
        recording(name)
    config = federated_config(tmp_path, canary=True)
    with caplog.at_level("DEBUG"):
        run = run_on_one_machine(config, tmp_path / "runs")
    assert len(sent) == 2 + 2 * 2  # properties once per site, then one fit result per site and round
    wire = b"".join(sent)
    log_text = (run.run_dir / LOG_FILE).read_text() + caplog.text + capsys.readouterr().out
    canaries = [CANARY_ID.encode(), b"987654.321", b"987654", struct.pack("<d", CANARY_VALUE),
                struct.pack("<f", CANARY_VALUE), struct.pack(">d", CANARY_VALUE)]  # fmt: skip
    for canary in canaries:
        assert canary not in wire, canary
        assert canary.decode("latin-1") not in log_text, canary
    assert b"north" in wire  # the capture works: the site's name does cross
    assert "round 2:" in log_text


# -- failures -----------------------------------------------------------------------------------------------
def test_a_site_that_crashes_mid_round_leaves_the_round_to_the_others(tmp_path: Path):
    config = federated_config(tmp_path, min_clients=1, accept_failures=True)
    records: list[dict] = []

    def sites(c: FederatedConfig, site: str) -> RecordingClient:
        return RecordingClient(c, site, records, fail_in_round=2 if site == "south" else None)

    run = run_on_one_machine(config, tmp_path / "runs", client_factory=sites, meta_test=False)
    assert list(run.failed_sites) == ["south"] and "crashed in round 2" in str(run.failed_sites["south"])
    rounds = json.loads((run.run_dir / ROUNDS_FILE).read_text())
    assert rounds[0]["sites"] == ["north", "south"] and rounds[1]["sites"] == ["north"]
    assert rounds[1]["failed"] == ["south"]
    north = [r for r in records if r["round"] == 2]
    assert_arrays_close(model_arrays(run.federation.model), north[0]["sent"], atol=1e-7)


def test_a_site_that_crashes_stops_the_federation_when_failures_are_not_accepted(tmp_path: Path):
    config = federated_config(tmp_path, accept_failures=False)

    def sites(c: FederatedConfig, site: str) -> RecordingClient:
        return RecordingClient(c, site, [], fail_in_round=1 if site == "south" else None)

    with pytest.raises(FederationError, match=r"round 1: site\(s\) \['south'\] failed.*accept_failures"):
        run_on_one_machine(config, tmp_path / "runs", client_factory=sites, meta_test=False)


# -- the sites' data and feature encoding -------------------------------------------------------------------
def test_a_site_opens_only_its_own_file(tmp_path: Path):
    config = federated_config(tmp_path)
    for other in ("south", "west"):
        (tmp_path / "data" / f"{other}.csv").unlink()
    properties = SiteClient(config, "north").get_properties({})
    assert properties["site"] == "north" and json.loads(properties["summary"])["rows"] == 24


def test_pooled_statistics_from_site_sums_equal_those_of_the_pooled_rows():
    rng = np.random.default_rng(0)
    sites = {
        s: ({"age": rng.normal(50 + 10 * i, 5, 30), "bp": rng.normal(120, 15, 30)},
            {"smoker": np.array(rng.choice(["yes", "no"], 30), dtype=object)})
        for i, s in enumerate(("a", "b", "c"))
    }  # fmt: skip
    sites["c"][1]["smoker"][0] = "former"  # a category only one site has
    federated = combine_summaries({s: site_summary(n, c) for s, (n, c) in sites.items()})
    pooled_numeric = {k: np.concatenate([n[k] for n, _ in sites.values()]) for k in ("age", "bp")}
    pooled_categorical = {"smoker": np.concatenate([c["smoker"] for _, c in sites.values()])}
    central = TablePreprocessor.fit(pooled_numeric, pooled_categorical, np.arange(90))
    np.testing.assert_allclose(federated.means, central.means, rtol=1e-12)
    np.testing.assert_allclose(federated.stds, central.stds, rtol=1e-12)
    assert federated.categories == central.categories == {"smoker": ["former", "no", "yes"]}
    assert federated.feature_names == central.feature_names


def test_a_column_with_few_observed_values_at_a_site_sends_no_sums():
    values = np.full(20, np.nan)
    values[:3] = [1.0, 2.0, 3.0]  # three observed values: their sum would nearly give them away
    summary = site_summary({"lab": values}, {}, min_count=5)
    assert summary["numeric"]["lab"] == {"observed": 0, "sum": 0.0, "sum_squares": 0.0, "missing": True}


def test_a_mostly_missing_column_keeps_the_scale_of_its_observed_values():
    values = np.full(100, np.nan)
    values[:10] = np.arange(10.0)  # 10 observed of 100: scaled over the imputed column, they would explode
    encoding = combine_summaries({"a": site_summary({"lab": values}, {})})
    encoded = encoding.transform({"lab": values}, {})
    np.testing.assert_allclose(encoded[:10, 0], (np.arange(10) - 4.5) / np.arange(10.0).std(), rtol=1e-6)
    assert (encoded[10:, 0] == 0).all() and (encoded[10:, 1] == 1).all()
    assert encoding.feature_names == ["lab", "lab:missing"]


def test_config_errors_name_the_key(tmp_path: Path):
    federated_config(tmp_path)
    path = tmp_path / "federated.yaml"
    with pytest.raises(FederationError, match=r"held_out \['north'\] also train"):
        FederatedConfig.read(path, held_out=["north"])
    raw = yaml.safe_load(path.read_text())
    raw["federation"]["round"] = 3
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError, match=r"unknown federation keys \['round'\]"):
        FederatedConfig.read(path)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("federated_*.yaml")), ids=lambda p: p.name)
def test_every_federated_config_reads_and_names_sites_of_its_fit_config(path: Path):
    config = FederatedConfig.read(path)
    fit = yaml.safe_load(config.fit_config.read_text())
    table_path = fit["data"]["init_args"]["table"]["path"]
    assert set(config.federation.site_names) | set(config.federation.held_out) <= set(table_path)
    assert config.federation.site_names == fit["data"]["init_args"]["meta_train"]  # the central run's split
    assert config.federation.held_out == fit["data"]["init_args"]["meta_test"]
    own = config.site_args(config.federation.site_names[0])
    assert sum(a.startswith("--data.init_args.table.path=") for a in own) == 1  # only its own file
