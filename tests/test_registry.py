"""The one list of methods: its configs, the README and the comparison agree with it, and a new entry is all a
new algorithm needs to run through fit, evaluate, adapt and export."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from metaclinic import registry
from metaclinic.adapt import load_meta_trained
from metaclinic.adapt import main as adapt_main
from metaclinic.algorithms import MetricModule
from metaclinic.data.task import TaskBatch
from metaclinic.evaluate import main as evaluate_main
from metaclinic.registry import METHODS, Method

from .conftest import REPO, fit_in_process
from .test_adapt import csv_probabilities, evaluation_probabilities, exported_probabilities, write_image_cases

SHARED_PARTS = {
    "data": "parts/medmnist_data.yaml",
    "trainer": "parts/medmnist_trainer.yaml",
    "backbone": "parts/conv4_64.yaml",
}


def test_every_comparison_config_is_a_registered_method_of_the_class_it_names():
    configs = {p.relative_to(REPO).as_posix() for p in REPO.glob("configs/*_medmnist.yaml")}
    assert configs == {m.config_file for m in METHODS}
    for entry in METHODS:
        config = yaml.safe_load((REPO / entry.config_file).read_text())
        named = next((a.partition("=")[2] for a in entry.args if a.startswith("--model=")), None)
        module, _, name = (named or config["model"]["class_path"]).rpartition(".")
        assert getattr(importlib.import_module(module), name) is entry.model, entry.name


@pytest.mark.parametrize("entry", METHODS, ids=lambda m: m.name)
def test_every_comparison_config_takes_data_budget_and_backbone_from_the_shared_parts(entry: Method):
    config = yaml.safe_load((REPO / entry.config_file).read_text())
    used = {
        "data": config["data"],
        "trainer": config["trainer"],
        "backbone": config["model"]["init_args"]["backbone"],
    }
    assert used == SHARED_PARTS, (
        f"{entry.config_file} states its own {[k for k in used if used[k] != SHARED_PARTS[k]]}"
    )
    assert not set(config) - {"seed_everything", "model", "data", "trainer"}, entry.config_file


def test_the_readme_lists_every_meta_learner_with_its_class_and_config():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Algorithms") :].split("\n\n")[2]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    for entry in registry.meta_learners():
        assert any(f"`{entry.model.__name__}`" in row and f"`{entry.config}`" in row for row in rows), (
            f"README.md's algorithms table lacks {entry.name} ({entry.model.__name__}, {entry.config})"
        )
    assert len(rows) == len(registry.meta_learners())


def test_a_name_is_registered_once_and_an_unknown_one_is_named():
    with pytest.raises(ValueError, match="'MAML' is registered already"):
        registry.register(registry.method("MAML"))
    with pytest.raises(KeyError, match=r"no method 'MAML\+'; the methods are \['SimpleShot'"):
        registry.method("MAML+")


# -- a new algorithm: a subclass and its entry, nothing else -------------------------------------------------
class NearestNeighbour(MetricModule):
    """A query's class score is minus its squared distance to the nearest support example of that class."""

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        support, query = self.embed_episodes(self.backbone, batch)
        distances = (query.unsqueeze(2) - support.unsqueeze(1)).pow(2).sum(-1)  # (tasks, queries, support)
        of_class = F.one_hot(batch.support_y, batch.classes.shape[-1]).bool()  # (tasks, support, n_way)
        masked = distances.unsqueeze(-1).masked_fill(~of_class.unsqueeze(1), float("inf"))
        return -masked.min(2).values  # (tasks, queries, n_way)


def test_a_new_algorithm_runs_through_fit_evaluate_adapt_and_export_from_its_entry_alone(
    medmnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    config = tmp_path / "nearest_neighbour_medmnist.yaml"  # the config delta: the class, the shared parts
    config.write_text(
        f"model:\n  class_path: {__name__}.NearestNeighbour\n"
        f"  init_args:\n    backbone: {REPO / 'configs' / SHARED_PARTS['backbone']}\n"
        f"data: {REPO / 'configs' / SHARED_PARTS['data']}\n"
        f"trainer: {REPO / 'configs' / SHARED_PARTS['trainer']}\n"
    )
    monkeypatch.setattr(registry, "METHODS", list(registry.METHODS))
    entry = registry.register(
        Method("NearestNeighbour", NearestNeighbour, "nearest_neighbour", "a test", settings={})
    )
    small = [
        f"--data.init_args.root={medmnist_root}", "--data.init_args.n_shot=2", "--data.init_args.n_query=4",
        "--data.init_args.meta_batches_per_epoch=20", "--data.init_args.val_episodes=8",
        "--data.init_args.test_episodes=40", "--trainer.max_steps=40",
        "--model.init_args.backbone.init_args.hidden=16", "--model.init_args.optimizer.init_args.lr=0.003",
    ]  # fmt: skip
    run_dir = fit_in_process(
        ["--config", str(config), *entry.args, f"--runs_dir={tmp_path / 'runs'}", *small]
    )
    report = json.loads((run_dir / "meta_test_report.json").read_text())
    accuracy = report["metrics"]["accuracy"]
    assert report["algorithm"] == "NearestNeighbour" and accuracy["mean"] - accuracy["ci95"] > 0.4, accuracy

    checkpoint = run_dir / report["checkpoint"]
    evaluate_main(["--config", str(run_dir / "config.yaml"), "--ckpt_path", str(checkpoint), "--shots", "1",
                   "--trainer.logger=false", "--trainer.enable_progress_bar=false"])  # fmt: skip
    curve = json.loads((run_dir / "evaluation" / "shot_curve.json").read_text())
    assert curve["1"]["metrics"]["accuracy"]["mean"] > 0.3  # chance is 0.2

    meta_trained = load_meta_trained(checkpoint)
    data = meta_trained.data
    data.setup()
    pool = data.pools["meta_test"]
    support_rows, query_rows = write_image_cases(pool, tmp_path)
    out = tmp_path / "adapted"
    adapt_main([f"--ckpt_path={checkpoint}", f"--support={tmp_path / 'support'}",
                f"--predict={tmp_path / 'predict'}", f"--out={out}"])  # fmt: skip
    probabilities = csv_probabilities(out / "predictions.csv", [f"class{j}" for j in range(5)])
    expected = evaluation_probabilities(meta_trained.model, data, support_rows, query_rows)
    torch.testing.assert_close(probabilities, expected, atol=1e-5, rtol=0)
    x = data.prepare_inputs(pool.examples[torch.tensor(query_rows)])
    torch.testing.assert_close(exported_probabilities(out, x), probabilities, atol=1e-5, rtol=0)
