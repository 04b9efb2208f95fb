"""Accuracy parity: metaclinic MAML and learn2learn LightningMAML, same budget, scored on the same episodes.

    python -m benchmarks.accuracy_parity --meta_batches 300          # real MedMNIST
    python -m benchmarks.accuracy_parity --synthetic --meta_batches 20 --test_episodes 50

Both train the same Conv-4 (64 filters) from the same initial weights on the configs' meta-train classes
for the same number of tasks (5-way 5-shot, 15 queries, 1 inner step of 0.4, meta-batch 4, Adam 1e-3, no
validation), as set up by ``benchmarks/throughput.py``. Both trained networks are then scored by the same
metaclinic evaluation (3 inner steps, as in the configs) on the same fixed meta-test episodes. Prints the
two reports and their paired difference: a faster training path must not cost accuracy.
"""

from __future__ import annotations

import argparse
import copy

import torch
from lightning.pytorch import Trainer

from benchmarks.common import data_arguments, hardware, medmnist
from benchmarks.throughput import run_learn2learn, run_metaclinic
from metaclinic.algorithms import MAML
from metaclinic.compare import Run, markdown, paired_differences
from metaclinic.models import Conv4


def report_of(network_state: dict, data) -> dict:
    """The meta-test report of a MAML network (backbone and head weights) under the configs' evaluation."""
    model = MAML(Conv4(data.example_shape, hidden=64), n_way=5, inner_lr=0.4, train_steps=1, eval_steps=3)
    model.learner.module.load_state_dict(network_state)
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                      inference_mode=False, accelerator="cpu")  # fmt: skip
    trainer.test(model, datamodule=data, verbose=False)
    report = model.test_report
    report.extra.update(split_fingerprint=data.split_fingerprint, eval_seed=data.eval_seed)
    return report.to_dict()


def main() -> None:
    parser = data_arguments(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    parser.add_argument("--meta_batches", type=int, default=300)
    parser.add_argument("--test_episodes", type=int, default=600)
    args = parser.parse_args()
    print(f"Hardware: {hardware()}", flush=True)
    settings = argparse.Namespace(
        algorithm="maml", ways=5, shots=5, queries=15, steps=1, inner_lr=0.4, hidden=64, meta_batch_size=4,
        warmup=0, meta_batches=args.meta_batches, accelerator="cpu", precision="32-true",
    )  # fmt: skip
    data = medmnist(
        args.root, args.synthetic, n_way=5, n_shot=5, n_query=15, meta_batch_size=4,
        meta_batches_per_epoch=args.meta_batches, test_episodes=args.test_episodes,
    )  # fmt: skip
    torch.manual_seed(0)
    theirs = run_learn2learn(settings, data)
    network = theirs.model.model.module  # LightningMAML -> learn2learn MAML -> the network
    initial = copy.deepcopy(network.state_dict())
    theirs.fit()
    ours = run_metaclinic(settings, data)
    ours.model.learner.module.load_state_dict(initial)  # the same starting point
    ours.fit()
    runs = [
        Run("learn2learn LightningMAML", report_of(network.state_dict(), data)),
        Run("metaclinic MAML", report_of(ours.model.learner.module.state_dict(), data)),
    ]
    print(markdown(paired_differences(runs), runs[0].name))


if __name__ == "__main__":
    main()
