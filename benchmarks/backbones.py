"""Backbone cost: forward and backward of one few-shot episode through Conv-4 and ResNet-12.

    python -m benchmarks.backbones                       # 5-way 5-shot 10-query, 3x28x28, one CPU thread
    python -m benchmarks.backbones --threads 2 --image_size 84

One episode (``ways * (shots + queries)`` images, 75 by default) goes through ProtoNet's training loss (the
backbone's embeddings, the class prototypes, the query cross-entropy) and its backward pass; ProtoNet adds
next to nothing to the backbone's own cost, so the times compare backbones. Every backbone uses metaclinic's
default ``norm="support"``. Each measurement runs in a fresh process (``--child``) so that its peak memory
(resident set growth) is its own; it times ``--repeats`` episodes after ``--warmup``. Reported: parameters,
milliseconds per episode (median and range), episodes per second, the peak bytes autograd holds for the
backward pass (``LiveSavedTensors``) and the resident memory growth.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from benchmarks.common import REPO, LiveSavedTensors, hardware, spread
from metaclinic.algorithms import ProtoNet
from metaclinic.data.task import TaskBatch
from metaclinic.models import Conv4, ResNet12

BACKBONES = {
    "conv4": ("Conv4(hidden=64)", lambda shape: Conv4(shape, hidden=64)),
    "resnet12": ("ResNet12(64, 160, 320, 640)", lambda shape: ResNet12(shape)),
    "resnet12-narrow": (
        "ResNet12(64, 128, 256, 512)",
        lambda shape: ResNet12(shape, widths=(64, 128, 256, 512)),
    ),
}


def episode(args: argparse.Namespace) -> TaskBatch:
    """One random ``ways``-way episode of ``channels x image_size x image_size`` images."""
    shape = (args.channels, args.image_size, args.image_size)
    support_y = torch.arange(args.ways).repeat_interleave(args.shots)
    query_y = torch.arange(args.ways).repeat_interleave(args.queries)
    return TaskBatch(
        support_x=torch.randn(1, len(support_y), *shape), support_y=support_y[None],
        query_x=torch.randn(1, len(query_y), *shape), query_y=query_y[None],
        classes=torch.arange(args.ways)[None], episode_index=torch.zeros(1, dtype=torch.long),
    )  # fmt: skip


def _resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def child(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    backbone = BACKBONES[args.backbone][1]((args.channels, args.image_size, args.image_size))
    model = ProtoNet(backbone).train()
    batch = episode(args)
    before = _resident_mb()
    times, saved = [], 0
    for repeat in range(args.warmup + args.repeats):
        meter = LiveSavedTensors()
        start = time.perf_counter()
        with meter.hooks():
            loss, _ = model.training_loss(batch)
        loss.backward()
        elapsed = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        if repeat >= args.warmup:
            times.append(elapsed * 1000)
        saved = max(saved, meter.peak)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "out_features": backbone.out_features,
        "ms_per_episode": times,
        "saved_tensors_mb": saved / 2**20,
        "peak_memory_growth_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before,
    }


def measure(args: argparse.Namespace, backbone: str) -> dict[str, Any]:
    settings = {k: v for k, v in vars(args).items() if k not in ("backbones", "backbone", "child")}
    forwarded = [f"--{k}={v}" for k, v in settings.items()]
    command = [sys.executable, "-m", "benchmarks.backbones", *forwarded, "--child", f"--backbone={backbone}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"{backbone} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--image_size", type=int, default=28)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in the measurement")
    parser.add_argument("--repeats", type=int, default=5, help="timed episodes per backbone")
    parser.add_argument("--warmup", type=int, default=1, help="episodes before timing starts")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", default="conv4", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = arguments().parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    images = args.ways * (args.shots + args.queries)
    size = f"{args.channels}x{args.image_size}x{args.image_size}"
    torch.set_num_threads(args.threads)
    print(f"Hardware: {hardware()}; ProtoNet training loss + backward of one {args.ways}-way "
          f"{args.shots}-shot {args.queries}-query episode ({images} images of {size}), "
          f"{args.repeats} episodes after {args.warmup} warm-up\n")  # fmt: skip
    print("| backbone | parameters | out_features | ms per episode | episodes/s | "
          "autograd saved (MB) | peak memory growth (MB) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for backbone in args.backbones:
        result = measure(args, backbone)
        times = result["ms_per_episode"]
        print(f"| {BACKBONES[backbone][0]} | {result['parameters'] / 1e6:.2f} M | {result['out_features']} | "
              f"{spread(times)} | {1000 / statistics.median(times):.2f} | {result['saved_tensors_mb']:.0f} | "
              f"{result['peak_memory_growth_mb']:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
