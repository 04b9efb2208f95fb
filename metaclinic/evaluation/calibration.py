"""Temperature scaling fitted on meta-validation episodes: probabilities a clinician can read as such.

One scalar ``T`` per model divides its class logits before the softmax (Guo, Pleiss, Sun and Weinberger,
"On Calibration of Modern Neural Networks", ICML 2017). ``T`` is fitted by minimising the negative
log-likelihood of the meta-validation queries, never meta-test ones; it changes no prediction (the argmax is
the same), only the confidence. It is stored in the checkpoint (the model's ``calibration_temperature``
buffer) and so applies in evaluation, ``metaclinic.adapt`` and the exported model alike.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from metaclinic.experiment.storage import load_checkpoint, write_atomically

log = logging.getLogger("metaclinic")

TEMPERATURE_RANGE = (0.05, 100.0)  # beyond these, the fit is degenerate (all-correct or all-wrong queries)


def fit_temperature(logits: Tensor, labels: Tensor) -> tuple[float, float, float]:
    """The ``T`` minimising the NLL of ``softmax(logits / T)``, with the NLL before (T = 1) and after.

    ``logits (queries, n_way)``, ``labels (queries,)``. A one-dimensional convex problem in ``log T``,
    solved with L-BFGS in float64 and clamped to :data:`TEMPERATURE_RANGE`.
    """
    logits, labels = logits.detach().double().cpu(), labels.detach().long().cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp().clamp(*TEMPERATURE_RANGE))
    before = float(F.cross_entropy(logits, labels))
    after = float(F.cross_entropy(logits / temperature, labels))
    return temperature, before, after


def calibrate(trainer: Trainer, model: LightningModule, datamodule: Any, ckpt_path: str) -> dict[str, Any]:
    """Fits the temperature of ``ckpt_path`` on the meta-validation episodes and writes it into that file.

    Every process sees every validation query (gathered), so all fit the same ``T``. Returns what the
    meta-test report records: the temperature and the validation NLL before and after.
    """
    model.calibration_queries = True
    try:
        trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, weights_only=True)
        logits, labels = model.collected_validation_queries()
    finally:
        model.calibration_queries = False
    temperature, before, after = fit_temperature(logits, labels)
    model.calibration_temperature.fill_(temperature)
    temperature = float(model.calibration_temperature)  # as stored (float32)
    if trainer.is_global_zero:
        write_temperature(Path(ckpt_path), temperature)
    trainer.strategy.barrier()
    log.info("temperature %.3f fitted on %d meta-validation queries (NLL %.3f -> %.3f)",
             temperature, len(labels), before, after)  # fmt: skip
    return {"temperature": temperature, "val_nll_before": before, "val_nll_after": after,
            "val_queries": len(labels)}  # fmt: skip


def write_temperature(ckpt_path: Path, temperature: float) -> None:
    """Stores ``temperature`` in the checkpoint's state dict, replacing the file atomically."""
    checkpoint = load_checkpoint(ckpt_path)
    checkpoint["state_dict"]["calibration_temperature"] = torch.tensor(temperature)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    write_atomically(ckpt_path, buffer.getbuffer())
