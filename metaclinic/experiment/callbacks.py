"""Callbacks for exact resumption: seeded random draws, step checkpoints after validation, SIGTERM saves.

A run stopped at any moment (an exception, SIGTERM, SIGKILL) and resumed from its last checkpoint must end
exactly where the uninterrupted run ends. Lightning's checkpoints hold weights, optimizer and loop counters,
and the episode sampler adds its position; three gaps remain, one per class here:

- the global random generators (dropout, ...) are not in checkpoints: :class:`MetaBatchSeeding`;
- a checkpoint saved every N steps is written before the validation that may follow the step, and
  resuming from it skips that validation: :class:`ModelCheckpoint`;
- on SIGTERM Lightning stops cleanly but saves nothing: :class:`CheckpointOnSigterm`; with several
  processes its SIGTERM handling breaks the run: :class:`SigtermOnEveryProcess`.

The command line adds or substitutes all of them in every run.
"""

from __future__ import annotations

import inspect
import logging
import random
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from metaclinic.data.task import TaskBatch
from metaclinic.experiment.lightning_internals import (
    is_last_batch_of_epoch,
    last_saved_step,
    mark_sigterm_received,
    save_unmonitored_checkpoint,
    validation_follows_step,
)

log = logging.getLogger("metaclinic")


class MetaBatchSeeding(Callback):
    """Seeds torch (CPU and CUDA), NumPy and ``random`` before every training meta-batch.

    The seed of meta-batch ``g`` on rank ``r`` is derived from ``(seed, r, g)``, so dropout masks and any
    other draws are a pure function of the position in the training stream, like the episodes themselves.
    A resumed run therefore draws exactly what the uninterrupted run drew, whatever consumed random
    numbers in between: sanity checks, validation, or the seed that every new DataLoader iterator takes
    from the global generator. (Storing the generators' states in checkpoints would not be enough: a run
    resumed from a checkpoint and the uninterrupted run draw different amounts before the next step.)

    Only ``seed`` goes into checkpoints (an ``int``: they still load with ``weights_only=True``); a resumed
    run continues with the stored one.

    Args:
        seed: base seed; ``None`` draws one at random (the run is still reproducible from its checkpoints).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = random.SystemRandom().randrange(2**32) if seed is None else int(seed)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        index = batch.meta_batch_index if isinstance(batch, TaskBatch) else -1
        seed_generators(self.seed, trainer.global_rank, index if index >= 0 else trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        seed = int(state_dict["seed"])
        if seed != self.seed:
            log.info("Resuming with the checkpoint's meta-batch seed %d (this run got %d)", seed, self.seed)
        self.seed = seed


def seed_generators(*key: int) -> None:
    """Seeds torch (all devices), NumPy's global generator and ``random`` from a key of non-negative ints."""
    words = np.random.SeedSequence(list(key)).generate_state(2, dtype=np.uint32)
    torch.manual_seed(int(words[0]) << 32 | int(words[1]))  # also seeds every CUDA device
    np.random.seed(int(words[0]))
    random.seed(int(words[1]))


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, except that ``every_n_train_steps`` saves wait for the step to end,
    and also happen when training ends.

    Lightning writes a step-triggered checkpoint in ``on_train_batch_end``, before the validation and the
    end-of-epoch hooks that may follow that step. Resuming from it, Lightning 2.6 skips that validation, so
    the resumed run lacks a validation score that the uninterrupted run had and can select another best
    checkpoint. Here such a save waits until the step has ended: after its validation (mid-epoch) or in
    ``on_train_epoch_end`` (last step of an epoch), after the checkpoints listed before it. A save at a
    step with neither happens at once, as in Lightning. Checkpoints that monitor a metric are unchanged.

    Same arguments and checkpoint state as Lightning's class (whose name it keeps, so that checkpoints of
    either restore into the other); the command line uses it for every ``ModelCheckpoint`` of a config.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The constructor's argument, read as Lightning reads it (None is 0: no step-triggered saves).
        given = inspect.signature(LightningModelCheckpoint).bind(*args, **kwargs).arguments
        self._save_every_n_steps: int = given.get("every_n_train_steps") or 0
        self._save_when_step_ends = False

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        every = self._save_every_n_steps
        due = self.monitor is None and every >= 1 and trainer.global_step % every == 0
        if due and _step_continues(trainer):
            self._save_when_step_ends = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._save_when_step_ends and not is_last_batch_of_epoch(trainer):
            self._save_deferred(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._save_when_step_ends:
            self._save_deferred(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A step checkpoint also holds the final weights when training ends between two of its steps.

        The meta-test report evaluates the final weights when nothing monitors a metric (no validation
        split); without this save they would exist nowhere on disk, and ``metaclinic.adapt`` could not use
        the model the report describes.
        """
        super().on_train_end(trainer, pl_module)
        unsaved = last_saved_step(self) != trainer.global_step
        if self.monitor is None and self._save_every_n_steps >= 1 and unsaved and not trainer.interrupted:
            save_unmonitored_checkpoint(self, trainer)

    def _save_deferred(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save_when_step_ends = False
        super().on_train_batch_end(trainer, pl_module, None, None, -1)  # the save it postponed


def _step_continues(trainer: Trainer) -> bool:
    """Whether validation or the end of the epoch follows the training step that just ended."""
    return is_last_batch_of_epoch(trainer) or validation_follows_step(trainer)


class CheckpointOnSigterm(Checkpoint):
    """Saves ``path`` when Lightning stops training on SIGTERM, so ``--ckpt_path last`` resumes from there.

    On SIGTERM (a scheduler's preemption, ``kill``, ``docker stop``) Lightning finishes the current training
    step, with its validation and end of epoch if it has them, and raises ``SIGTERMException``; it saves
    nothing itself. This callback saves the state then, at the end of the step (or in
    ``on_train_epoch_end``, after the other checkpoints), where a resumed run continues exactly. A SIGTERM
    that reaches a validation first stops it midway: nothing is saved then (half a validation cannot be
    resumed), and the last periodic checkpoint is the one to resume. SIGKILL cannot be caught: the last
    periodic checkpoint is what remains.

    Args:
        path: where to write, normally ``<run dir>/checkpoints/last.ckpt``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._saved_step: int | None = None

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.received_sigterm:
            self._save(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        if self._saved_step == trainer.global_step:
            return
        if trainer.state.stage == RunningStage.TRAINING and not is_last_batch_of_epoch(trainer):
            self._save(trainer)  # raised at the end of a step, after its validation if it had one
        else:
            log.warning(
                "SIGTERM during %s: nothing saved; --ckpt_path last resumes from the latest periodic save",
                trainer.state.stage,
            )

    def _save(self, trainer: Trainer) -> None:
        trainer.save_checkpoint(self.path)
        self._saved_step = trainer.global_step
        log.warning(
            "SIGTERM: stopped after step %d and saved %s; --ckpt_path last resumes from it",
            trainer.global_step,
            self.path,
        )


class SigtermOnEveryProcess(Callback):
    """With several processes, SIGTERM to any of them stops all of them after the same training step.

    Lightning 2.6's SIGTERM handler broadcasts from inside the signal handler (Lightning #20825), wherever the
    process is at that moment: a process busy with another collective (DDP's buffer broadcast, a gradient
    all-reduce) takes that broadcast for its own, and the run fails (gloo: "Received data size doesn't match
    expected size") or hangs; a process that stops a step before the others leaves them waiting
    (Lightning #20806). During training this handler replaces Lightning's and only notes the signal; at the
    end of every training step all processes agree, with one all-reduce, whether any of them got SIGTERM,
    and if so every one marks it received. Lightning then stops them all where it stops one process (after
    that step's validation, if it has one) and :class:`CheckpointOnSigterm` saves that step.

    A single process keeps Lightning's handler. Outside training (``validate``, ``test``) Lightning's handler
    is in place again: nothing is saved then.
    """

    def __init__(self) -> None:
        self._noted = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._noted = False
        if trainer.world_size > 1 and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._note)  # Lightning restores its predecessor when fit ends

    def _note(self, signum: int, frame: Any) -> None:
        self._noted = True

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(self._noted, all=False):
            if not trainer.received_sigterm:
                log.warning("SIGTERM: every process stops after step %d", trainer.global_step)
            mark_sigterm_received(trainer)
