"""Scaling: time and autograd memory of one meta-iteration against inner-loop steps, shots and meta-batch.

    python -m benchmarks.scaling --out benchmarks/results          # real MedMNIST, CPU
    python -m benchmarks.scaling --synthetic --iterations 2 --out /tmp/scaling

One meta-iteration is what a training step does (``training_loss``): score the meta-batch (adapting to every
support set), the query loss, its backward pass (through the inner loop for second-order MAML; MAML does it
task by task) and the Adam step. It is timed without Lightning, to see the algorithm's own cost. Memory is
the peak size of the tensors autograd holds for backward passes (``saved_tensors_hooks``): what grows with
inner-loop steps, shots and meta-batch size and bounds them on a GPU; on a GPU the peak allocated memory is
reported as well.
Each curve varies one setting from the base (MAML second order and ProtoNet; 5-way 5-shot, 15 queries,
1 inner step, meta-batch 4). Writes ``scaling.json`` and ``scaling.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from benchmarks.common import LiveSavedTensors, data_arguments, hardware, medmnist
from metaclinic.algorithms import MAML, ProtoNet
from metaclinic.models import Conv4

SWEEPS = {
    "inner-loop steps": ("steps", [1, 2, 3, 5, 8]),
    "shots per class": ("shots", [1, 5, 10, 20]),
    "meta-batch size": ("meta_batch_size", [1, 2, 4, 8, 16]),
}
BASE = {"steps": 1, "shots": 5, "meta_batch_size": 4}


def one_setting(
    args: argparse.Namespace, algorithm: str, steps: int, shots: int, meta_batch_size: int
) -> dict:
    data = medmnist(
        args.root, args.synthetic, n_way=5, n_shot=shots, n_query=15, meta_batch_size=meta_batch_size,
        meta_batches_per_epoch=args.iterations + 1,
    )  # fmt: skip
    device = torch.device(args.device)
    torch.manual_seed(0)
    backbone = Conv4(data.example_shape, hidden=64)
    model = (
        MAML(backbone, n_way=5, inner_lr=0.4, train_steps=steps)
        if algorithm == "MAML"
        else ProtoNet(backbone)
    )
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = []
    for batch in data.train_dataloader():
        batch = move_data_to_device(batch, device)
        batch.support_x, batch.query_x = (
            data.prepare_inputs(batch.support_x),
            data.prepare_inputs(batch.query_x),
        )
        batches.append(batch)
    times, saved = [], 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        meter = LiveSavedTensors()
        with meter.hooks():
            loss, _ = model.training_loss(batch)
            optimizer.zero_grad()
            loss.backward()
        optimizer.step()
        saved = meter.peak
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first iteration warms up
            times.append(time.perf_counter() - start)
    result = {"seconds": statistics.median(times), "saved_mb": saved / 2**20}
    if device.type == "cuda":
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(SWEEPS), figsize=(4 * len(SWEEPS), 6.2), dpi=120)
    for column, (label, (_, values)) in enumerate(SWEEPS.items()):
        for algorithm, curves in results.items():
            rows = curves[label]
            axes[0, column].plot(values, [r["seconds"] for r in rows], marker="o", label=algorithm)
            axes[1, column].plot(values, [r["saved_mb"] for r in rows], marker="o", label=algorithm)
        axes[0, column].set(title=label, ylabel="seconds per meta-iteration")
        axes[1, column].set(xlabel=label, ylabel="peak autograd saved tensors (MB)")
        for row in (0, 1):
            axes[row, column].grid(alpha=0.3)
    axes[0, 0].legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = data_arguments(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    parser.add_argument("--iterations", type=int, default=4, help="timed meta-iterations per setting")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    print(f"Hardware: {hardware()}", flush=True)
    results: dict[str, Any] = {}
    for algorithm in ("MAML", "ProtoNet"):
        results[algorithm] = {}
        for label, (key, values) in SWEEPS.items():
            if algorithm == "ProtoNet" and key == "steps":
                values = [1] * len(values)  # no inner loop: a flat line for reference
            rows = []
            for value in values:
                row = one_setting(args, algorithm, **{**BASE, key: value})
                rows.append(row)
                print(f"{algorithm} {label}={value}: {json.dumps(row)}", flush=True)
            results[algorithm][label] = rows
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps({"hardware": hardware(), **results}, indent=1) + "\n")
    plot(results, args.out / "scaling.png")
    print(f"Written: {args.out / 'scaling.json'}, {args.out / 'scaling.png'}")


if __name__ == "__main__":
    main()
