"""Episode sampling: tasks per second of metaclinic's sampler against learn2learn's ``TaskDataset``.

    python -m benchmarks.sampling                 # real MedMNIST ($METACLINIC_DATA_DIR/medmnist)
    python -m benchmarks.sampling --synthetic     # generated files of the same shapes

Both draw 5-way tasks of K support + Q query images from the same meta-train classes (the configs' split),
as uint8 tensors in memory, without a model. learn2learn: ``TaskDataset`` over a ``MetaDataset`` with
``NWays``, ``KShots(K + Q)``, ``LoadData``, ``RemapLabels``, ``ConsecutiveLabels`` (its documented
pipeline). metaclinic: the meta-train ``DataLoader`` of ``MedMNISTEpisodes`` (meta-batches of tasks,
collated). Each repeat times both in turn for ``--seconds`` each, so machine drift affects both alike.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import learn2learn as l2l
import torch

from benchmarks.common import data_arguments, hardware, medmnist, meta_train_tensors, spread


def tasks_per_second(draw: Callable[[], int], seconds: float) -> float:
    """Calls ``draw`` (which returns how many tasks it drew) for about ``seconds``; tasks per second."""
    draw()  # warm-up
    tasks, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        tasks += draw()
    return tasks / elapsed


def learn2learn_sampler(x: torch.Tensor, y: torch.Tensor, ways: int, per_class: int) -> Callable[[], int]:
    dataset = l2l.data.MetaDataset(torch.utils.data.TensorDataset(x, y))
    transforms = [
        l2l.data.transforms.NWays(dataset, ways),
        l2l.data.transforms.KShots(dataset, per_class),
        l2l.data.transforms.LoadData(dataset),
        l2l.data.transforms.RemapLabels(dataset),
        l2l.data.transforms.ConsecutiveLabels(dataset),
    ]
    tasks = l2l.data.TaskDataset(dataset, task_transforms=transforms, num_tasks=-1)

    def draw() -> int:
        tasks.sample()
        return 1

    return draw


def metaclinic_sampler(data, meta_batch_size: int) -> Callable[[], int]:
    loader = iter(data.train_dataloader())

    def draw() -> int:
        nonlocal loader
        try:
            next(loader)
        except StopIteration:
            loader = iter(data.train_dataloader())
            next(loader)
        return meta_batch_size

    return draw


def main() -> None:
    parser = data_arguments(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--meta_batch_size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing window of each measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)  # both samplers are single-threaded Python; the comparison is per core
    print(f"Hardware: {hardware()}\n")
    print("| K + Q | learn2learn TaskDataset (tasks/s) | metaclinic (tasks/s) | speed-up |")
    print("| --- | --- | --- | --- |")
    for shots in args.shots:
        data = medmnist(
            args.root, args.synthetic, n_way=args.ways, n_shot=shots, n_query=args.queries,
            meta_batch_size=args.meta_batch_size, meta_batches_per_epoch=10_000,
        )  # fmt: skip
        x, y = meta_train_tensors(data)
        theirs = learn2learn_sampler(x, y, args.ways, shots + args.queries)
        ours = metaclinic_sampler(data, args.meta_batch_size)
        rates: dict[str, list[float]] = {"l2l": [], "ours": [], "ratio": []}
        for _ in range(args.repeats):
            rates["l2l"].append(tasks_per_second(theirs, args.seconds))
            rates["ours"].append(tasks_per_second(ours, args.seconds))
            rates["ratio"].append(rates["ours"][-1] / rates["l2l"][-1])
        print(f"| {shots} + {args.queries} | {spread(rates['l2l'])} | {spread(rates['ours'])} | "
              f"{spread(rates['ratio'])}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
