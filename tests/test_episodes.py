"""Episode sampling: shapes, disjointness, determinism, sharding across ranks and exact resumption."""

from __future__ import annotations

import pytest
import torch

from metaclinic.data import EpisodeDataset, MetaBatchSampler
from metaclinic.errors import DataError


@pytest.fixture
def data(make_datamodule):
    dm = make_datamodule()
    dm.setup()
    return dm


def test_episode_shapes_labels_and_disjoint_support_query(data):
    task, index = data._episodes("meta_train", seed=0)[7]
    assert index == 7
    assert task.support_x.shape == (5 * 2, 3, 28, 28) and task.support_x.dtype == torch.uint8
    assert task.query_x.shape == (5 * 4, 3, 28, 28)
    assert task.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert torch.equal(task.query_y, torch.arange(5).repeat_interleave(4))
    assert len(set(task.classes.tolist())) == 5
    flat = lambda x: {tuple(row.flatten().tolist()) for row in x}  # noqa: E731
    assert not flat(task.support_x) & flat(task.query_x)


def test_episodes_are_a_function_of_seed_and_index(data):
    episodes = data._episodes("meta_train", seed=0)
    again, other_seed = data._episodes("meta_train", seed=0), data._episodes("meta_train", seed=1)
    assert torch.equal(episodes[3][0].support_x, again[3][0].support_x)
    assert not torch.equal(episodes[3][0].support_x, episodes[4][0].support_x)
    assert not torch.equal(episodes[3][0].support_x, other_seed[3][0].support_x)


def test_each_split_only_draws_its_own_classes(data):
    for split in ("meta_train", "meta_val", "meta_test"):
        pool = data.pools[split]
        keys = {c.key for c in pool.classes}
        for i in range(20):
            task, _ = data._episodes(split, seed=0)[i]
            assert {pool.classes[c].key for c in task.classes.tolist()} <= keys


def test_eval_episode_sets_are_fixed_and_independent_of_training_seed(make_datamodule):
    first, second = make_datamodule(seed=1), make_datamodule(seed=2)
    first.setup(), second.setup()
    a, b = next(iter(first.test_dataloader())), next(iter(second.test_dataloader()))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.classes, b.classes)


def test_ranks_together_draw_what_one_process_draws():
    single = MetaBatchSampler(meta_batch_size=4, meta_batches_per_epoch=3)
    ranks = [MetaBatchSampler(4, 3, rank=r, world_size=2) for r in range(2)]
    for whole, *parts in zip(single, *ranks, strict=True):
        assert parts[0] + parts[1] == whole and not set(parts[0]) & set(parts[1])


def test_sampler_resumes_after_the_last_consumed_meta_batch():
    sampler = MetaBatchSampler(meta_batch_size=2, meta_batches_per_epoch=5, fingerprint="abc")
    stream = iter(sampler)
    for _ in range(3):  # the loader prefetched three meta-batches ...
        next(stream)
    sampler.mark_consumed(1)  # ... but the model consumed only meta-batches 0 and 1
    restored = MetaBatchSampler(meta_batch_size=2, meta_batches_per_epoch=5, fingerprint="abc")
    restored.load_state_dict(sampler.state_dict())
    assert list(restored) == [[4, 5], [6, 7], [8, 9]]  # rest of epoch 0
    assert next(iter(restored)) == [10, 11]  # epoch 1 continues the stream


def test_sampler_refuses_a_checkpoint_of_another_split():
    state = MetaBatchSampler(2, 5, fingerprint="abc").state_dict()
    with pytest.raises(DataError, match="different data split"):
        MetaBatchSampler(2, 5, fingerprint="xyz").load_state_dict(state)


def test_meta_batch_size_must_split_evenly_over_ranks():
    with pytest.raises(ValueError, match="divisible"):
        MetaBatchSampler(meta_batch_size=3, meta_batches_per_epoch=1, world_size=2)


def test_too_few_classes_for_n_way(data):
    with pytest.raises(ValueError, match="at least 6 classes"):
        EpisodeDataset(data.pools["meta_val"], n_way=6, n_shot=1, n_query=1, seed=0, stream=1)
