"""Every algorithm on the shared base: it learns, it reloads exactly, and its defining maths hold."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import seed_everything
from torch import nn
from torch.utils.data import DataLoader

from metaclinic import algorithms, registry
from metaclinic.algorithms.pooling import class_means
from metaclinic.data.task import TaskBatch
from metaclinic.models import Conv4

from .test_maml import quiet_trainer

ADAM = functools.partial(torch.optim.Adam, lr=3e-3)
# Every registered meta-learner with the settings its entry gives, plus a variant the registry has no
# config of: Matching Networks with full-context embeddings.
SETTINGS = {m.name: (m.model, dict(m.settings)) for m in registry.meta_learners()}
SETTINGS["MatchingNetFCE"] = (
    algorithms.MatchingNet,
    {"fce": True, "fce_steps": 2, "temperature": 10.0, "optimizer": ADAM},
)
METRIC = [name for name, (cls, _) in SETTINGS.items() if issubclass(cls, algorithms.MetricModule)]
FIXED_HEAD = [name for name, (cls, _) in SETTINGS.items() if issubclass(cls, algorithms.InnerLoopModule)]


def build(name: str, **overrides):
    cls, settings = SETTINGS[name]
    head = {"n_way": 5} if name in FIXED_HEAD else {}
    return cls(Conv4((3, 28, 28), hidden=16), **{**head, **settings, **overrides})


@pytest.mark.parametrize("name", SETTINGS)
def test_meta_training_lifts_accuracy_well_above_chance(name: str, make_datamodule, tmp_path: Path):
    seed_everything(0)
    data, model = make_datamodule(), build(name)
    trainer = quiet_trainer(max_steps=60, default_root_dir=tmp_path)
    trainer.test(model, datamodule=data, verbose=False)
    before = model.test_report.metrics["accuracy"]
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    trainer.test(model, datamodule=data, verbose=False)
    accuracy = model.test_report.metrics["accuracy"]
    print(f"{name}: {before} -> {accuracy}")
    assert accuracy.mean - accuracy.ci95 > 0.35, f"{name}: 5-way accuracy {accuracy} (chance is 20%)"
    assert accuracy.mean > before.mean + 0.1, f"{name} did not learn: {before} -> {accuracy}"

    reloaded = type(model).load_from_checkpoint(
        tmp_path / "model.ckpt", backbone=Conv4((3, 28, 28), hidden=16)
    )
    quiet_trainer().test(reloaded, datamodule=make_datamodule(), verbose=False)
    assert reloaded.test_report.metrics["accuracy"] == accuracy


@pytest.mark.parametrize("name", METRIC)
def test_metric_methods_evaluate_at_other_ways_and_shots(name: str, make_datamodule):
    trainer = quiet_trainer(inference_mode=True)  # nothing to adapt: inference mode is fine
    trainer.test(build(name), datamodule=make_datamodule(n_way=3, n_shot=5, n_query=3), verbose=False)
    assert build(name) is not None


@pytest.mark.parametrize("name", FIXED_HEAD)
def test_fixed_head_methods_refuse_other_ways(name: str, make_datamodule):
    with pytest.raises(ValueError, match="5-way head but the episodes are 3-way"):
        quiet_trainer().test(build(name), datamodule=make_datamodule(n_way=3), verbose=False)


def test_prototypes_are_mean_support_embeddings():
    embeddings = torch.arange(12.0).view(1, 6, 2)
    labels = torch.tensor([[1, 0, 1, 2, 0, 2]])
    expected = torch.stack(
        [embeddings[0, [1, 4]].mean(0), embeddings[0, [0, 2]].mean(0), embeddings[0, [3, 5]].mean(0)]
    )
    assert torch.equal(class_means(embeddings, labels, 3)[0], expected)


class Linear(nn.Module):
    """A tiny backbone: identity features of a 2-d input."""

    out_features = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def tiny_batch() -> TaskBatch:
    """Two 2-way tasks of 2-d points."""
    generator = torch.Generator().manual_seed(0)
    support_x, query_x = torch.randn(2, 4, 2, generator=generator), torch.randn(2, 4, 2, generator=generator)
    labels = torch.tensor([[0, 0, 1, 1]] * 2)
    return TaskBatch(support_x, labels, query_x, labels, torch.tensor([[0, 1]] * 2), torch.tensor([0, 1]), 0)


def test_reptile_outer_step_is_theta_plus_epsilon_times_mean_displacement():
    batch, epsilon, inner_lr, steps = tiny_batch(), 0.5, 0.1, 3
    model = algorithms.Reptile(
        Linear(),
        n_way=2,
        inner_lr=inner_lr,
        train_steps=steps,
        optimizer=functools.partial(torch.optim.SGD, lr=epsilon),
    )
    theta = [p.detach().clone() for p in model.parameters()]  # head weight (2, 2) and bias (2,)
    displacement = [torch.zeros_like(t) for t in theta]
    for task in batch:  # the paper's update, by hand: `steps` SGD steps on a copy of theta per task
        phi = [t.clone().requires_grad_() for t in theta]
        for _ in range(steps):
            loss = F.cross_entropy(task.support_x @ phi[0].T + phi[1], task.support_y)
            phi = [
                (p - inner_lr * g).detach().requires_grad_()
                for p, g in zip(phi, torch.autograd.grad(loss, phi), strict=True)
            ]
        displacement = [d + (p - t) / len(batch) for d, p, t in zip(displacement, phi, theta, strict=True)]
    expected = [t + epsilon * d for t, d in zip(theta, displacement, strict=True)]

    quiet_trainer(max_steps=1).fit(model, train_dataloaders=DataLoader([batch], batch_size=None))
    for actual, wanted in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(actual.detach(), wanted)


def test_meta_sgd_learning_rates_are_parameters_that_get_gradients(make_datamodule):
    data = make_datamodule()
    data.setup()
    batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
    model = build("Meta-SGD")
    lrs = list(model.learner.lrs)
    assert lrs and all(isinstance(lr, nn.Parameter) for lr in lrs)
    assert {id(lr) for lr in lrs} <= {id(p) for p in model.parameters()}
    loss, _ = model._step(batch)
    loss.backward()
    assert all(lr.grad is not None and lr.grad.abs().sum() > 0 for lr in lrs)


def test_anil_adapts_only_the_head(make_datamodule):
    data = make_datamodule()
    data.setup()
    batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
    model = build("ANIL", train_steps=2)
    support, _ = model.embed_episodes(model.backbone, batch)
    adapted = model.inner_loop(model.head, support[0], batch.support_y[0])
    head_moved = [
        not torch.equal(a, b) for a, b in zip(adapted.parameters(), model.head.parameters(), strict=True)
    ]
    assert all(head_moved)
    body = {id(p) for p in model.backbone.parameters()}
    assert not body & {id(p) for p in adapted.parameters()}  # the inner loop never touches the body
    query_loss, _ = model._step(batch)
    query_loss.backward()  # but the outer loop does
    assert all(p.grad is not None for p in model.backbone.parameters())


@pytest.mark.parametrize("name", ["ProtoNet", "MAML", "MAML++"])
def test_channels_last_gives_the_same_scores_and_meta_gradients(name: str, make_datamodule):
    """The memory layout is a speed setting only: same scores and meta-gradients to rounding."""
    data = make_datamodule()
    data.setup()
    batch = next(iter(data.test_dataloader()))
    batch.support_x, batch.query_x = data.prepare_inputs(batch.support_x), data.prepare_inputs(batch.query_x)
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        backbone = Conv4(data.example_shape, hidden=8, channels_last=channels_last)
        model = registry.method(name).model(backbone, **({"n_way": 5} if name in FIXED_HEAD else {}))
        scores = model.score_tasks(batch)
        F.cross_entropy(scores.flatten(0, 1), batch.query_y.flatten()).backward()
        results.append((scores.detach(), [p.grad.clone() for p in model.parameters()]))
    (scores, grads), (scores_cl, grads_cl) = results
    torch.testing.assert_close(scores_cl, scores, atol=1e-4, rtol=1e-4)
    for grad, grad_cl in zip(grads, grads_cl, strict=True):  # rounding differs, through 2nd order too
        assert torch.linalg.vector_norm(grad_cl - grad) <= 1e-3 * torch.linalg.vector_norm(grad)
