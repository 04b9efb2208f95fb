"""Accuracy parity: metaclinic MAML and learn2learn LightningMAML, same budget, scored on the same episodes.

    python -m benchmarks.accuracy_parity --meta_batches 300 --seeds 0 1 2   # real MedMNIST
    python -m benchmarks.accuracy_parity --synthetic --meta_batches 20 --test_episodes 50

For every seed, both train the same Conv-4 (64 filters) from the same initial weights on the configs' meta-
train classes for the same number of tasks (5-way 5-shot, 15 queries, 1 inner step of 0.4, meta-batch 4,
Adam 1e-3, no validation), as set up by ``benchmarks/throughput.py``. Both trained networks are then scored
by the same metaclinic evaluation (3 inner steps, as in the configs) on the same fixed meta-test episodes.
The seed sets the initial weights and both training-episode streams (learn2learn's ``TaskDataset`` draws
with Python's ``random``, metaclinic's sampler with its own generator, so the two never see the same tasks).
Prints each seed's two reports with their paired difference, then the accuracy over seeds: a faster training
path must not cost accuracy.
"""

from __future__ import annotations

import argparse
import copy
import statistics

from lightning.pytorch import Trainer, seed_everything

from benchmarks.common import data_arguments, hardware, medmnist, spread
from benchmarks.throughput import arguments as throughput_arguments
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


def parity(seed: int, settings: argparse.Namespace, args: argparse.Namespace) -> list[Run]:
    """Trains both MAMLs from the same initial weights with ``seed`` and scores them on the same episodes."""
    seed_everything(seed, verbose=False)
    data = medmnist(
        args.root, args.synthetic, n_way=5, n_shot=5, n_query=15, meta_batch_size=4, seed=seed,
        meta_batches_per_epoch=args.meta_batches, test_episodes=args.test_episodes,
    )  # fmt: skip
    theirs = run_learn2learn(settings, data)
    network = theirs.model.model.module  # LightningMAML -> learn2learn MAML -> the network
    initial = copy.deepcopy(network.state_dict())
    theirs.fit()
    ours = run_metaclinic(settings, data)
    ours.model.learner.module.load_state_dict(initial)  # the same starting point
    ours.fit()
    return [
        Run("learn2learn LightningMAML", report_of(network.state_dict(), data)),
        Run("metaclinic MAML", report_of(ours.model.learner.module.state_dict(), data)),
    ]


def main() -> None:
    parser = data_arguments(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    parser.add_argument("--meta_batches", type=int, default=300)
    parser.add_argument("--test_episodes", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    print(f"Hardware: {hardware()}", flush=True)
    # The throughput benchmark's settings (5-way 5-shot, 15 queries, 1 inner step of 0.4, meta-batch 4).
    settings = throughput_arguments().parse_args(
        ["--algorithm=maml", "--warmup=0", f"--meta_batches={args.meta_batches}"]
    )
    accuracy: dict[str, list[float]] = {}
    differences = []
    for seed in args.seeds:
        runs = parity(seed, settings, args)
        table = markdown(paired_differences(runs), runs[0].name)
        print(f"\n## Seed {seed}, {args.meta_batches} meta-batches\n\n{table}", flush=True)
        for run in runs:
            accuracy.setdefault(run.name, []).append(100 * run.report["metrics"]["accuracy"]["mean"])
        differences.append(accuracy["metaclinic MAML"][-1] - accuracy["learn2learn LightningMAML"][-1])
    print(f"\n## Accuracy over seeds {args.seeds} (%)\n")
    for name, values in accuracy.items():
        print(f"- {name}: {spread(values)}")
    per_seed = ", ".join(f"{d:+.2f}" for d in differences)
    print(f"- metaclinic - learn2learn: mean {statistics.mean(differences):+.2f}, per seed {per_seed}")


if __name__ == "__main__":
    main()
