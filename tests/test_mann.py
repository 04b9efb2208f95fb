"""MANN: labels one step late, LRUA writes, queries scored from the support state alone; it meta-learns."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaclinic.algorithms import MANN
from metaclinic.algorithms.adapted import one_episode
from metaclinic.algorithms.mann import sequence_order
from metaclinic.data.task import TaskBatch
from metaclinic.errors import DataError
from metaclinic.evaluation.export import adapted_classifier, class_probabilities, export_classifier
from metaclinic.models import Conv4


class Features(nn.Module):
    """The identity on 16-d vectors: the memory has to do all the work."""

    out_features = 16

    def forward(self, x: Tensor) -> Tensor:
        return x


def gaussian_tasks(generator: torch.Generator, tasks: int, n_shot: int = 2, n_query: int = 2, first: int = 0):
    """5-way tasks of 16-d points around class means drawn afresh for every task (new classes each time)."""
    n_way, d = 5, 16
    means = 1.5 * torch.randn(tasks, n_way, d, generator=generator)
    support_y = torch.arange(n_way).repeat_interleave(n_shot).repeat(tasks, 1)
    query_y = torch.arange(n_way).repeat_interleave(n_query).repeat(tasks, 1)

    def points(labels: Tensor) -> Tensor:
        centres = torch.stack([m[y] for m, y in zip(means, labels, strict=True)])
        return centres + 0.5 * torch.randn(*labels.shape, d, generator=generator)

    classes, episodes = torch.arange(n_way).repeat(tasks, 1), torch.arange(first, first + tasks)
    return TaskBatch(points(support_y), support_y, points(query_y), query_y, classes, episodes)


def small_mann(**overrides) -> MANN:
    torch.manual_seed(0)
    settings = {"controller_size": 32, "memory_slots": 16, "memory_size": 16, **overrides}
    return MANN(Features(), **settings)


def support_logits(model: MANN, batch: TaskBatch) -> Tensor:
    return model.score_tasks(batch)[:, : batch.support_y.shape[1]]


def test_a_label_is_given_one_step_late():
    """A support step's prediction depends on the labels before it in the sequence, never on its own."""
    model, batch = small_mann().eval(), gaussian_tasks(torch.Generator().manual_seed(0), tasks=1)
    order = sequence_order(10, batch.episode_index)[0]
    first, last = order[0], order[-1]
    with torch.no_grad():
        base = model.score_tasks(batch)
        relabelled = {}
        for position in (first, last):
            changed = batch.support_y.clone()
            changed[0, position] = (changed[0, position] + 1) % 5
            relabelled[int(position)] = model.score_tasks(dataclasses.replace(batch, support_y=changed))
    # The last example's label only reaches the queries; the first one's every step after the first.
    torch.testing.assert_close(relabelled[int(last)][:, :10], base[:, :10], rtol=0, atol=0)
    assert (relabelled[int(last)][:, 10:] - base[:, 10:]).abs().max() > 1e-4
    torch.testing.assert_close(relabelled[int(first)][:, first], base[:, first], rtol=0, atol=0)
    assert (relabelled[int(first)][:, order[1]] - base[:, order[1]]).abs().max() > 1e-4


def test_with_the_gate_closed_every_key_goes_to_the_least_used_row_cleared_first():
    """LRUA with sigma(alpha) = 0: the write weights are the least-used row's, so the memory fills row by row;
    once full, the least-used row is emptied and takes the new key alone."""
    model = small_mann(memory_slots=4)
    controller = model.controller
    with torch.no_grad():
        controller.gate.weight.zero_()
        controller.gate.bias.fill_(-30.0)
    embeddings = torch.randn(6, 1, 16, generator=torch.Generator().manual_seed(0))
    state, label = controller.initial_state(1, embeddings), torch.zeros(1, 5)
    with torch.no_grad():
        for t, embedding in enumerate(embeddings):
            least_used = int(state.usage.argmin())
            _, new = controller.step(embedding, label, state)
            key = torch.tanh(controller.key(torch.cat([new.hidden, embedding], -1)))[0]
            torch.testing.assert_close(new.memory[0, least_used], key)  # the key alone: the row was cleared
            others = [i for i in range(4) if i != least_used]
            torch.testing.assert_close(new.memory[0, others], state.memory[0, others])
            if t < 4:
                assert least_used == t  # an empty memory fills in order
            state = new


def test_a_query_is_scored_from_the_support_state_alone_and_the_export_does_the_same():
    """Inductive: a query's probabilities do not change with the queries scored beside it or their order;
    evaluation (score_tasks), the adapted model and its torch.export give the same numbers."""
    torch.manual_seed(0)
    model = MANN(Conv4((1, 16, 16), hidden=4), controller_size=16, memory_slots=16, memory_size=8)
    generator = torch.Generator().manual_seed(0)
    support_y = torch.arange(5).repeat_interleave(2)
    support_x = torch.randn(10, 1, 16, 16, generator=generator) + support_y.view(-1, 1, 1, 1)
    query_x = torch.randn(12, 1, 16, 16, generator=generator) + torch.arange(12).remainder(5).view(
        -1, 1, 1, 1
    )
    together = class_probabilities(model, support_x, support_y, query_x)
    alone = torch.cat(
        [class_probabilities(model, support_x, support_y, query_x[i : i + 1]) for i in range(3)]
    )
    torch.testing.assert_close(alone, together[:3], atol=1e-6, rtol=0)
    order = torch.randperm(12, generator=generator)
    permuted = class_probabilities(model, support_x, support_y, query_x[order])
    torch.testing.assert_close(permuted, together[order], atol=1e-6, rtol=0)
    assert together.std(0).max() > 1e-3  # the query itself matters
    # Evaluation scores the same numbers through score_tasks.
    batch = TaskBatch.of(one_episode(support_x, support_y, query_x, 5))
    with torch.no_grad():
        evaluated = model.class_logits(model.score_tasks(batch), batch)[0].softmax(-1)
    torch.testing.assert_close(evaluated, together, atol=1e-6, rtol=0)
    program = export_classifier(
        adapted_classifier(model, support_x, support_y, query_x), query_x[:4]
    ).module()
    with torch.no_grad():
        torch.testing.assert_close(program(query_x), together, atol=1e-5, rtol=0)
        torch.testing.assert_close(program(query_x[5:6]), together[5:6], atol=1e-5, rtol=0)


def test_episodes_of_another_width_are_refused_naming_the_setting():
    batch = gaussian_tasks(torch.Generator().manual_seed(0), tasks=1)
    with pytest.raises(DataError, match=r"5-way head but the episodes are 3-way.*model\.init_args\.n_way"):
        small_mann().check_episode(dataclasses.replace(batch, classes=batch.classes[:, :3]))


def test_support_loss_weight_adds_the_support_steps_cross_entropy_in_training_only():
    batch = gaussian_tasks(torch.Generator().manual_seed(0), tasks=2)
    model = small_mann(support_loss_weight=0.5)
    scores = model.score_tasks(batch)
    query = F.cross_entropy(scores[:, 10:].flatten(0, 1), batch.query_y.flatten())
    support = F.cross_entropy(scores[:, :10].flatten(0, 1), batch.support_y.flatten())
    torch.testing.assert_close(model.query_loss(scores, batch), query + 0.5 * support)
    torch.testing.assert_close(model.eval().query_loss(scores, batch), query)


def test_after_meta_training_the_second_instance_of_a_class_is_predicted_far_better_than_the_first():
    """The paper's Figure 2: the first time a class appears in the sequence its label can only be guessed;
    from the second on, the memory holds an example bound to it."""
    model = small_mann(controller_size=64, memory_size=32)  # trained on the queries, tested on support steps
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for step in range(60):
        loss, _ = model._step(gaussian_tasks(generator, tasks=8, first=8 * step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    batch = gaussian_tasks(torch.Generator().manual_seed(1), tasks=100, n_shot=3, first=10**6)
    with torch.no_grad():
        correct = support_logits(model.eval(), batch).argmax(-1) == batch.support_y  # (tasks, 15)
    order = sequence_order(15, batch.episode_index)
    in_sequence = batch.support_y.gather(1, order)
    seen_before = (in_sequence.unsqueeze(2) == in_sequence.unsqueeze(1)).tril(-1).sum(-1)  # instances before
    instance = torch.empty_like(seen_before).scatter_(1, order, seen_before)  # 0: first, 1: second ...
    accuracy = [correct[instance == i].float().mean().item() for i in range(3)]
    print(f"accuracy of the 1st, 2nd, 3rd instance of a class: {accuracy}")
    assert accuracy[0] < 0.4  # a guess (excluding the labels seen already can lift it above 1/5)
    assert accuracy[1] > accuracy[0] + 0.2
    assert accuracy[2] > accuracy[1]  # and better still with two examples in memory
