"""Starting a meta-learner from the backbone of a finished run ("pretrain, then meta-train").

Chen, Liu, Xu, Darrell and Wang, "Meta-Baseline: Exploring Simple Meta-Learning for Few-Shot Learning",
ICCV 2021, and Hu, Li, Stühmer, Kim and Hospedales, "Pushing the Limits of Simple Pipelines for Few-Shot
Learning: External Data and Fine-Tuning Make a Difference" (P>M>F), CVPR 2022: a backbone pretrained as a
plain classifier, then meta-trained, beats meta-training from scratch.

Algorithms keep their backbone under different names (``backbone.`` for ProtoNet and SimpleShot,
``learner.module.0.`` for MAML), so the backbone is found in the checkpoint by its own parameter names: the
one prefix under which every tensor of the target backbone exists with the same shape.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from metaclinic.errors import DataError
from metaclinic.evaluation.report import REPORT_FILE
from metaclinic.experiment.storage import load_checkpoint

log = logging.getLogger(__name__)


def backbone_prefix(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: Path) -> str:
    """The prefix of ``state``'s keys under which ``target``'s tensors all are, with their shapes."""
    first = next(iter(target))
    candidates = sorted({key[: -len(first)] for key in state if key.endswith(first)}, key=len)
    fitting = [
        p
        for p in candidates
        if all(p + k in state and state[p + k].shape == v.shape for k, v in target.items())
    ]
    if len(fitting) == 1:
        return fitting[0]
    if not fitting:
        if not candidates:
            raise DataError(f"{path}: holds no backbone like this one (no tensor named like {first!r})")
        prefix = candidates[0]
        problems = [
            f"{k}: missing"
            if prefix + k not in state
            else f"{k}: {tuple(state[prefix + k].shape)} in the checkpoint, {tuple(v.shape)} here"
            for k, v in target.items()
            if prefix + k not in state or state[prefix + k].shape != v.shape
        ]
        raise DataError(
            f"{path}: its backbone ({prefix!r}) does not fit this model's: {'; '.join(problems[:5])}"
            + (f" and {len(problems) - 5} more" if len(problems) > 5 else "")
            + "; give model.init_args.backbone the settings of the run that wrote the checkpoint"
        )
    raise DataError(
        f"{path}: holds several networks that fit this backbone ({', '.join(fitting)}); ambiguous"
    )


def checkpoint_of(source: str | Path) -> Path:
    """``source`` itself if it is a file; for a run directory (or a folder of runs, e.g.
    ``runs/<run_name>``, whose newest run is taken) the checkpoint its meta-test report evaluated."""
    path = Path(source)
    if not path.is_dir():
        return path
    reports = sorted(path.glob(REPORT_FILE)) or sorted(path.glob(f"*/{REPORT_FILE}"))
    if not reports:
        raise DataError(f"model.init_args.init_from={path}: a folder with no finished run ({REPORT_FILE})")
    report = json.loads(reports[-1].read_text())
    if not report.get("checkpoint"):
        raise DataError(f"{reports[-1]}: the run evaluated no checkpoint; give init_from a checkpoint file")
    return reports[-1].parent / report["checkpoint"]


def load_backbone(backbone: nn.Module, checkpoint: str | Path) -> None:
    """Copies into ``backbone`` the weights of the backbone held by the Lightning ``checkpoint`` (a file, or
    a finished run whose evaluated checkpoint is taken)."""
    path = checkpoint_of(checkpoint)
    state = load_checkpoint(path)["state_dict"]
    target = backbone.state_dict()
    if not target:
        raise DataError(f"model.init_args.init_from={path}: this model's backbone has no weights to load")
    prefix = backbone_prefix(state, target, path)
    backbone.load_state_dict({k: state[prefix + k] for k in target})
    log.info("backbone initialised from %s (%d tensors under %r)", path, len(target), prefix)
