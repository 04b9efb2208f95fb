"""MAML and MAML++ on the shared episodic base: learning, evaluation without inference mode, input checks."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader

from benchmarks.common import LiveSavedTensors
from metaclinic import algorithms
from metaclinic.algorithms import MAML, MAMLPlusPlus, MetaSGD
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


def make_maml(algorithm: type[MAML] = MAML, **overrides) -> MAML:
    settings = dict(
        n_way=5,
        inner_lr=0.4,
        train_steps=1,
        eval_steps=3,
        optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
    )
    settings.update(overrides)
    return algorithm(Conv4((3, 28, 28), hidden=16), **settings)


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
    "algorithm",
    ["MAML", "FOMAML", "MetaSGD", "MAMLPlusPlus", "ProtoNet", "MatchingNet", "RelationNet", "Siamese"],
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
        elif algorithm == "MAMLPlusPlus":  # every switch on: learned rates, multi-step loss, second order
            model = make_mamlpp(**settings, multi_step_loss_steps=10)
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


# -- MAML++ --------------------------------------------------------------------------------------------------
def make_mamlpp(**overrides) -> MAMLPlusPlus:
    return make_maml(MAMLPlusPlus, **{"train_steps": 2, **overrides})


def train_batch(make_datamodule, **overrides):
    data = make_datamodule(**overrides)
    data.setup()
    return data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)


@pytest.fixture
def at_optimizer_step(monkeypatch: pytest.MonkeyPatch):
    """Sets the optimizer step MAML++ sees (``global_step``, 0 without a Trainer)."""

    def set_step(step: int) -> None:
        monkeypatch.setattr(MAMLPlusPlus, "global_step", property(lambda self: step))

    return set_step


def meta_gradient(model, batch) -> torch.Tensor:
    loss, _ = model.training_loss(batch)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_mamlpp_with_every_switch_off_is_maml(make_datamodule):
    batch = train_batch(make_datamodule)
    results = {}
    for cls in (MAML, MAMLPlusPlus):
        torch.manual_seed(0)
        settings = dict(n_way=5, inner_lr=0.4, train_steps=2, eval_steps=3)
        if cls is MAMLPlusPlus:
            settings.update(learn_inner_lr=False, multi_step_loss_steps=0, first_order_until_step=0)
        model = cls(Conv4((3, 28, 28), hidden=16), **settings)
        logits = model.score_tasks(batch)
        results[cls] = (logits.detach(), meta_gradient(model, batch), model.eval().score_tasks(batch))
    (logits, grads, eval_logits), (logits_pp, grads_pp, eval_logits_pp) = results.values()
    assert torch.equal(logits_pp, logits) and torch.equal(eval_logits_pp, eval_logits)
    assert torch.equal(grads_pp, grads)


def test_mamlpp_learned_step_sizes_get_gradients_and_move(make_datamodule):
    batch = train_batch(make_datamodule)
    torch.manual_seed(0)
    model = make_mamlpp(train_steps=2, eval_steps=4)
    rates = model.inner_lrs
    assert rates.shape == (2, len(list(model.learner.parameters())))  # a row per training step
    assert torch.all(rates == 0.4) and any(rates is p for p in model.parameters())
    before = rates.detach().clone()
    quiet_trainer(max_steps=1).fit(model, train_dataloaders=DataLoader([batch], batch_size=None))
    assert rates.grad is not None and (rates.grad != 0).all(), "every step's rate of every tensor learns"
    assert (rates.detach() != before).all()
    # Evaluation steps past the trained ones reuse the last row; evaluation keeps no graph to the rates.
    model.eval()
    with torch.no_grad():
        scores = model.score_tasks(batch)
    assert not scores.requires_grad and scores.shape == (4, 20, 5)


def test_mamlpp_refuses_an_eval_inner_lr_it_would_ignore():
    with pytest.raises(ValueError, match="learns its inner step sizes"):
        make_mamlpp(eval_inner_lr=0.1)
    assert make_mamlpp(learn_inner_lr=False, eval_inner_lr=0.1).eval_inner_lr == 0.1


def test_mamlpp_multi_step_loss_weights_anneal_onto_the_last_step(at_optimizer_step):
    model = make_mamlpp(train_steps=4, multi_step_loss_steps=100)
    at_optimizer_step(0)
    torch.testing.assert_close(model.step_loss_weights(), torch.full((4,), 0.25))
    at_optimizer_step(50)  # halfway: the earlier steps lost half their weight to the last
    torch.testing.assert_close(model.step_loss_weights(), torch.tensor([0.125, 0.125, 0.125, 0.625]))
    for step in (100, 1000):
        at_optimizer_step(step)
        assert torch.equal(model.step_loss_weights(), torch.tensor([0.0, 0.0, 0.0, 1.0]))
    for step in (0, 37, 99):
        at_optimizer_step(step)
        torch.testing.assert_close(model.step_loss_weights().sum(), torch.tensor(1.0))
    assert torch.equal(make_mamlpp(train_steps=4).step_loss_weights(), torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_mamlpp_multi_step_loss_is_the_weighted_sum_of_every_steps_query_loss(
    make_datamodule, at_optimizer_step
):
    batch = train_batch(make_datamodule)
    torch.manual_seed(0)
    model = make_mamlpp(train_steps=3, multi_step_loss_steps=10)
    at_optimizer_step(5)
    weights = model.step_loss_weights()
    scores = model.score_tasks(batch)
    assert scores.shape == (4, 3, 20, 5)  # tasks, inner steps, queries, classes
    loss, accuracy = model.query_metrics(scores, batch)
    per_step = [F.cross_entropy(scores[:, k].flatten(0, 1), batch.query_y.flatten()) for k in range(3)]
    torch.testing.assert_close(loss, sum(w * s for w, s in zip(weights, per_step, strict=True)))
    final = (scores[:, -1].argmax(-1) == batch.query_y).float().mean(-1)
    torch.testing.assert_close(accuracy, final)  # accuracy is the last step's
    # The last step's logits are MAML++'s without the multi-step loss, and evaluation scores that alone.
    at_optimizer_step(10)
    torch.testing.assert_close(model.score_tasks(batch), scores[:, -1])
    at_optimizer_step(5)
    with torch.no_grad():
        assert model.eval().score_tasks(batch).shape == (4, 20, 5)


def test_mamlpp_meta_gradient_is_first_order_until_the_switch(make_datamodule, at_optimizer_step):
    batch = train_batch(make_datamodule, meta_batch_size=2)
    grads = {}
    for name, overrides, step in [
        ("first order", dict(first_order=True), 0),
        ("second order", {}, 0),
        ("annealed, before", dict(first_order_until_step=3), 2),
        ("annealed, after", dict(first_order_until_step=3), 3),
    ]:
        torch.manual_seed(0)
        at_optimizer_step(step)
        grads[name] = meta_gradient(make_mamlpp(**overrides), batch)
    assert torch.isfinite(grads["second order"]).all()
    assert not torch.allclose(grads["first order"], grads["second order"], rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(grads["annealed, before"], grads["first order"])
    torch.testing.assert_close(grads["annealed, after"], grads["second order"])
