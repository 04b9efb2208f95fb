"""MAML on the shared episodic base: it learns, evaluates without inference mode, and checks its inputs."""

from __future__ import annotations

import functools

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from benchmarks.common import LiveSavedTensors
from metaclinic import algorithms
from metaclinic.algorithms import MAML, MetaSGD
from metaclinic.models import Conv4


def quiet_trainer(**overrides) -> Trainer:
    settings = dict(
        max_steps=60,
        inference_mode=False,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=True,
    )
    settings.update(overrides)
    return Trainer(**settings)


def make_maml(**overrides) -> MAML:
    settings = dict(
        n_way=5,
        inner_lr=0.4,
        train_steps=1,
        eval_steps=3,
        optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
    )
    settings.update(overrides)
    return MAML(Conv4((3, 28, 28), hidden=16), **settings)


def test_maml_meta_test_accuracy_rises_clearly_above_chance(make_datamodule):
    seed_everything(0)
    data, model = make_datamodule(), make_maml()
    trainer = quiet_trainer()
    trainer.test(model, datamodule=data, verbose=False)
    before = model.test_report.metrics["accuracy"]
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    after = model.test_report.metrics["accuracy"]
    assert after.n == 40
    assert after.mean - after.ci95 > 0.75, f"5-way accuracy {after} after meta-training (chance is 20%)"
    assert after.mean > before.mean + 0.25, f"meta-training did not help: {before} -> {after}"


def test_second_order_and_first_order_meta_gradients_differ(make_datamodule):
    data = make_datamodule()
    data.setup()
    batch = next(iter(data.train_dataloader()))
    batch = data.on_after_batch_transfer(batch, 0)
    grads = {}
    for first_order in (False, True):
        torch.manual_seed(0)
        model = make_maml(first_order=first_order, train_steps=2)
        loss, _ = model._step(batch)
        loss.backward()
        grads[first_order] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.isfinite(grads[False]).all()
    assert not torch.allclose(grads[False], grads[True], rtol=1e-3, atol=1e-6)


METRIC = ("ProtoNet", "MatchingNet", "RelationNet", "Siamese")


@pytest.mark.parametrize(
    "algorithm", ["MAML", "FOMAML", "MetaSGD", "ProtoNet", "MatchingNet", "RelationNet", "Siamese"]
)
def test_task_by_task_meta_gradient_is_the_one_graph_meta_gradient_in_a_fraction_of_the_memory(
    algorithm: str, make_datamodule
):
    data = make_datamodule(meta_batch_size=4)
    data.setup()
    batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
    results = {}
    for path in ("one graph", "task by task"):
        torch.manual_seed(0)
        settings = dict(n_way=5, train_steps=2, first_order=algorithm == "FOMAML")
        if algorithm == "MetaSGD":
            model = MetaSGD(Conv4((3, 28, 28), hidden=16), **settings)
        elif algorithm in METRIC:
            model = getattr(algorithms, algorithm)(Conv4((3, 28, 28), hidden=16))
        else:
            model = make_maml(**settings)
        assert model.backward_per_task
        meter = LiveSavedTensors()
        with meter.hooks():
            loss, accuracy = model._step(batch) if path == "one graph" else model.training_loss(batch)
            loss.backward()
        results[path] = (loss.detach(), accuracy, [p.grad for p in model.parameters()], meter.peak)
    (loss, accuracy, grads, peak), (loss_t, accuracy_t, grads_t, peak_t) = results.values()
    torch.testing.assert_close(loss_t, loss)
    torch.testing.assert_close(accuracy_t, accuracy)
    for grad, grad_t in zip(grads, grads_t, strict=True):
        torch.testing.assert_close(grad_t, grad, rtol=1e-4, atol=1e-6)
    assert peak_t < 0.4 * peak, f"task by task holds {peak_t} bytes at most, one graph {peak}"


def test_evaluation_builds_no_graph_and_leaves_weights_untouched(make_datamodule):
    data = make_datamodule()
    data.setup()
    batch = data.on_after_batch_transfer(next(iter(data.val_dataloader())), 0)
    model = make_maml().eval()
    weights = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        loss, accuracy = model._step(batch)
    assert not loss.requires_grad and accuracy.shape == (len(batch),)
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))


def test_inference_mode_trainer_gets_a_clear_error(make_datamodule):
    with pytest.raises(RuntimeError, match="inference_mode=False"):
        quiet_trainer(inference_mode=True).test(make_maml(), datamodule=make_datamodule(), verbose=False)


def test_head_width_must_match_the_episodes(make_datamodule):
    with pytest.raises(ValueError, match="5-way head but the episodes are 3-way"):
        quiet_trainer().test(make_maml(), datamodule=make_datamodule(n_way=3), verbose=False)
