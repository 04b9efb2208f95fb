"""LEO: per-class weights decoded from latent codes adapted in the latent space, and the paper's penalties."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaclinic.algorithms import LEO
from metaclinic.algorithms.leo import kl_to_standard_normal, orthogonality_penalty
from metaclinic.data.task import Task, TaskBatch
from metaclinic.models import MLP, Conv4

from .test_inductive import assert_cases_scored_alone_as_together
from .test_maml import quiet_trainer

D = 6  # embedding size of the identity backbone


class Identity(nn.Module):
    """Embeddings are the inputs themselves: what LEO sees is what the test generates."""

    out_features = D

    def forward(self, x: Tensor) -> Tensor:
        return x


def episode(n_way: int = 3, shots: tuple[int, ...] = (1, 2, 3), n_query: int = 4, seed: int = 0) -> Task:
    """Gaussian classes around random means in ``D`` dimensions, ``shots[c]`` support examples of class c."""
    generator = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(n_way, D, generator=generator)
    support_y = torch.repeat_interleave(torch.arange(n_way), torch.tensor(shots))
    query_y = torch.arange(n_way).repeat_interleave(n_query)

    def points(labels: Tensor) -> Tensor:
        return means[labels] + 0.5 * torch.randn(len(labels), D, generator=generator)

    return Task(points(support_y), support_y, points(query_y), query_y, torch.arange(n_way))


def leo(**settings) -> LEO:
    torch.manual_seed(0)
    return LEO(Identity(), **{"latent_size": 4, **settings})


def adapted_weights(model: LEO, task: Task) -> Tensor:
    """The adapted classifier weights ``(n_way, d)`` of ``task``, as the adapted model holds them."""
    return model.adapt(task).head.weight


def support_loss(weights: Tensor, task: Task) -> float:
    return F.cross_entropy(task.support_x @ weights.T, task.support_y).item()


@pytest.mark.parametrize(("n_way", "shots"), [(3, (1, 2, 3)), (7, (2,) * 7), (2, (5, 5))])
def test_weights_are_one_vector_per_class_at_any_ways_and_shots(n_way: int, shots: tuple[int, ...]):
    model = leo().eval()
    with torch.no_grad():
        adapted = model.adapt(episode(n_way, shots))
    assert adapted.head.weight.shape == (n_way, D)
    assert adapted(episode(n_way, shots).query_x).shape == (4 * n_way, n_way)


def test_logits_are_permutation_equivariant_in_the_classes():
    model, task = leo().eval(), episode()
    permutation = torch.tensor([2, 0, 1])  # class c is called permutation[c]
    renamed = Task(task.support_x, permutation[task.support_y], task.query_x, task.query_y, task.classes)
    with torch.no_grad():
        logits, renamed_logits = model.adapt(task)(task.query_x), model.adapt(renamed)(task.query_x)
    torch.testing.assert_close(renamed_logits[:, permutation], logits, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(logits[:, 0], logits[:, 1])  # classes do get different weights


def test_the_latent_inner_loop_lowers_the_support_loss_step_by_step():
    """The paper's adaptation: gradient steps on the latent codes (not the weights) fit the support set."""
    task = episode()
    losses = []
    for steps in range(6):
        model = leo(latent_steps=steps, finetune_steps=0, inner_lr=0.5).eval()
        with torch.no_grad():
            losses.append(support_loss(adapted_weights(model, task), task))
    print("support loss after 0..5 latent steps:", [round(v, 3) for v in losses])
    assert all(after < before for before, after in itertools.pairwise(losses))
    assert losses[-1] < 0.8 * losses[0]


def test_fine_tuning_the_decoded_weights_lowers_the_support_loss_further():
    task = episode()
    losses = []
    for steps in (0, 5):
        model = leo(latent_steps=2, finetune_steps=steps, finetune_lr=0.1).eval()
        with torch.no_grad():
            losses.append(support_loss(adapted_weights(model, task), task))
    assert losses[1] < losses[0]


def test_kl_is_zero_exactly_at_the_standard_normal_prior_and_positive_elsewhere():
    mean, log_var = torch.zeros(2, 3, 4, requires_grad=True), torch.zeros(2, 3, 4, requires_grad=True)
    kl = kl_to_standard_normal(mean, log_var)
    assert kl.item() == 0
    assert all(g.abs().max() == 0 for g in torch.autograd.grad(kl, [mean, log_var]))  # a minimum
    assert kl_to_standard_normal(torch.full((3,), 0.5), torch.zeros(3)) > 0
    assert kl_to_standard_normal(torch.zeros(3), torch.full((3,), -1.0)) > 0
    # Closed form against torch.distributions
    mean, log_var = torch.randn(5), torch.randn(5)
    q, p = torch.distributions.Normal(mean, (0.5 * log_var).exp()), torch.distributions.Normal(0.0, 1.0)
    torch.testing.assert_close(
        kl_to_standard_normal(mean, log_var), torch.distributions.kl_divergence(q, p).mean()
    )


def test_orthogonality_penalty_is_zero_for_an_orthogonal_decoder_and_one_for_collinear_directions():
    model = leo(orthogonality_weight=1.0)
    nn.init.orthogonal_(model.decoder.weight)  # (2 * D, latent): orthonormal latent directions
    latent = model.class_weights(episode().support_x[None], episode().support_y[None], 3)[1]
    assert model.penalties(latent)["orthogonality"].abs().item() < 1e-12
    with torch.no_grad():
        model.decoder.weight.normal_()
    assert model.penalties(latent)["orthogonality"] > 0
    collinear = torch.ones(4, 1) * torch.randn(1, 8)  # 4 directions, all the same: off-diagonals 1
    torch.testing.assert_close(orthogonality_penalty(collinear), torch.tensor(12 / 16))


def test_encoder_penalty_pulls_the_encoder_towards_the_adapted_codes_but_not_the_decoder():
    task = episode()
    batch = (task.support_x[None], task.support_y[None], 3)
    assert leo(latent_steps=0).train().class_weights(*batch)[1].encoder == 0  # nothing adapted yet
    model = leo(latent_steps=3).train()
    penalty = model.class_weights(*batch)[1].encoder
    assert penalty > 0
    decoder, encoder = torch.autograd.grad(
        penalty, [model.decoder.weight, model.encoder.weight], allow_unused=True
    )
    assert decoder is None or decoder.abs().max() == 0  # stopgrad(adapted z): no pull on the decoder
    assert encoder.abs().max() > 0


def test_evaluation_is_deterministic_and_training_samples():
    task = episode()
    model = leo()
    model.eval()
    with torch.no_grad():
        first, second = adapted_weights(model, task), adapted_weights(model, task)
    assert torch.equal(first, second)
    model.train()
    assert not torch.allclose(adapted_weights(model, task), adapted_weights(model, task))


def test_evaluation_adapts_without_a_graph_and_refuses_inference_mode():
    model, task = leo().eval(), episode()
    with torch.no_grad():  # as Lightning's evaluation loop runs it
        weights = adapted_weights(model, task)
    assert weights.grad_fn is None and not weights.requires_grad
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode=False"):
        model.adapt(task)


def test_the_second_order_meta_gradient_matches_finite_differences():
    """Through the latent steps, the decoder's samples and the fine-tuning steps, with the samples' noise
    fixed by reseeding (the reparametrisation makes the loss a smooth function of the parameters)."""
    model = leo(latent_size=3, latent_steps=2, finetune_steps=2, inner_lr=0.5, finetune_lr=0.1).double()
    model.train()
    tasks = [episode(seed=s) for s in (1, 2)]
    batch = TaskBatch.collate([(t, i) for i, t in enumerate(tasks)])
    batch.support_x, batch.query_x = batch.support_x.double(), batch.query_x.double()

    def loss() -> Tensor:
        torch.manual_seed(1)
        return model.training_loss(batch)[0]

    params = list(model.parameters())
    analytic = torch.cat([g.flatten() for g in torch.autograd.grad(loss(), params)])
    numeric, h = [], 1e-6
    with torch.no_grad():
        for param in params:
            for i in range(param.numel()):
                param.view(-1)[i] += h
                up = loss().item()
                param.view(-1)[i] -= 2 * h
                down = loss().item()
                param.view(-1)[i] += h
                numeric.append((up - down) / (2 * h))
    torch.testing.assert_close(analytic, torch.tensor(numeric, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    step_sizes = analytic[-(3 + D) :]  # the meta-learned step sizes get meta-gradients too
    assert step_sizes.abs().min() > 0


def test_a_case_alone_gets_its_probabilities_among_others_and_in_the_export():
    torch.manual_seed(0)
    model = LEO(MLP((10,), hidden=8, norm="support"), latent_size=4)
    support_y = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    support_x, query_x = torch.randn(7, 10) + support_y[:, None], torch.randn(12, 10)
    assert_cases_scored_alone_as_together(model, support_x, support_y, query_x, cases=4)


def test_it_evaluates_at_other_ways_and_shots_than_it_trains_on(make_datamodule):
    model = LEO(Conv4((3, 28, 28), hidden=4), latent_size=4)
    data = make_datamodule(n_way=3, n_shot=5, n_query=3, test_episodes=8)
    quiet_trainer().test(model, datamodule=data, verbose=False)
    report = model.test_report
    assert (report.n_way, report.n_shot) == (3, 5)
    assert 0 <= report.metrics["accuracy"].mean <= 1
