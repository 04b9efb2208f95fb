"""What each recipe adds on the quickstart split: the ablation table of the README, with paired differences.

    python scripts/medmnist_ablation.py --runs_dir runs/ablation --out ablation.md

Every step is a ``metaclinic.fit`` of a shipped config under the README sweep's protocol (Conv-4/64, 5-way
5-shot, 15 queries per class, 300 meta-batches of 4 tasks, the best checkpoint on ``val/accuracy``, the same
600 meta-test episodes), with the step's levers added: augmentation, a pretrained backbone (``init_from`` the
best checkpoint of an earlier step), unlabelled target-domain images, or test-time fine-tuning on the
support set (``metaclinic.evaluate`` of an earlier step's checkpoint with ``support_finetuning``). A step
whose report exists is not run again (``--rerun`` forces it). The table gives every step's accuracy with
its paired difference to the raw-pixel nearest centroid (scored in every run on its own episodes) and to
the plain SimpleShot and Baseline runs, all over the same episodes.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from metaclinic.compare import Run, check_same_episodes
from metaclinic.evaluation.report import REPORT_FILE, Estimate
from metaclinic.experiment.storage import write_atomically

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = [
    "--trainer.max_steps=300",
    "--data.init_args.meta_batches_per_epoch=100",
    "--data.init_args.val_episodes=100",
    "--trainer.enable_progress_bar=false",
    "--trainer.logger=false",
]
AUGMENT = (
    '--data.init_args.augmentation={"class_path": "metaclinic.models.augmentation.ImageAugmentation", '
    '"init_args": {"vertical_flip": true}}'
)
UNLABELLED = [
    "--data.init_args.unlabelled=[bloodmnist:3-7]", "--data.init_args.unlabelled_batch_size=64",
    "--model.init_args.unlabelled_weight=1.0",
]  # fmt: skip
FINETUNE = (
    '--model.init_args.support_finetuning={"class_path": "metaclinic.algorithms.finetune.SupportFineTuning", '
    '"init_args": {"steps": 10, "lr": 0.01}}'
)
REPTILE_SCHEDULE = "--model.init_args.scheduler.init_args.total_iters=300"
# MAML++'s annealing fitted to the 300 steps: cosine to 0 at the end, first order and the multi-step loss
# over the first third.
MAMLPP_SCHEDULE = [
    "--model.init_args.scheduler.init_args.T_max=300", "--model.init_args.first_order_until_step=100",
    "--model.init_args.multi_step_loss_steps=100",
]  # fmt: skip


@dataclass
class Step:
    """One row: fit ``config`` with ``args`` (from ``init_from``'s best checkpoint), or, with ``evaluate``,
    evaluate that step's best checkpoint with ``args``."""

    name: str
    config: str = ""
    args: list[str] = field(default_factory=list)
    init_from: str | None = None
    evaluate: str | None = None
    unlabelled: bool = False  # uses unlabelled target images: its own setting


STEPS = [
    Step("SimpleShot", "simpleshot_medmnist"),
    Step("Baseline", "baseline_medmnist"),
    Step("ProtoNet", "protonet_medmnist"),
    Step("Reptile", "reptile_medmnist", [REPTILE_SCHEDULE]),
    Step("MAML", "maml_medmnist"),
    Step("FOMAML", "fomaml_medmnist"),
    Step("MAML++", "mamlpp_medmnist", MAMLPP_SCHEDULE),
    Step("Reptile + augmentation", "reptile_medmnist", [AUGMENT, REPTILE_SCHEDULE]),
    Step("SimpleShot + augmentation", "simpleshot_medmnist", [AUGMENT]),
    Step("ProtoNet + augmentation", "protonet_medmnist", [AUGMENT]),
    Step("ProtoNet + augmentation, from SimpleShot + aug.", "protonet_medmnist", [AUGMENT],
         init_from="SimpleShot + augmentation"),
    Step("Reptile + augmentation, from SimpleShot + aug.", "reptile_medmnist", [AUGMENT, REPTILE_SCHEDULE],
         init_from="SimpleShot + augmentation"),
    Step("SimpleShot + augmentation + support fine-tuning", args=[FINETUNE],
         evaluate="SimpleShot + augmentation"),
    Step("SimpleShot + aug. + unlabelled blood images", "simpleshot_medmnist", [AUGMENT, *UNLABELLED],
         unlabelled=True),
    Step("SimpleShot + aug. + unlabelled + support fine-tuning", args=[FINETUNE],
         evaluate="SimpleShot + aug. + unlabelled blood images", unlabelled=True),
    Step("Reptile + augmentation, from SimpleShot + aug. + unlabelled", "reptile_medmnist",
         [AUGMENT, REPTILE_SCHEDULE], init_from="SimpleShot + aug. + unlabelled blood images",
         unlabelled=True),
    # The remaining algorithm families under the pretrain-then-meta-train recipe (their plain runs are in
    # scripts/compare_algorithms.py's sweep).
    *(Step(f"{name} + augmentation, from SimpleShot + aug.", f"{config}_medmnist", [AUGMENT],
           init_from="SimpleShot + augmentation")
      for name, config in [("LSTM meta-learner", "lstm_meta_learner"), ("MetaNet", "metanet"), ("LEO", "leo"),
                           ("MetaGAN", "metagan"), ("MANN", "mann")]),
]  # fmt: skip


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower().replace("++", "pp")).strip("_")


def report_of(step: Step, runs_dir: Path) -> Path | None:
    found = sorted((runs_dir / slug(step.name)).glob(f"**/{REPORT_FILE}"))
    return found[-1] if found else None


def best_checkpoint(step_name: str, runs_dir: Path) -> str:
    """The checkpoint ``step_name``'s report evaluated (reports store it relative to their run)."""
    report_path = report_of(next(s for s in STEPS if s.name == step_name), runs_dir)
    return str(report_path.parent / json.loads(report_path.read_text())["checkpoint"])


def run_step(step: Step, runs_dir: Path) -> None:
    if step.evaluate:
        source = report_of(next(s for s in STEPS if s.name == step.evaluate), runs_dir)
        config = source.parent / "config.yaml"
        command = [sys.executable, "-m", "metaclinic.evaluate", "--config", str(config), "--ckpt_path",
                   best_checkpoint(step.evaluate, runs_dir), "--shots", "5", "--baselines",
                   "--out", str(runs_dir / slug(step.name)), *step.args]  # fmt: skip
    else:
        init = (
            [f"--model.init_args.init_from={best_checkpoint(step.init_from, runs_dir)}"]
            if step.init_from
            else []
        )
        config = REPO / "configs" / f"{step.config}.yaml"
        command = [sys.executable, "-m", "metaclinic.fit", "--config", str(config), *PROTOCOL, *step.args,
                   *init, f"--runs_dir={runs_dir}", f"--run_name={slug(step.name)}"]  # fmt: skip
    print(f"== {step.name}", flush=True)
    subprocess.run(command, check=True)


def cell(estimate: Estimate) -> str:
    return f"{100 * estimate.mean:.1f} ± {100 * estimate.ci95:.1f}"


def difference(run: Run, reference: Run) -> str:
    diff = Estimate.of(run.values("accuracy") - reference.values("accuracy"))
    return f"{'+' if diff.mean >= 0 else '−'}{100 * abs(diff.mean):.1f} ± {100 * diff.ci95:.1f}"


def table(runs_dir: Path) -> str:
    """The Markdown ablation table of every step that has a report."""
    done = [(s, Run.read(p)) for s in STEPS if (p := report_of(s, runs_dir)) is not None]
    check_same_episodes([run for _, run in done])
    by_name = {s.name: run for s, run in done}
    first = done[0][1].report
    centroid = Run("nearest centroid", first["references"]["NearestCentroid"])
    header = "| recipe | accuracy | Δ vs nearest centroid | Δ vs SimpleShot | Δ vs Baseline | unlabelled |"
    centroid_cell = cell(Estimate.of(centroid.values("accuracy")))
    lines = [
        header,
        "| --- | --- | --- | --- | --- | --- |",
        f"| nearest centroid, raw pixels (no learning) | {centroid_cell} | reference | | | no |",
    ]
    for step, run in done:
        versus = [
            difference(run, by_name[r]) if r in by_name and r != step.name else ""
            for r in ("SimpleShot", "Baseline")
        ]
        lines.append(
            f"| {step.name} | {cell(Estimate.of(run.values('accuracy')))} | {difference(run, centroid)} | "
            f"{versus[0]} | {versus[1]} | {'yes' if step.unlabelled else 'no'} |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs_dir", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--out", type=Path, default=None, help="also write the table (Markdown) here")
    parser.add_argument("--only_table", action="store_true", help="build the table from existing reports")
    parser.add_argument("--rerun", action="store_true", help="run steps whose report exists again")
    parser.add_argument("--steps", nargs="+", default=None, help="run only these steps (names as in STEPS)")
    args = parser.parse_args()
    unknown = set(args.steps or []) - {s.name for s in STEPS}
    if unknown:
        parser.error(f"--steps: unknown {sorted(unknown)}; the steps are {[s.name for s in STEPS]}")
    if not args.only_table:
        for step in STEPS if args.steps is None else [s for s in STEPS if s.name in args.steps]:
            if args.rerun or report_of(step, args.runs_dir) is None:
                run_step(step, args.runs_dir)
    text = table(args.runs_dir)
    print(text)
    if args.out:
        write_atomically(args.out, text)


if __name__ == "__main__":
    main()
