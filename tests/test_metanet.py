"""Meta Networks: a memory slot per support example made from its own loss gradient, attention that reads it,
fast weights that only add to the slow network, and meta-training that teaches the generators to learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaclinic.algorithms.metanet import MetaNetwork
from metaclinic.data.task import Task, TaskBatch
from metaclinic.errors import DataError
from metaclinic.evaluation.export import adapted_classifier, class_probabilities, export_classifier
from metaclinic.models import MLP, Conv4
from metaclinic.models.normalization import embed_jointly


class Features(nn.Module):
    """The identity backbone: each example's embedding is its own input, whatever else is in the batch."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def gaussian_tasks(seed: int, tasks: int = 4, n_way: int = 5, n_shot: int = 2, n_query: int = 4) -> TaskBatch:
    """``n_way``-way tasks of 16-d points around class means drawn anew for every task."""
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(tasks, n_way, 16, generator=generator)
    support_y = torch.arange(n_way).repeat_interleave(n_shot).repeat(tasks, 1)
    query_y = torch.arange(n_way).repeat_interleave(n_query).repeat(tasks, 1)

    def points(labels: Tensor) -> Tensor:
        centres = torch.stack([m[y] for m, y in zip(means, labels, strict=True)])
        return centres + 0.5 * torch.randn(centres.shape, generator=generator)

    classes = torch.arange(n_way).repeat(tasks, 1)
    return TaskBatch(points(support_y), support_y, points(query_y), query_y, classes, torch.arange(tasks))


def first_task(batch: TaskBatch) -> Task:
    return next(iter(batch))


def meta_trained(model: MetaNetwork) -> MetaNetwork:
    """``model`` with fast-weight generators that give non-zero fast weights, as meta-training makes them
    (they start at zero: a new model is its slow network)."""
    for generator in (model.example_weights, model.task_weights):
        nn.init.normal_(generator.mlp[-1].weight)
    return model


def adapted(model: MetaNetwork, task: Task) -> nn.Module:
    """``model`` adapted to ``task``: the backbone with the fast weights as its head."""
    model.eval()
    with torch.no_grad():
        return model.adapt(task)


def test_the_memory_holds_one_slot_per_support_example_made_by_m_from_its_own_task_loss_gradient():
    torch.manual_seed(0)
    model = meta_trained(MetaNetwork(Features(16), n_way=5, hidden=8, key_size=4)).double()
    task = first_task(gaussian_tasks(0, tasks=1))
    task.support_x = task.support_x.double()
    memory = adapted(model, task)
    n_support = len(task.support_y)
    assert memory.head.hidden_memory.shape == (n_support, 8, 16)
    assert memory.head.output_memory.shape == (n_support, 5, 8)
    assert memory.head.support_keys.shape == (n_support, 4)
    hidden, output = model.hidden_layer.slow, model.output_layer.slow
    for x, y, hidden_slot, output_slot in zip(
        task.support_x, task.support_y, memory.head.hidden_memory, memory.head.output_memory, strict=True
    ):  # the paper's W*_i = m(Z, grad_W loss_task(b(W, x_i), y_i)), one example at a time
        loss = F.cross_entropy(output(F.relu(hidden(x[None]))), y[None])
        hidden_gradient, output_gradient = torch.autograd.grad(loss, (hidden.weight, output.weight))
        with torch.no_grad():
            torch.testing.assert_close(hidden_slot, model.example_weights(hidden_gradient))
            torch.testing.assert_close(output_slot, model.example_weights(output_gradient))
    # Q* = d(G, grad_Q loss_emb): one set of fast key weights for the task
    representation_loss = model.representation_loss(model.key_layer.slow(task.support_x), task.support_y)
    (key_gradient,) = torch.autograd.grad(representation_loss, model.key_layer.slow.weight)
    with torch.no_grad():
        torch.testing.assert_close(memory.head.key_weight, model.task_weights(key_gradient))


def test_a_slot_changes_only_with_its_own_example():
    torch.manual_seed(0)
    model = meta_trained(MetaNetwork(Features(16), n_way=5, hidden=8, key_size=4))
    task = first_task(gaussian_tasks(0, tasks=1))
    before = adapted(model, task)
    task.support_y = task.support_y.clone()
    task.support_y[3] = (task.support_y[3] + 1) % 5  # one example relabelled
    after = adapted(model, task)
    changed = (after.head.output_memory - before.head.output_memory).flatten(1).abs().amax(1) > 0
    assert changed.tolist() == [i == 3 for i in range(len(task.support_y))]


@pytest.mark.parametrize("backbone", ["mlp", "conv4"])
def test_a_query_identical_to_a_support_example_attends_mostly_to_its_slot(backbone: str):
    torch.manual_seed(0)
    network = MLP((16,), hidden=16) if backbone == "mlp" else Conv4((1, 16, 16), hidden=8)
    model = meta_trained(MetaNetwork(network, n_way=5, hidden=16, key_size=16, temperature=100.0))
    task = first_task(gaussian_tasks(0, tasks=1))
    if backbone == "conv4":
        task.support_x = task.support_x.repeat_interleave(16, -1).view(-1, 1, 16, 16)
    memory = adapted(model, task)
    with torch.no_grad():
        _, embeddings = embed_jointly(memory.backbone, memory.support_x[None], task.support_x[None])
        attention = memory.head.attention(embeddings[0])  # (queries = the support examples, slots)
    assert torch.equal(attention.argmax(1), torch.arange(len(task.support_y)))
    assert attention.diagonal().min() > 0.5, attention.diagonal()


def test_zero_fast_weights_give_the_slow_networks_prediction_exactly():
    torch.manual_seed(0)
    model = meta_trained(MetaNetwork(MLP((16,), hidden=16), n_way=5, hidden=8))
    task = first_task(gaussian_tasks(0, tasks=1))
    memory = adapted(model, task)
    with torch.no_grad():
        with_fast = memory(task.query_x)
        memory.head.hidden_memory.zero_()
        memory.head.output_memory.zero_()
        _, embeddings = embed_jointly(model.backbone, task.support_x[None], task.query_x[None])
        slow = model.output_layer.slow(F.relu(model.hidden_layer.slow(embeddings[0])))
        assert torch.equal(memory(task.query_x), slow)
    assert (with_fast - slow).abs().max() > 1e-3  # the fast weights do change the prediction


def test_a_new_model_is_its_slow_network():
    torch.manual_seed(0)
    model = MetaNetwork(MLP((16,), hidden=16), n_way=5, hidden=8)
    task = first_task(gaussian_tasks(0, tasks=1))
    memory = adapted(model, task)
    head = memory.head
    assert not head.hidden_memory.any() and not head.output_memory.any() and not head.key_weight.any()


def accuracy(model: MetaNetwork, batch: TaskBatch) -> float:
    model.eval()
    with torch.no_grad():
        scores = model.score_tasks(batch)
    model.train()
    return (scores.argmax(-1) == batch.query_y).float().mean().item()


def test_meta_training_teaches_the_fast_weights_to_classify_new_tasks():
    torch.manual_seed(0)
    model = MetaNetwork(MLP((16,), hidden=32), n_way=5, hidden=32, key_size=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    held_out = gaussian_tasks(10_000, tasks=16)
    before = accuracy(model, held_out)
    for step in range(40):
        loss, _ = model.training_loss(gaussian_tasks(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = accuracy(model, held_out)
    print(f"5-way accuracy on new tasks: {before:.3f} -> {after:.3f}")
    assert after > 0.8 and after > before + 0.2


def test_every_parameter_learns_through_the_query_loss_generators_included():
    torch.manual_seed(0)
    model = meta_trained(MetaNetwork(MLP((16,), hidden=16), n_way=5, hidden=8))
    loss, _ = model.training_loss(gaussian_tasks(0))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("backbone", ["mlp", "conv4"])
def test_a_case_is_scored_alone_as_among_others_and_the_export_agrees(backbone: str):
    torch.manual_seed(0)
    shape = (16,) if backbone == "mlp" else (1, 16, 16)
    network = MLP(shape, hidden=8) if backbone == "mlp" else Conv4(shape, hidden=4)
    model = meta_trained(MetaNetwork(network, n_way=3))
    assert not model.transductive
    support_y = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    support_x = torch.randn(7, *shape) + support_y.view(-1, *[1] * len(shape))
    query_x = torch.randn(30, *shape)
    together = class_probabilities(model, support_x, support_y, query_x)
    alone = torch.cat([class_probabilities(model, support_x, support_y, q[None]) for q in query_x[:4]])
    torch.testing.assert_close(alone, together[:4], atol=1e-5, rtol=0)
    assert together.std(0).max() > 1e-3
    classifier = adapted_classifier(model, support_x, support_y, query_x)
    program = export_classifier(classifier, query_x[:4]).module()
    with torch.no_grad():
        torch.testing.assert_close(program(query_x), together, atol=1e-5, rtol=0)
        torch.testing.assert_close(program(query_x[:1]), together[:1], atol=1e-5, rtol=0)


def test_evaluation_keeps_no_graph_and_inference_mode_is_refused_with_the_fix():
    model = MetaNetwork(MLP((16,), hidden=8), n_way=5).eval()
    batch = gaussian_tasks(0)
    with torch.no_grad():  # as Lightning's evaluation loop runs (inference_mode=False)
        scores = model.score_tasks(batch)
        memory = model.adapt(first_task(batch))
    assert scores.grad_fn is None and not any(b.requires_grad for b in memory.buffers())
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"Trainer\(inference_mode=False\)"):
        model.score_tasks(batch)


def test_episodes_of_another_width_are_refused():
    with pytest.raises(DataError, match="5-way head but the episodes are 3-way"):
        MetaNetwork(MLP((16,), hidden=8), n_way=5).checked_scores(gaussian_tasks(0, n_way=3))
