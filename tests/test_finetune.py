"""Test-time fine-tuning on the support set (P>M>F): it helps far from the training domain, and a case's
score still depends only on the support set and that case."""

from __future__ import annotations

import torch

from metaclinic.algorithms import ProtoNet
from metaclinic.algorithms.finetune import SupportFineTuning
from metaclinic.evaluation.metrics import episode_accuracy
from metaclinic.models import Conv4


def meta_test_batches(make_datamodule, episodes: int):
    data = make_datamodule(test_episodes=episodes, n_shot=2, n_query=4)
    data.setup("test")
    return [data.on_after_batch_transfer(batch, 0) for batch in data.test_dataloader()]


def test_fine_tuning_an_untrained_backbone_on_the_support_set_raises_query_accuracy(make_datamodule):
    """P>M>F's claim in miniature: a backbone that knows nothing of the test domain gains from a few steps
    on the support set alone (synthetic blood-cell classes, random Conv-4: 43% -> 62% on 40 episodes)."""
    batches = meta_test_batches(make_datamodule, episodes=16)

    def accuracy(finetuning: SupportFineTuning | None) -> float:
        torch.manual_seed(0)
        model = ProtoNet(Conv4((3, 28, 28), hidden=16), support_finetuning=finetuning).eval()
        return torch.cat([episode_accuracy(model.score_tasks(b), b.query_y) for b in batches]).mean().item()

    plain, tuned = accuracy(None), accuracy(SupportFineTuning(steps=10, lr=0.01))
    assert tuned > plain + 0.1, (plain, tuned)


def test_an_episode_scores_the_same_alone_in_any_batch_and_case_by_case(make_datamodule):
    (batch,) = meta_test_batches(make_datamodule, episodes=3)
    model = ProtoNet(Conv4((3, 28, 28), hidden=8), support_finetuning=SupportFineTuning(steps=3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    together = model.score_tasks(batch)
    alone = model.score_tasks(batch[2:3])
    torch.testing.assert_close(alone[0], together[2], atol=1e-5, rtol=0)
    one_case = batch[2:3]
    one_case.query_x, one_case.query_y = one_case.query_x[:, 5:6], one_case.query_y[:, 5:6]
    torch.testing.assert_close(model.score_tasks(one_case)[0, 0], together[2, 5], atol=1e-5, rtol=0)
    # Every episode starts from the meta-trained weights, which stay untouched.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
