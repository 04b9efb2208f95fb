"""The supervised-pretraining baselines: they learn, reload exactly, and their defining maths hold."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import seed_everything
from torch import nn

from metaclinic.baselines import Baseline, BaselinePlusPlus, SimpleShot
from metaclinic.data import MedMNISTEpisodes
from metaclinic.data.task import TaskBatch
from metaclinic.errors import DataError
from metaclinic.models import Conv4

from .conftest import SPLIT
from .test_algorithms import Linear
from .test_maml import quiet_trainer

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
