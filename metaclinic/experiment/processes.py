"""Which process this is before the trainer exists, and one run directory for all processes of a run.

On one node, Lightning's launcher starts the other processes itself and they inherit the run directory
through the environment (``METACLINIC_RUN_DIR``). On several nodes every node's processes are started by
a launcher of their own (``NODE_RANK`` with Lightning's launcher, SLURM's ``srun``, ``torchrun``), so a
process cannot inherit anything from global rank 0: left alone, each node would create a run directory
of its own. Here only global rank 0 creates it; every other process starts with a placeholder that is
never created, and takes rank 0's directory as soon as the processes can talk (:class:`SharedRunDirectory`,
in ``setup``, before anything is written).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lightning.fabric.plugins.environments import (
    LightningEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch import Callback, LightningModule, Trainer

# What a process other than global rank 0 calls a new run's directory until rank 0 hands it its own.
PENDING_RUN_DIR = "pending-run-directory-of-global-rank-0"

# The launchers Lightning recognises, in the order it tries them (lightning/pytorch/trainer/connectors/
# accelerator_connector.py, _choose_and_init_cluster_environment); otherwise LightningEnvironment.
LAUNCHED_BY = (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment)


def launched_as_global_zero() -> bool:
    """Whether the launcher that started this process made it global rank 0, read as Lightning reads it.

    torchrun, SLURM, LSF and MPI state the global rank; with Lightning's own launcher a process is global
    rank 0 when it is local rank 0 (``LOCAL_RANK``) of node 0 (``NODE_RANK`` or ``GROUP_RANK``). The trainer
    later computes the same rank; :func:`check_launched_rank` stops the run if the two disagree.
    """
    for environment in LAUNCHED_BY:
        if environment.detect():
            return environment().global_rank() == 0
    lightning = LightningEnvironment()
    return lightning.node_rank() == 0 and lightning.local_rank() == 0


def check_launched_rank(trainer: Trainer, launched_zero: bool) -> None:
    """Raises if the trainer's global rank 0 is not the process that :func:`launched_as_global_zero` chose.

    A disagreement (a ``cluster_environment`` plugin in the config, or a Lightning release that detects
    launchers in another order) would leave a run without a run directory, or with two.
    """
    if trainer.is_global_zero != launched_zero:
        raise RuntimeError(
            f"this process is global rank {trainer.global_rank} of {trainer.world_size} for the trainer "
            f"({type(trainer.strategy.cluster_environment).__name__}), but its launcher's environment "
            f"made it {'global rank 0' if launched_zero else 'a process other than global rank 0'}; "
            "metaclinic reads the rank as Lightning's own cluster environments do (see "
            "metaclinic/experiment/processes.py)"
        )


class SharedRunDirectory(Callback):
    """Hands global rank 0's run directory to every process when the trainer sets up.

    Broadcast in ``setup``, which every process runs after the process group exists and before any
    checkpoint, record or report is written. Rank 0 is the only process that writes into the directory.

    Args:
        run_dir: this process's run directory (a placeholder on processes other than global rank 0).
        adopt: called on every process with rank 0's directory.
    """

    def __init__(self, run_dir: Path, adopt: Callable[[Path], None]) -> None:
        self.run_dir = Path(run_dir)
        self.adopt = adopt

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        shared = Path(trainer.strategy.broadcast(str(self.run_dir), src=0))
        if shared != self.run_dir:
            self.run_dir = shared
            self.adopt(shared)
