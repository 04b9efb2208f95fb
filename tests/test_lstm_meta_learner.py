"""The LSTM meta-learner (Ravi and Larochelle 2017): its update generalises SGD, its meta-gradient reaches
the initial weights and the gates but not through the learner's gradients, and meta-training helps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from metaclinic.algorithms import LSTMMetaLearner
from metaclinic.algorithms.lstm_meta_learner import preprocess
from metaclinic.data.task import Task, TaskBatch
from metaclinic.errors import DataError
from metaclinic.models import MLP, Conv4
from metaclinic.models.normalization import support_rows

from .test_inductive import assert_cases_scored_alone_as_together

D, N_WAY = 8, 3


def gaussian_tasks(tasks: int, seed: int, n_shot: int = 3, n_query: int = 5) -> TaskBatch:
    """3-way tasks of 8-d points around class means drawn afresh for every task: labels mean nothing across
    tasks, so only adapting to the support set helps."""
    generator = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(tasks, N_WAY, D, generator=generator)
    support_y = torch.arange(N_WAY).repeat_interleave(n_shot).repeat(tasks, 1)
    query_y = torch.arange(N_WAY).repeat_interleave(n_query).repeat(tasks, 1)

    def points(labels: Tensor) -> Tensor:
        centres = torch.stack([m[y] for m, y in zip(means, labels, strict=True)])
        return centres + torch.randn(*labels.shape, D, generator=generator)

    classes = torch.arange(N_WAY).repeat(tasks, 1)
    return TaskBatch(points(support_y), support_y, points(query_y), query_y, classes, torch.arange(tasks))


def make_model(**settings) -> LSTMMetaLearner:
    """On an MLP with support-set batch norm: the support pass of an update and the queries take their
    moments from the support set."""
    torch.manual_seed(0)
    return LSTMMetaLearner(MLP((D,), hidden=16, norm="support"), n_way=N_WAY, **settings)


def network_logits(
    model: LSTMMetaLearner, weights: list[Tensor], support_x: Tensor, x: Tensor | None = None
) -> Tensor:
    """The learner's logits at ``weights`` of ``x`` normalised with the support set's moments, or of the
    support set itself (``x=None``)."""
    names = [name for name, _ in model.network.named_parameters()]
    inputs = support_x if x is None else torch.cat([support_x, x])
    with support_rows(model.network, len(support_x)):
        logits = torch.func.functional_call(model.network, dict(zip(names, weights, strict=True)), inputs)
    return logits if x is None else logits[len(support_x) :]


def sgd_weights(model: LSTMMetaLearner, task: Task, lr: float, steps: int) -> list[Tensor]:
    """``steps`` of plain gradient descent on the support loss, from the model's weights."""
    weights = [p.detach().clone() for p in model.network.parameters()]
    for _ in range(steps):
        weights = [w.requires_grad_() for w in weights]
        support_loss = F.cross_entropy(network_logits(model, weights, task.support_x), task.support_y)
        grads = torch.autograd.grad(support_loss, weights)
        weights = [(w - lr * g).detach() for w, g in zip(weights, grads, strict=True)]
    return weights


def test_gradients_and_losses_are_preprocessed_as_in_the_papers_appendix():
    x = torch.tensor([1.0, -math.exp(-5), 1e-6, 0.0])
    expected = torch.tensor([[0.0, 1.0], [-0.5, -1.0], [-1.0, math.exp(10) * 1e-6], [-1.0, 0.0]])
    torch.testing.assert_close(preprocess(x, p=10.0), expected)


@pytest.mark.parametrize("steps", [1, 3])
def test_forget_gate_one_and_constant_input_gate_make_the_update_plain_sgd(steps: int):
    """The paper's observation: ``c_t = f_t c_{t-1} + i_t (-grad_t)`` is gradient descent when ``f_t = 1``
    and ``i_t = lr``. Zero gate weights, ``forget_gate_bias=30`` (sigmoid = 1 in float32) and the input
    gate's bias at ``logit(inner_lr)`` make the LSTM SGD with step ``inner_lr`` (training and evaluation)."""
    lr = 0.3
    model = make_model(inner_lr=lr, forget_gate_bias=30.0, train_steps=steps, eval_steps=steps)
    assert torch.sigmoid(model.forget_gate.bias) == 1.0
    task = next(iter(gaussian_tasks(1, seed=0)))
    expected = sgd_weights(model, task, lr, steps)
    initial = [p.detach() for p in model.network.parameters()]
    assert sum(not torch.allclose(a, b) for a, b in zip(expected, initial, strict=True)) > len(initial) / 2
    for training in (True, False):
        model.train(training)
        adapted = model.adapted_weights(task.support_x, task.support_y)
        for actual, wanted in zip(adapted.values(), expected, strict=True):
            torch.testing.assert_close(actual.detach(), wanted, rtol=1e-5, atol=1e-6)
    query_logits = model.adapt(task)(task.query_x)
    torch.testing.assert_close(query_logits, network_logits(model, expected, task.support_x, task.query_x))


def test_meta_gradient_of_the_initial_weights_ignores_the_learners_gradients():
    """In the SGD configuration ``d c_T / d c_0`` is the identity once the gradients are constants (the
    paper's simplification), so the meta-gradient of ``c_0`` is the query-loss gradient at ``c_T``, as
    FOMAML's; the second-order (MAML) gradient differs from it."""
    lr, steps = 0.3, 2
    model = make_model(inner_lr=lr, forget_gate_bias=30.0, train_steps=steps)
    batch = gaussian_tasks(1, seed=1)
    task = next(iter(batch))
    loss, _ = model._step(batch)
    loss.backward()
    meta_gradient = [p.grad for p in model.network.parameters()]

    adapted = [w.requires_grad_() for w in sgd_weights(model, task, lr, steps)]
    query_loss = F.cross_entropy(network_logits(model, adapted, task.support_x, task.query_x), task.query_y)
    first_order = torch.autograd.grad(query_loss, adapted)
    for actual, wanted in zip(meta_gradient, first_order, strict=True):
        torch.testing.assert_close(actual, wanted, rtol=1e-4, atol=1e-6)

    # Second order, by hand: the same SGD steps with create_graph, differentiated through the gradients.
    weights = [p.detach().clone().requires_grad_() for p in model.network.parameters()]
    phi = weights
    for _ in range(steps):
        support_loss = F.cross_entropy(network_logits(model, phi, task.support_x), task.support_y)
        grads = torch.autograd.grad(support_loss, phi, create_graph=True)
        phi = [w - lr * g for w, g in zip(phi, grads, strict=True)]
    query_loss = F.cross_entropy(network_logits(model, phi, task.support_x, task.query_x), task.query_y)
    second_order = torch.cat([g.flatten() for g in torch.autograd.grad(query_loss, weights)])
    ours = torch.cat([g.flatten() for g in meta_gradient])
    assert (ours - second_order).norm() > 1e-2 * second_order.norm()


def test_the_gates_and_the_initial_weights_get_gradients_from_the_query_loss():
    model = make_model(inner_lr=0.1, train_steps=2)
    loss, _ = model._step(gaussian_tasks(2, seed=2))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    gates = [*model.input_gate.parameters(), *model.forget_gate.parameters()]
    assert {id(p) for p in gates} <= {id(p) for p in model.parameters()}  # meta-learned by the optimizer


def query_loss_and_input_gate(model: LSTMMetaLearner, batch: TaskBatch) -> tuple[float, float]:
    """Evaluation's mean query loss on ``batch`` and the mean input gate (step size) of its LSTM updates."""
    gates, lstm_step = [], model.lstm_step

    def recording_step(*args):
        weights, (input_gate, forget_gate) = lstm_step(*args)
        gates.append(input_gate.mean())
        return weights, (input_gate, forget_gate)

    model.lstm_step = recording_step
    model.eval()
    with torch.no_grad():
        loss, _ = model._step(batch)
    model.train()
    del model.lstm_step
    return loss.item(), torch.stack(gates).mean().item()


def test_meta_training_lowers_the_query_loss_and_learns_a_larger_step_than_a_too_small_start():
    """Tasks whose labels mean nothing across tasks: the query loss after adapting can only fall through
    better adaptation. Started from a too small step (``inner_lr=0.01``), the meta-learner raises its input
    gate, the step size of its update."""
    model = make_model(inner_lr=0.01, train_steps=3, eval_steps=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    held_out = gaussian_tasks(16, seed=100)
    loss_before, gate_before = query_loss_and_input_gate(model, held_out)
    for step in range(40):
        loss, _ = model._step(gaussian_tasks(4, seed=step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    loss_after, gate_after = query_loss_and_input_gate(model, held_out)
    print(
        f"query loss {loss_before:.3f} -> {loss_after:.3f}, input gate {gate_before:.4f} -> {gate_after:.4f}"
    )
    torch.testing.assert_close(gate_before, 0.01)
    assert loss_after < loss_before - 0.2
    assert gate_after > 2 * gate_before


@pytest.mark.parametrize("backbone", ["mlp", "conv4"])
def test_a_case_alone_gets_its_probabilities_among_others_and_from_the_export(backbone: str):
    torch.manual_seed(0)
    shape = (D,) if backbone == "mlp" else (1, 16, 16)
    network = MLP(shape, hidden=8, norm="support") if backbone == "mlp" else Conv4(shape, hidden=4)
    model = LSTMMetaLearner(network, n_way=N_WAY, inner_lr=0.2, eval_steps=2)
    support_y = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    support_x = torch.randn(7, *shape) + support_y.view(-1, *[1] * len(shape))
    query_x = torch.randn(12, *shape) + torch.arange(12).remainder(3).view(-1, *[1] * len(shape))
    assert_cases_scored_alone_as_together(model, support_x, support_y, query_x, cases=4)


def test_evaluation_adapts_without_a_graph_back_to_the_meta_parameters():
    model = make_model(inner_lr=0.1, train_steps=2, eval_steps=2)
    task = next(iter(gaussian_tasks(1, seed=3)))
    meta = list(model.parameters())

    def reaches_meta(weights: dict[str, Tensor]) -> bool:
        total = sum(w.sum() for w in weights.values())
        return total.requires_grad and any(
            g is not None for g in torch.autograd.grad(total, meta, allow_unused=True)
        )

    assert reaches_meta(model.adapted_weights(task.support_x, task.support_y))  # training needs the graph
    model.eval()
    with torch.no_grad():  # as Lightning's evaluation loop runs (inference_mode=False)
        assert not reaches_meta(model.adapted_weights(task.support_x, task.support_y))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode=False"):
        model.adapted_weights(task.support_x, task.support_y)


@pytest.mark.parametrize(
    "settings",
    [{"first_order": False}, {"eval_inner_lr": 0.1}, {"inner_lr": 1.0}],
    ids=["second-order", "eval_inner_lr", "inner_lr-not-a-gate-value"],
)
def test_settings_it_cannot_honour_are_refused(settings: dict):
    with pytest.raises(DataError):
        LSTMMetaLearner(MLP((D,), hidden=4), n_way=N_WAY, **settings)
