"""MetaGAN: fakes of the episode's shape, an N+1-way discriminator scored as an N-way classifier, a two-player
game on one optimizer, and plain ProtoNet when the adversarial weight is 0."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from metaclinic.algorithms import MetaGAN, ProtoNet
from metaclinic.algorithms.metagan import realness
from metaclinic.data.task import TaskBatch
from metaclinic.errors import DataError
from metaclinic.models import MLP, Conv4

from .test_inductive import assert_cases_scored_alone_as_together
from .test_maml import quiet_trainer

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
ADAM = functools.partial(torch.optim.Adam, lr=1e-2)


def gaussian_tasks(seed: int, tasks: int = 4, n_way: int = 3, n_shot: int = 3, n_query: int = 5) -> TaskBatch:
    """3-way tasks of 8-d points around class means in [-0.6, 0.6], well inside the fakes' range [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    means = torch.rand(tasks, n_way, 8, generator=generator) * 1.2 - 0.6
    support_y = torch.arange(n_way).repeat_interleave(n_shot).repeat(tasks, 1)
    query_y = torch.arange(n_way).repeat_interleave(n_query).repeat(tasks, 1)

    def points(labels: Tensor) -> Tensor:
        centres = torch.stack([m[y] for m, y in zip(means, labels, strict=True)])
        return centres + 0.1 * torch.randn(centres.shape, generator=generator)

    classes = torch.arange(n_way).repeat(tasks, 1)
    return TaskBatch(points(support_y), support_y, points(query_y), query_y, classes, torch.arange(tasks))


def metagan(base: str = "protonet", **settings) -> MetaGAN:
    torch.manual_seed(0)
    backbone = MLP((8,), hidden=16, norm="support")
    return MetaGAN(
        backbone, base=base, n_way=3, train_steps=2, eval_steps=2, inner_lr=0.5, optimizer=ADAM, **settings
    )


def fit(model, steps: int, first_seed: int = 0) -> None:
    batches = [gaussian_tasks(first_seed + i) for i in range(steps)]
    quiet_trainer(max_steps=steps, accelerator="cpu").fit(model, DataLoader(batches, batch_size=None))


@pytest.mark.parametrize(
    "backbone", [MLP((8,), hidden=16), Conv4((1, 16, 16), hidden=4)], ids=["mlp", "conv4"]
)
def test_fakes_have_the_episodes_input_shape_and_range_and_depend_on_the_task(backbone):
    generator = MetaGAN(backbone).generator
    centre = torch.rand(2, *backbone.input_shape) * 1.6 - 0.8  # the episodes' mean support inputs
    condition = 5 * torch.randn(2, backbone.out_features)  # and mean support embeddings
    fakes = {}
    for name, (c, e) in {
        "task": (centre, condition),
        "embedding": (centre, -condition),
        "centre": (-centre, condition),
    }.items():
        torch.manual_seed(1)  # the same noise
        fakes[name] = generator(c, e, 7)
    assert fakes["task"].shape == (2, 7, *backbone.input_shape)
    assert fakes["task"].min() > -1 and fakes["task"].max() < 1  # the range of metaclinic's image inputs
    assert fakes["task"].std(1).mean() > 0.01  # the noise matters
    assert (fakes["task"] - fakes["embedding"]).abs().max() > 1e-3
    distance = {name: (f - centre.unsqueeze(1)).abs().mean() for name, f in fakes.items()}
    assert distance["task"] < distance["centre"] / 2  # the fakes lie around the episode's data


@pytest.mark.parametrize("base", ["protonet", "maml"])
def test_queries_get_a_fake_score_but_are_classified_among_the_n_real_classes(base: str):
    model, batch = metagan(base).eval(), gaussian_tasks(seed=0)
    with torch.no_grad():
        scores = model.score_tasks(batch)
        logits = model.class_logits(scores, batch)
        adapted = model.adapt(next(iter(batch)))(batch.query_x[0])
    assert scores.shape == (4, 15, 4) and logits.shape == (4, 15, 3)
    torch.testing.assert_close(logits, scores[..., :3])
    torch.testing.assert_close(adapted, logits[0])  # adapt, evaluation and export: N columns
    if base == "protonet":  # one fake logit per episode: a learned fraction of the prototypes' spacing
        assert torch.equal(scores[..., 3], scores[:, :1, 3].expand(4, 15)) and (scores[..., 3] < 0).all()


@pytest.mark.parametrize("base", ["protonet", "maml"])
def test_a_case_alone_gets_its_probabilities_among_others_and_from_the_export(base: str):
    model = metagan(base)
    fit(model, steps=3)
    batch = gaussian_tasks(seed=50)
    support_x, support_y, query_x = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    together = assert_cases_scored_alone_as_together(model, support_x, support_y, query_x, cases=3)
    assert together.shape == (15, 3)


def test_with_adversarial_weight_zero_it_is_protonet_exactly():
    torch.manual_seed(0)
    protonet = ProtoNet(MLP((8,), hidden=16, norm="support"), optimizer=ADAM)
    plain = metagan(adversarial_weight=0.0)
    assert torch.equal(
        *(torch.cat([p.flatten() for p in m.backbone.parameters()]) for m in (protonet, plain))
    )
    for model in (protonet, plain):
        torch.manual_seed(0)
        fit(model, steps=5)
    for ours, theirs in zip(plain.backbone.parameters(), protonet.backbone.parameters(), strict=True):
        assert torch.equal(ours, theirs)
    batch = gaussian_tasks(seed=99)
    with torch.no_grad():
        assert torch.equal(plain.class_logits(plain.score_tasks(batch), batch), protonet.score_tasks(batch))
    assert plain.log_fake_radius.item() == torch.tensor(math.log(0.25)).item()  # no real-vs-fake loss
    assert all(p.grad is None or not p.grad.any() for p in plain.generator.parameters())


def test_one_backward_trains_the_classifier_on_its_losses_and_the_generator_on_feature_matching_alone():
    """The returned loss is the classifier's; its gradient is the classifier's loss gradient on the
    classifier and ``weight`` times the feature-matching gradient on the generator, nothing crossed."""
    weight, model, batch = 0.5, metagan(adversarial_weight=0.5), gaussian_tasks(seed=0)
    classifier = [*model.backbone.parameters(), model.log_fake_radius]
    generator = list(model.generator.parameters())
    torch.manual_seed(3)
    loss, _ = model._step(batch)
    loss.backward()

    torch.manual_seed(3)  # the same noise, the losses written out
    discriminator = model.discriminator(batch)
    support, real_features, real_scores = discriminator(batch.query_x)
    fakes = model.generator(batch.support_x.mean(1), support.mean(1).detach(), support.shape[1])
    fake_scores = discriminator(fakes.detach())[2]
    d_loss = F.softplus(-realness(real_scores)).mean() + F.softplus(realness(fake_scores)).mean()
    classifier_loss = (
        F.cross_entropy(real_scores[..., :3].flatten(0, 1), batch.query_y.flatten()) + weight * d_loss
    )
    fake_features = discriminator(fakes)[1]
    matching = (real_features.mean(1) - fake_features.mean(1)).pow(2).sum(-1).mean()
    expected_classifier = torch.autograd.grad(classifier_loss, classifier, retain_graph=True)
    expected_generator = torch.autograd.grad(weight * matching, generator)

    torch.testing.assert_close(loss, classifier_loss)
    for param, expected in zip(classifier + generator, expected_classifier + expected_generator, strict=True):
        torch.testing.assert_close(param.grad, expected)
    assert all(g.abs().sum() > 0 for g in expected_generator)


def training_only(model: MetaGAN, part: str) -> MetaGAN:
    """``model`` whose optimizer steps only ``part`` (``generator`` or ``classifier``), not the other."""
    generator = {id(p) for p in model.generator.parameters()}

    def optimizer(params) -> torch.optim.Optimizer:
        return ADAM([p for p in params if (id(p) in generator) == (part == "generator")])

    model.optimizer_factory = optimizer
    return model


def game(model: MetaGAN, batch: TaskBatch) -> tuple[float, float, float]:
    """On ``batch``: the discriminator's real-vs-generated error (the mean over both kinds) and loss, and the
    generator's feature-matching loss."""
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():
        discriminator = model.discriminator(batch)
        support, real_features, scores = discriminator(batch.query_x)
        fakes = model.generator(batch.support_x.mean(1), support.mean(1), 15)
        _, fake_features, fake_scores = discriminator(fakes)
    error = ((realness(scores) < 0).float().mean() + (realness(fake_scores) > 0).float().mean()) / 2
    loss = F.softplus(-realness(scores)).mean() + F.softplus(realness(fake_scores)).mean()
    matching = (real_features.mean(1) - fake_features.mean(1)).pow(2).sum(-1).mean()
    return error.item(), loss.item(), matching.item()


def test_training_lowers_the_discriminators_error_on_generated_against_real_examples():
    model, new_tasks = training_only(metagan(), "classifier"), gaussian_tasks(seed=1000)
    before, loss_before, _ = game(model, new_tasks)  # against fakes of a generator held fixed
    fit(model, steps=100)
    after, loss_after, _ = game(model, new_tasks)
    print(f"real-vs-generated error {before:.2f} -> {after:.2f}, loss {loss_before:.2f} -> {loss_after:.2f}")
    assert after < before / 2 and loss_after < loss_before / 2


def test_the_generator_learns_to_match_the_real_examples_features():
    model, batch = training_only(metagan(), "generator"), gaussian_tasks(seed=0)
    *_, before = game(model, batch)  # against a discriminator held fixed
    quiet_trainer(max_steps=30, accelerator="cpu").fit(model, DataLoader([batch] * 30, batch_size=None))
    *_, after = game(model, batch)
    print(f"feature matching loss {before:.2f} -> {after:.2f}")
    assert after < before / 2


def test_maml_base_has_an_n_plus_one_way_head_refuses_other_ways_and_meta_learns_it():
    model, batch = metagan("maml"), gaussian_tasks(seed=0)
    assert model.head.out_features == 4
    with pytest.raises(DataError, match="3-way head but the episodes are 2-way"):
        model.check_episode(gaussian_tasks(seed=0, n_way=2))
    model._step(batch)[0].backward()
    assert model.head.weight.grad[3].abs().sum() > 0  # the fake class's row is meta-learned too
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_fit_logs_the_adversarial_term_of_the_meta_loss_and_a_call_by_hand_logs_nothing():
    model = metagan()
    trainer = quiet_trainer(max_steps=2, accelerator="cpu")
    trainer.fit(model, DataLoader([gaussian_tasks(seed=i) for i in range(2)], batch_size=None))
    assert trainer.callback_metrics["train/adversarial"] > 0
    model.training_loss(gaussian_tasks(seed=5))  # after fit, outside the training loop: no log call
