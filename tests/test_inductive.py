"""A case's prediction depends only on the support set and the case: in evaluation and in the export."""

from __future__ import annotations

import pytest
import torch

from metaclinic.evaluation.export import adapted_classifier, class_probabilities, export_classifier
from metaclinic.models import MLP, Conv4

from .test_adapt import ALGORITHMS

BACKBONES = {
    "mlp-support": ((10,), lambda shape: MLP(shape, hidden=8, norm="support")),
    "conv4-support": ((1, 16, 16), lambda shape: Conv4(shape, hidden=4)),
    "conv4-task_norm": ((1, 16, 16), lambda shape: Conv4(shape, hidden=4, norm="task_norm")),
}
CASES = [(name, backbone) for name in ALGORITHMS for backbone in ("mlp-support", "conv4-support")] + [
    ("MAML", "conv4-task_norm"),
    ("ProtoNet", "conv4-task_norm"),
]


def episode(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    support_y = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    support_x = torch.randn(7, *shape, generator=generator) + support_y.view(-1, *[1] * len(shape))
    query_x = torch.randn(12, *shape, generator=generator) + torch.arange(12).remainder(3).view(
        -1, *[1] * len(shape)
    )
    return support_x, support_y, query_x


@pytest.mark.parametrize(("algorithm", "backbone"), CASES)
def test_a_case_alone_gets_the_probabilities_it_gets_among_others(algorithm: str, backbone: str):
    torch.manual_seed(0)
    shape, make = BACKBONES[backbone]
    model = ALGORITHMS[algorithm](make(shape))
    assert not model.transductive
    support_x, support_y, query_x = episode(shape)
    together = class_probabilities(model, support_x, support_y, query_x)
    alone = torch.cat(
        [class_probabilities(model, support_x, support_y, query_x[i : i + 1]) for i in range(4)]
    )
    torch.testing.assert_close(alone, together[:4], atol=1e-5, rtol=0)
    order = torch.randperm(len(query_x), generator=torch.Generator().manual_seed(1))
    permuted = class_probabilities(model, support_x, support_y, query_x[order])
    torch.testing.assert_close(permuted, together[order], atol=1e-5, rtol=0)
    # The probabilities are not all alike: the case itself matters.
    assert together.std(0).max() > 1e-3

    program = export_classifier(
        adapted_classifier(model, support_x, support_y, query_x), query_x[:4]
    ).module()
    with torch.no_grad():
        torch.testing.assert_close(program(query_x), together, atol=1e-5, rtol=0)
        torch.testing.assert_close(program(query_x[:1]), together[:1], atol=1e-5, rtol=0)
        torch.testing.assert_close(program(query_x[order]), together[order], atol=1e-5, rtol=0)


def test_transductive_batch_norm_is_declared_and_does_depend_on_the_batch():
    torch.manual_seed(0)
    shape = (1, 16, 16)
    model = ALGORITHMS["ProtoNet"](Conv4(shape, hidden=4, norm="transductive"))
    assert model.transductive
    support_x, support_y, query_x = episode(shape)
    together = class_probabilities(model, support_x, support_y, query_x)[:1]
    alone = class_probabilities(model, support_x, support_y, query_x[:1])
    assert (together - alone).abs().max() > 1e-4


def assert_cases_scored_alone_as_together(model, support_x, support_y, query_x, cases: int = 4):
    """The first ``cases`` queries scored one at a time get their probabilities among all the queries, which
    are not all alike, and the exported adapted model gives them too (whole batch and a single case)."""
    together = class_probabilities(model, support_x, support_y, query_x)
    alone = torch.cat(
        [class_probabilities(model, support_x, support_y, query_x[i : i + 1]) for i in range(cases)]
    )
    torch.testing.assert_close(alone, together[:cases], atol=1e-5, rtol=0)
    assert together.std(0).max() > 1e-3  # the case itself matters
    program = export_classifier(
        adapted_classifier(model, support_x, support_y, query_x), query_x[:4]
    ).module()
    with torch.no_grad():
        torch.testing.assert_close(program(query_x), together, atol=1e-5, rtol=0)
        torch.testing.assert_close(program(query_x[:1]), together[:1], atol=1e-5, rtol=0)
    return together
