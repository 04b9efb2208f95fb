"""Training throughput: metaclinic's algorithms against learn2learn 0.2.0's own Lightning modules.

    python -m benchmarks.throughput                           # real MedMNIST, CPU
    python -m benchmarks.throughput --synthetic --repeats 1   # a quick check on generated files
    python -m benchmarks.throughput --backbone resnet12 --accelerator gpu --precision bf16-mixed

Same Conv-4 architecture (``metaclinic.models.Conv4``, 64 filters; learn2learn's copy pools with torch's
``nn.MaxPool2d``, as a learn2learn user's network does, unless ``--learn2learn_pool=metaclinic`` gives it
metaclinic's faster CPU max-pool too, which isolates what the rest of metaclinic gains), same data (the
configs' meta-train classes of OrganAMNIST and BloodMNIST, 28x28), same ways, shots, queries, inner-loop
steps and step size, meta-batch size and Adam. ``--backbone resnet12`` gives both sides metaclinic's
ResNet-12 (64-160-320-640) instead of Conv-4. learn2learn's modules (``LightningMAML``, ``LightningANIL``,
``LightningPrototypicalNetworks``) take one task per training step, so their meta-batch is Lightning's
``accumulate_grad_batches``; their tasks come from ``TaskDataset`` through ``EpisodicBatcher``, on inputs
already converted to float (which spares them the conversion metaclinic does per meta-batch). learn2learn's
Lightning MAML is always second order; its FOMAML here sets ``first_order`` on its MAML wrapper.
learn2learn has none of LEO, MetaGAN, MANN, the LSTM meta-learner and Meta Networks: those are built from
their ``configs/<name>_medmnist.yaml`` (the config's settings, e.g. its inner-loop steps, on the benchmark's
Conv-4 and data) and measured alone.

Every measurement runs in a fresh process (``--child``), so peak memory (resident set on CPU, allocated
on GPU) is its own; a repeat measures learn2learn then metaclinic, so machine drift affects both alike.
Reported: tasks per second over the meta-batches after ``--warmup``, the ratio metaclinic / learn2learn
per repeat (median and range), the peak memory growth during training, and metaclinic's achieved FLOP/s:
the floating-point operations of one meta-batch's forward and backward passes (inner loop included, counted
by ``torch.utils.flop_counter`` on convolutions and matrix products; both implementations do the same
arithmetic) times its tasks per second, and against ``--peak_tflops`` of the hardware when given.
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import REPO, data_arguments, hardware, medmnist, meta_train_tensors, spread

# learn2learn has Lightning modules of these; the rest are built from their configs and measured alone.
COMPARED = ["maml", "fomaml", "anil", "protonet"]
# Built from configs/<name>_medmnist.yaml (their own settings, the benchmark's backbone width and data).
FROM_CONFIG = ["lstm_meta_learner", "metanet", "leo", "metagan", "mann"]
ALGORITHMS = COMPARED + FROM_CONFIG


def timer_callback(base: type) -> Any:
    """A callback (of Lightning's or pytorch_lightning's kind) that stamps the start of every batch."""

    class Timer(base):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_train_batch_start(self, *args: Any) -> None:
            self.stamps.append(time.perf_counter())

        def on_train_end(self, *args: Any) -> None:
            self.stamps.append(time.perf_counter())

    return Timer()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trainer_settings(args: argparse.Namespace, steps: int) -> dict[str, Any]:
    return dict(
        max_steps=steps, accelerator=args.accelerator, devices=1, precision=args.precision, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip


@dataclass
class Built:
    """A model, its trainer and its data, ready to ``fit``; ``timer`` stamps every training batch."""

    model: Any
    trainer: Any
    datamodule: Any
    timer: Any

    def fit(self) -> None:
        self.trainer.fit(self.model, datamodule=self.datamodule)


def run_metaclinic(args: argparse.Namespace, data) -> Built:
    from lightning.pytorch import Callback, Trainer

    from metaclinic.algorithms import ANIL, MAML, ProtoNet

    backbone = compiled(make_backbone(args, data.example_shape, args.channels_last), args)
    inner = dict(n_way=args.ways, inner_lr=args.inner_lr, train_steps=args.steps)
    model = {
        "maml": lambda: MAML(backbone, **inner),
        "fomaml": lambda: MAML(backbone, first_order=True, **inner),
        "anil": lambda: ANIL(backbone, **inner),
        "protonet": lambda: ProtoNet(backbone),
    }.get(args.algorithm, lambda: from_config(args.algorithm, backbone, data))()
    timer = timer_callback(Callback)
    trainer = Trainer(
        **trainer_settings(args, args.warmup + args.meta_batches), callbacks=[timer],
        inference_mode=False, use_distributed_sampler=False,
    )  # fmt: skip
    return Built(model, trainer, data, timer)


def from_config(name: str, backbone: Any, data: Any) -> Any:
    """``configs/<name>_medmnist.yaml``'s model, with the benchmark's backbone in place of the config's."""
    from metaclinic.cli import build_model_and_data

    config = REPO / "configs" / f"{name}_medmnist.yaml"
    configured, _ = build_model_and_data(config, lambda _: data.example_shape)
    accepted = inspect.signature(type(configured)).parameters
    own = {k: v for k, v in configured.hparams.items() if k in accepted and k not in ("init_from", "n_way")}
    settings = {"n_way": data.n_way} if "n_way" in accepted else {}
    return type(configured)(backbone, optimizer=configured.optimizer_factory, **own, **settings)


def run_learn2learn(args: argparse.Namespace, data) -> Built:
    import learn2learn as l2l
    import pytorch_lightning as pl
    from learn2learn.algorithms.lightning import LightningANIL, LightningMAML, LightningPrototypicalNetworks
    from learn2learn.utils.lightning import EpisodicBatcher
    from torch import nn

    x, y = meta_train_tensors(data)
    dataset = l2l.data.MetaDataset(torch.utils.data.TensorDataset(data.prepare_inputs(x), y))
    per_class = args.shots + args.queries
    transforms = [
        l2l.data.transforms.NWays(dataset, args.ways),
        l2l.data.transforms.KShots(dataset, per_class),
        l2l.data.transforms.LoadData(dataset),
        l2l.data.transforms.RemapLabels(dataset),
        l2l.data.transforms.ConsecutiveLabels(dataset),
    ]
    tasks = l2l.data.TaskDataset(dataset, task_transforms=transforms, num_tasks=-1)
    batcher = EpisodicBatcher(tasks, epoch_length=(args.warmup + args.meta_batches) * args.meta_batch_size)
    backbone = make_backbone(args, data.example_shape)
    if args.learn2learn_pool == "torch":
        with_torch_max_pool(backbone)
    compiled(backbone, args)
    episode = dict(
        train_ways=args.ways, train_shots=args.shots, train_queries=args.queries, test_ways=args.ways,
        test_shots=args.shots, test_queries=args.queries, lr=0.001,
    )  # fmt: skip
    inner = dict(adaptation_steps=args.steps, adaptation_lr=args.inner_lr)
    if args.algorithm in ("maml", "fomaml"):
        model = LightningMAML(nn.Sequential(backbone, nn.Linear(backbone.out_features, args.ways)),
                              **episode, **inner)  # fmt: skip
        model.model.first_order = args.algorithm == "fomaml"
    elif args.algorithm == "anil":
        model = LightningANIL(backbone, nn.Linear(backbone.out_features, args.ways), **episode, **inner)
    else:
        model = LightningPrototypicalNetworks(backbone, **episode)
    timer = timer_callback(pl.Callback)
    trainer = pl.Trainer(
        **trainer_settings(args, args.warmup + args.meta_batches), callbacks=[timer],
        accumulate_grad_batches=args.meta_batch_size, inference_mode=False,
    )  # fmt: skip
    return Built(model, trainer, batcher, timer)


BACKBONES = ("conv4", "resnet12")


def make_backbone(args: argparse.Namespace, input_shape: tuple[int, ...], channels_last: bool = False) -> Any:
    """The benchmark's backbone: Conv-4 of ``--hidden`` filters, or ResNet-12 (its default widths)."""
    from metaclinic.models import Conv4, ResNet12

    if args.backbone == "resnet12":
        return ResNet12(input_shape)
    return Conv4(input_shape, hidden=args.hidden, channels_last=channels_last)


COMPILABLE = ("anil", "protonet")


def compiled(backbone: Any, args: argparse.Namespace) -> Any:
    """``backbone``, compiled in place with ``torch.compile`` under ``--compile`` (ANIL and ProtoNet only).

    MAML differentiates twice through the backbone, which ``torch.compile`` does not support (pytorch
    #91469, #183603: it raises on double backward), and its inner loop rebuilds the network's parameters for
    every task (recompiling each time); ANIL's double backward goes through the linear head only.
    """
    if args.compile:
        if args.algorithm not in COMPILABLE:
            raise SystemExit(f"--compile works for {', '.join(COMPILABLE)}, not {args.algorithm}")
        backbone.compile()
    return backbone


def with_torch_max_pool(network: Any) -> Any:
    """``network`` with every metaclinic ``MaxPool2d`` replaced by torch's (same outputs, no parameters)."""
    from torch import nn

    from metaclinic.models.max_pool import MaxPool2d

    for module in list(network.modules()):
        for child_name, child_module in list(module.named_children()):
            if isinstance(child_module, MaxPool2d):
                stock = nn.MaxPool2d(child_module.kernel_size, child_module.stride, child_module.padding,
                                     child_module.dilation, ceil_mode=child_module.ceil_mode)  # fmt: skip
                setattr(module, child_name, stock)
    return network


def flops_per_task(built: Built, data: Any, meta_batch_size: int) -> float:
    """Floating-point operations of one metaclinic training meta-batch, forward and backward, per task."""
    from torch.utils.flop_counter import FlopCounterMode

    model = built.model
    raw = next(iter(data.train_dataloader()))
    batch = data.on_after_batch_transfer(model.transfer_batch_to_device(raw, model.device, 0), 0)
    model.train()
    with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
        loss, _ = model.training_loss(batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / meta_batch_size


def child(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    data = medmnist(
        args.root, args.synthetic, n_way=args.ways, n_shot=args.shots, n_query=args.queries,
        meta_batch_size=args.meta_batch_size, meta_batches_per_epoch=args.warmup + args.meta_batches,
    )  # fmt: skip
    build = run_learn2learn if args.implementation == "learn2learn" else run_metaclinic
    built = build(args, data)
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = peak_memory_mb(device) if device.type == "cuda" else _resident_mb()
    built.fit()
    # A batch is a meta-batch for metaclinic and one task for learn2learn (accumulated into meta-batches).
    tasks_per_batch = args.meta_batch_size if args.implementation == "metaclinic" else 1
    skip = args.warmup * args.meta_batch_size // tasks_per_batch
    stamps = built.timer.stamps
    tasks = (len(stamps) - 1 - skip) * tasks_per_batch
    result = {
        "tasks_per_second": tasks / (stamps[-1] - stamps[skip]),
        "peak_memory_growth_mb": peak_memory_mb(device) - before,
        "tasks_timed": tasks,
    }
    if args.implementation == "metaclinic":
        result["flops_per_task"] = flops_per_task(built, data, args.meta_batch_size)
    return result


def _resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def measure(args: argparse.Namespace, algorithm: str, implementation: str) -> dict[str, Any]:
    own = ("algorithms", "algorithm", "implementation")
    settings = {k: v for k, v in vars(args).items() if k not in own and v not in (None, False)}
    forwarded = [f"--{k}" if v is True else f"--{k}={v}" for k, v in settings.items()]
    command = [sys.executable, "-m", "benchmarks.throughput", *forwarded, "--child",
               f"--algorithm={algorithm}", f"--implementation={implementation}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"{implementation} {algorithm} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def arguments() -> argparse.ArgumentParser:
    """The benchmark's options (``benchmarks.accuracy_parity`` trains with them too)."""
    parser = data_arguments(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    parser.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=ALGORITHMS)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--steps", type=int, default=1, help="inner-loop steps (the configs' train_steps)")
    parser.add_argument("--inner_lr", type=float, default=0.4)
    parser.add_argument("--backbone", default="conv4", choices=BACKBONES, help="both sides' backbone")
    parser.add_argument("--hidden", type=int, default=64, help="Conv-4's filters")
    parser.add_argument("--meta_batch_size", type=int, default=4)
    parser.add_argument("--meta_batches", type=int, default=20, help="timed meta-batches per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="meta-batches before timing starts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--learn2learn_pool", default="torch", choices=["torch", "metaclinic"],
                        help="learn2learn's Conv-4 pool: torch's nn.MaxPool2d or metaclinic's")  # fmt: skip
    parser.add_argument("--channels_last", action="store_true", help="metaclinic's Conv-4 in channels-last")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone (ANIL, ProtoNet)")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="the hardware's peak TFLOP/s at this precision")  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--algorithm", default="maml", help=argparse.SUPPRESS)
    parser.add_argument("--implementation", default="metaclinic", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = arguments().parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    print(f"Hardware: {hardware()}; {args.ways}-way {args.shots}-shot, {args.queries} queries, "
          f"{args.steps} inner step(s), meta-batch {args.meta_batch_size}, backbone {args.backbone}, "
          f"precision {args.precision}, learn2learn's max-pool: {args.learn2learn_pool}"
          f"{', backbones compiled' if args.compile else ''}"
          f"{', metaclinic channels-last' if args.channels_last else ''}\n")  # fmt: skip
    print("| algorithm | learn2learn Lightning (tasks/s) | metaclinic (tasks/s) | speed-up | "
          "peak memory growth, l2l / metaclinic (MB) | GFLOP per task | metaclinic GFLOP/s |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for algorithm in args.algorithms:
        rates: dict[str, list[float]] = {"learn2learn": [], "metaclinic": [], "ratio": []}
        flops = 0.0
        memory: dict[str, list[float]] = {"learn2learn": [], "metaclinic": []}
        implementations = ("learn2learn", "metaclinic") if algorithm in COMPARED else ("metaclinic",)
        for _ in range(args.repeats):
            for implementation in implementations:
                result = measure(args, algorithm, implementation)
                rates[implementation].append(result["tasks_per_second"])
                memory[implementation].append(result["peak_memory_growth_mb"])
                flops = result.get("flops_per_task", flops)
            if algorithm in COMPARED:
                rates["ratio"].append(rates["metaclinic"][-1] / rates["learn2learn"][-1])
        theirs = f"{max(memory['learn2learn']):.0f}" if memory["learn2learn"] else "—"
        peaks = f"{theirs} / {max(memory['metaclinic']):.0f}"
        achieved = flops * statistics.median(rates["metaclinic"]) / 1e9
        if args.peak_tflops:
            achieved_text = f"{achieved:.1f} ({achieved / (10 * args.peak_tflops):.2f}% of peak)"
        else:
            achieved_text = f"{achieved:.1f}"
        l2l_rate, ratio = (spread(rates[k]) if rates[k] else "— (none)" for k in ("learn2learn", "ratio"))
        print(f"| {algorithm} | {l2l_rate} | {spread(rates['metaclinic'])} | "
              f"{ratio}{'x' if rates['ratio'] else ''} | {peaks} | {flops / 1e9:.2f} | {achieved_text} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
