"""The supervised-pretraining baselines: they learn, reload exactly, and their defining maths hold."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import seed_everything
from torch import Tensor, nn

from metaclinic.baselines import (
    Baseline,
    BaselinePlusPlus,
    PooledLogisticRegression,
    RecalibratedLogisticRegression,
    RefitLogisticRegression,
    SimpleShot,
)
from metaclinic.baselines.logistic import LAM_GRID
from metaclinic.data import MedMNISTEpisodes, TableEpisodes
from metaclinic.data.task import TaskBatch
from metaclinic.errors import DataError
from metaclinic.evaluation.metrics import episode_auroc
from metaclinic.models import Conv4

from .conftest import SPLIT
from .test_algorithms import Linear
from .test_maml import quiet_trainer
from .test_table import clinic_table, fit_and_test, site_episodes, write_csv

ADAM = functools.partial(torch.optim.Adam, lr=3e-3)
BASELINES = {"SimpleShot": SimpleShot, "Baseline": Baseline, "BaselinePlusPlus": BaselinePlusPlus}


def episodes(root: Path, **overrides) -> MedMNISTEpisodes:
    """The synthetic MedMNIST split of tests/conftest.py (9 meta-train classes)."""
    settings = dict(SPLIT, root=str(root), n_way=5, n_shot=2, n_query=4, meta_batches_per_epoch=10)
    return MedMNISTEpisodes(**{**settings, "val_episodes": 8, "test_episodes": 40, **overrides})


def accuracy_of(model: nn.Module, data: MedMNISTEpisodes):
    quiet_trainer().test(model, datamodule=data, verbose=False)
    return model.test_report.metrics["accuracy"]


@pytest.fixture(scope="module", params=BASELINES)
def trained(request, medmnist_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """A baseline before and after 40 steps of supervised pretraining, and its checkpoint."""
    seed_everything(0)
    model = BASELINES[request.param](Conv4((3, 28, 28), hidden=16), optimizer=ADAM)
    before = accuracy_of(model, episodes(medmnist_root))
    trainer = quiet_trainer(max_steps=40)
    trainer.fit(model, datamodule=episodes(medmnist_root))
    checkpoint = tmp_path_factory.mktemp(request.param) / "model.ckpt"
    trainer.save_checkpoint(checkpoint)
    return model, before, accuracy_of(model, episodes(medmnist_root)), checkpoint


def test_pretraining_lifts_accuracy_well_above_chance_and_reloads_exactly(trained, medmnist_root: Path):
    model, before, accuracy, checkpoint = trained
    name = type(model).__name__
    print(f"{name}: {before} -> {accuracy}")
    assert accuracy.mean - accuracy.ci95 > 0.35, f"{name}: 5-way accuracy {accuracy} (chance is 20%)"
    assert accuracy.mean > before.mean + 0.05, f"{name} did not learn: {before} -> {accuracy}"
    reloaded = type(model).load_from_checkpoint(checkpoint, backbone=Conv4((3, 28, 28), hidden=16))
    assert reloaded.classifier.out_features == 9 and reloaded.hparams.num_classes == 9
    assert accuracy_of(reloaded, episodes(medmnist_root)) == accuracy


def test_evaluates_three_way_one_shot_after_five_way_training(trained, medmnist_root: Path):
    model = trained[0]
    accuracy = accuracy_of(model, episodes(medmnist_root, n_way=3, n_shot=1, n_query=3))
    print(f"{type(model).__name__} 3-way 1-shot: {accuracy}")
    assert accuracy.mean - accuracy.ci95 > 0.4, f"3-way accuracy {accuracy} (chance is 33%)"


def test_evaluation_changes_no_weight_and_does_not_depend_on_batching(trained, medmnist_root: Path):
    model = trained[0]
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    accuracy = accuracy_of(model, episodes(medmnist_root, test_episodes=16, eval_meta_batch_size=8))
    assert accuracy_of(model, episodes(medmnist_root, test_episodes=16, eval_meta_batch_size=5)) == accuracy
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def handmade_batch() -> TaskBatch:
    """Two 2-way 2-shot tasks of 2-d points, over classes (2, 0) and (3, 1) of a 4-class pool."""
    generator = torch.Generator().manual_seed(0)
    support_x, query_x = torch.randn(2, 4, 2, generator=generator), torch.randn(2, 4, 2, generator=generator)
    labels = torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0]])
    classes = torch.tensor([[2, 0], [3, 1]])
    return TaskBatch(support_x, labels, query_x, labels.flip(1), classes, torch.tensor([0, 1]), 0)


@pytest.mark.parametrize("cls", [SimpleShot, BaselinePlusPlus])
def test_training_loss_is_cross_entropy_over_pool_wide_classes(cls: type):
    batch, model = handmade_batch(), cls(Linear(), num_classes=4)
    loss, accuracy = model.supervised_loss(batch)
    x = torch.cat([batch.support_x, batch.query_x], 1).flatten(0, 1)
    pool_labels = torch.tensor([[2, 0, 2, 0, 0, 2, 0, 2], [1, 1, 3, 3, 3, 3, 1, 1]]).flatten()
    logits = model.classifier(x)
    assert logits.shape == (16, 4)
    torch.testing.assert_close(loss, F.cross_entropy(logits, pool_labels))
    torch.testing.assert_close(accuracy, (logits.argmax(1) == pool_labels).float().view(2, 8).mean(1))


def test_simpleshot_is_nearest_centroid_of_centred_normalised_embeddings():
    batch = handmade_batch()
    logits = SimpleShot(Linear(), num_classes=4).score_tasks(batch)
    for task, task_logits in zip(batch, logits, strict=True):
        centre = task.support_x.mean(0)
        support = F.normalize(task.support_x - centre, dim=1)
        query = F.normalize(task.query_x - centre, dim=1)
        centroids = torch.stack([support[task.support_y == c].mean(0) for c in range(2)])
        expected = -(query[:, None] - centroids[None]).norm(dim=-1)
        torch.testing.assert_close(task_logits, expected)


def test_baseline_fits_each_support_set_with_a_fresh_seeded_head():
    batch = handmade_batch()
    model = Baseline(Linear(), num_classes=4, finetune_steps=300, finetune_lr=0.1)
    logits = model.score_tasks(batch)
    assert logits.shape == (2, 4, 2)
    weight, bias = model.finetune_heads(batch.support_x, batch)
    support_logits = model.head_logits(batch.support_x, weight, bias)
    assert torch.equal(support_logits.argmax(-1), batch.support_y)  # separable 2-d points: fitted
    fields = ("support_x", "support_y", "query_x", "query_y", "classes", "episode_index")
    swapped = TaskBatch(*(getattr(batch, f).flip(0) for f in fields))
    torch.testing.assert_close(model.score_tasks(swapped), logits.flip(0))  # seeded by episode, not position


def test_a_head_of_the_wrong_width_is_refused(medmnist_root: Path):
    with pytest.raises(DataError, match="4-class pretraining head but meta_train has 9 classes"):
        quiet_trainer().test(SimpleShot(Conv4(hidden=8), num_classes=4), datamodule=episodes(medmnist_root))


# -- the logistic regressions updated toward the pooled model ------------------------------------------------
def attached(model: PooledLogisticRegression, data: TableEpisodes) -> PooledLogisticRegression:
    """``model`` fitted in ``setup`` as a Trainer would, to score meta-test episodes without a Trainer."""
    data.setup()
    model.trainer = SimpleNamespace(datamodule=data, testing=True)
    model.setup("test")
    return model


def meta_test_batch(data: TableEpisodes) -> TaskBatch:
    data.setup()
    return next(iter(data.test_dataloader()))


def on_support(batch: TaskBatch) -> TaskBatch:
    """The batch with each episode's support set as its query set (to look at the fit itself)."""
    s = (batch.support_x, batch.support_y)
    return TaskBatch(*s, *s, batch.classes, batch.episode_index)


def disease_probability(data: TableEpisodes, model: PooledLogisticRegression, batch: TaskBatch) -> Tensor:
    """Every query's probability of the ``disease`` outcome, ``(tasks, queries)``."""
    pool = data.pools["meta_test"]
    local = torch.tensor(
        [[pool.classes[c].target for c in e].index("disease") for e in batch.classes.tolist()]
    )
    return (
        model.score_tasks(batch)
        .softmax(-1)
        .gather(2, local[:, None, None].expand(-1, batch.query_x.shape[1], 1))[..., 0]
    )


def graded_table(patients_per_site: int = 45) -> pd.DataFrame:
    """A three-outcome version of the clinic table: the grade follows ``marker``, with noise."""
    frame = clinic_table(patients_per_site)
    rng = np.random.default_rng(1)
    grade = np.arange(len(frame)) % 3
    frame["marker"] = (rng.normal(0, 1, len(frame)) + 2.0 * grade).round(3)
    return frame.assign(diagnosis=np.array(["mild", "moderate", "severe"])[grade])


@pytest.mark.parametrize("outcomes", [2, 3])
def test_refit_with_a_huge_penalty_is_the_pooled_model(tmp_path: Path, outcomes: int):
    frame = clinic_table() if outcomes == 2 else graded_table()
    data = site_episodes(write_csv(frame, tmp_path / "t.csv"), n_way=outcomes, n_shot=3, n_query=4)
    batch = meta_test_batch(data)
    pooled = attached(PooledLogisticRegression(), data).score_tasks(batch).softmax(-1)
    refit = attached(RefitLogisticRegression(lam=1e8), data).score_tasks(batch).softmax(-1)
    assert refit.shape == (20, 4 * outcomes, outcomes)
    torch.testing.assert_close(refit, pooled, atol=1e-4, rtol=0)
    recalibrated = attached(RecalibratedLogisticRegression(), data).score_tasks(batch).softmax(-1)
    assert torch.isfinite(recalibrated).all() and (recalibrated - pooled).abs().max() > 1e-3


def test_refit_with_a_tiny_penalty_fits_a_separable_support_set_against_the_pooled_model(tmp_path: Path):
    data = site_episodes(write_csv(clinic_table(), tmp_path / "t.csv"), n_shot=3, n_query=4)
    batch = on_support(meta_test_batch(data))
    pool, marker = data.pools["meta_test"], data.feature_names.index("marker")
    diseased = torch.tensor(
        [[pool.classes[c].target == "disease" for c in e] for e in batch.classes.tolist()]
    )
    diseased = diseased.gather(1, batch.support_y)  # (tasks, support): is this support patient diseased?
    batch.support_x[..., marker] = torch.where(diseased, -4.0, 4.0)  # the marker's effect reversed
    pooled = disease_probability(data, attached(PooledLogisticRegression(), data), batch)
    refit = disease_probability(data, attached(RefitLogisticRegression(lam=1e-4), data), batch)
    truth = diseased.float()
    assert (pooled - truth).abs().mean() > 0.9  # the pooled model gets every one of them wrong
    assert (refit - truth).abs().max() < 0.05  # the refit separates them
    assert (refit - pooled).abs().mean() > 0.85


def prevalence_table(prevalence: dict[str, float], patients_per_site: int = 80) -> pd.DataFrame:
    """The clinic table with each site's share of diseased patients set by ``prevalence``."""
    frame = clinic_table(patients_per_site)
    rng = np.random.default_rng(2)
    for site, share in prevalence.items():
        rows = np.flatnonzero(frame.site == site)
        diseased = rng.permutation(len(rows)) < round(share * len(rows))
        frame.loc[rows, "diagnosis"] = np.where(diseased, "disease", "healthy")
        frame.loc[rows, "marker"] = (rng.normal(0, 1, len(rows)) + 2.0 * diseased).round(3)
    return frame


def test_recalibration_moves_the_mean_risk_to_the_support_prevalence_and_keeps_the_ranking(tmp_path: Path):
    frame = prevalence_table({"north": 0.85, "south": 0.85, "east": 0.85, "west": 0.4})
    data = site_episodes(write_csv(frame, tmp_path / "t.csv"), n_shot=5, n_query=6)
    batch = meta_test_batch(data)  # balanced episodes: support and query prevalence 0.5
    pooled, recalibrated = (
        attached(cls(), data) for cls in (PooledLogisticRegression, RecalibratedLogisticRegression)
    )
    on_pooled, on_recalibrated = (
        disease_probability(data, m, on_support(batch)) for m in (pooled, recalibrated)
    )
    assert on_pooled.mean() > 0.6  # the pooled model expects the meta-train sites' 85%
    torch.testing.assert_close(on_recalibrated.mean(1), torch.full((20,), 0.5), atol=1e-4, rtol=0)  # ML
    query_pooled, query_recalibrated = (
        disease_probability(data, m, batch).mean() for m in (pooled, recalibrated)
    )
    assert abs(query_recalibrated - 0.5) < abs(query_pooled - 0.5) - 0.1, (query_pooled, query_recalibrated)
    auroc = [episode_auroc(m.score_tasks(batch), batch.query_y) for m in (pooled, recalibrated)]
    torch.testing.assert_close(auroc[1], auroc[0], atol=1e-6, rtol=0)  # a shift of the log-odds: same order


def test_auto_lambda_is_chosen_on_meta_train_sites_only(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    frame = clinic_table(noise_columns=2)
    columns = ["age", "marker", "smoker", "noise0", "noise1"]
    other = frame.copy()
    elsewhere = other.site.isin(["east", "west"]).to_numpy()  # meta-val and meta-test
    rng = np.random.default_rng(3)
    for column in ("age", "marker", "noise0", "noise1"):
        other.loc[elsewhere, column] = rng.normal(0, 3, elsewhere.sum()).round(3)
    other.loc[elsewhere, "smoker"] = rng.choice(["yes", "no"], elsewhere.sum())
    chosen = []
    for name, table in (("t", frame), ("other", other)):
        data = site_episodes(write_csv(table, tmp_path / f"{name}.csv"), n_shot=3, n_query=4)
        data.spec.feature_columns = columns
        with caplog.at_level(logging.INFO, logger="metaclinic"):
            chosen.append(attached(RefitLogisticRegression(inner_episodes=15), data).chosen_lam)
    assert chosen[0] == chosen[1] and chosen[0] in LAM_GRID, chosen
    assert (
        f"lam = {chosen[0]:g}, chosen by leave-one-site-out over meta-train sites ['north', 'south']"
        in caplog.text
    )


def test_auto_lambda_without_two_meta_train_sites(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path = write_csv(clinic_table(), tmp_path / "t.csv")
    with caplog.at_level(logging.INFO, logger="metaclinic"):
        model = attached(RefitLogisticRegression(inner_episodes=5), site_episodes(path, meta_train=["north"]))
    assert model.chosen_lam in LAM_GRID and "lam is chosen on meta_val" in caplog.text
    assert "chosen by meta_val episodes" in caplog.text
    with pytest.raises(DataError, match=r"meta_val is empty: give model\.init_args\.lam a number"):
        attached(RefitLogisticRegression(), site_episodes(path, meta_train=["north"], meta_val=[]))


@pytest.mark.parametrize("cls", [RecalibratedLogisticRegression, RefitLogisticRegression])
def test_updated_logistic_regressions_through_the_fit_path(tmp_path: Path, cls: type):
    model = cls(inner_episodes=20) if cls is RefitLogisticRegression else cls()
    data = site_episodes(write_csv(clinic_table(), tmp_path / "t.csv"), n_shot=5, n_query=6)
    fit_and_test(model, data, steps=0)
    auroc = model.test_report.metrics["auroc"]
    print(f"{cls.__name__}: AUROC {auroc}")
    assert auroc.mean - auroc.ci95 > 0.5 and auroc.mean > 0.9, auroc  # measured 0.98
    if cls is RefitLogisticRegression:
        assert model.test_report.extra["lam"] == model.chosen_lam in LAM_GRID
