"""One site of a federation: its own data, local meta-training, and only weights and counts sent back.

The client is a Flower ``NumPyClient``. Asked for its properties (once, before the first round), it sends
its site name and the feature summary of :mod:`metaclinic.federated.statistics`. Asked to fit, it loads
the global weights into its copy of the model, meta-trains them on its own episodes for ``local_steps``
meta-batches with a Lightning ``Trainer`` (the algorithm's own outer-loop update: MAML's meta-gradient,
Reptile's step, ProtoNet's loss, ...), and returns the new weights, the number of tasks it trained on
(FedAvg's weight) and its mean training loss and accuracy over those tasks. This is the local update of
FedAvg applied to meta-learning: Chen et al., "Federated Meta-Learning with Fast Convergence and Efficient
Communication", arXiv 2018 (FedMeta); Fallah et al., "Personalized Federated Learning with Theoretical
Guarantees: A Model-Agnostic Meta-Learning Approach", NeurIPS 2020 (Per-FedAvg); Jiang et al., "Improving
Federated Learning Personalization via Model Agnostic Meta Learning", arXiv 2019.

The outer optimizer (the config's, e.g. Adam) starts afresh every round, as each round's local training
is a new ``Trainer``; the stream of training episodes continues across rounds, so no episode repeats. With
``local_steps: 1`` and ``torch.optim.SGD`` a round is one FedMeta step: the server's update is the
task-weighted mean of the sites' meta-gradients.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import numpy as np
from flwr.client import NumPyClient
from lightning.pytorch import Callback, LightningModule, Trainer

from metaclinic.algorithms.base import EpisodicModule
from metaclinic.data.datamodule import EpisodicDataModule
from metaclinic.data.episodes import EpisodeDataset
from metaclinic.data.preprocess import TablePreprocessor
from metaclinic.data.table_datamodule import TableEpisodes
from metaclinic.errors import DataError
from metaclinic.experiment.callbacks import MetaBatchSeeding
from metaclinic.federated.build import build_model_and_data
from metaclinic.federated.config import FederatedConfig
from metaclinic.federated.parameters import load_model_arrays, model_arrays
from metaclinic.federated.statistics import site_summary

log = logging.getLogger("metaclinic")

# Sites that share a process (the one-machine run) train one at a time: Lightning and the seeding of torch's
# global generator per meta-batch are not made for concurrent threads. Across processes it is uncontended.
TRAINING_LOCK = threading.Lock()


class RoundMetrics(Callback):
    """The mean training loss and accuracy over a round's meta-batches (aggregates, never a patient's)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.accuracies: list[float] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        metrics = trainer.callback_metrics
        if "train/loss" in metrics:
            self.losses.append(float(metrics["train/loss"]))
        if "train/accuracy" in metrics:
            self.accuracies.append(float(metrics["train/accuracy"]))


class SiteClient(NumPyClient):
    """A site of ``config``'s federation: builds its model and data from ``config.site_args(site)``."""

    def __init__(self, config: FederatedConfig, site: str) -> None:
        self.config, self.site = config, site
        self.args = config.site_args(site)
        self.site_index = config.federation.site_names.index(site)
        self.model: EpisodicModule | None = None
        self.data: EpisodicDataModule | None = None
        self.sits_out: str | None = None  # why this site cannot make a training episode, if it cannot

    # -- what the server asks ----------------------------------------------------------------------------
    def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
        """The site's name and its feature summary (tables; empty otherwise), sent once before round 1."""
        with TRAINING_LOCK:
            _, data = build_model_and_data(self.args)
            summary = {}
            if isinstance(data, TableEpisodes):
                min_count = int(config.get("min_count", self.config.federation.min_count))
                columns = data.raw_columns("meta_train")
                summary = site_summary(*columns, min_count, data.missing_indicators)
        return {"site": self.site, "summary": json.dumps(summary)}

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return [] if self.model is None else model_arrays(self.model)

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        """Meta-trains the global weights ``parameters`` on this site's episodes for ``local_steps``."""
        with TRAINING_LOCK:
            model, data = self.local_model(config)
            load_model_arrays(model, parameters)
            if self.sits_out is not None:
                log.warning(
                    "site %s sits out of round %s: %s", self.site, config.get("server_round"), self.sits_out
                )
                return parameters, 0, {"tasks": 0}
            steps = int(config["local_steps"])
            metrics = RoundMetrics()
            trainer = local_trainer(steps, self.config.federation.accelerator, self.seed, metrics)
            trainer.fit(model, datamodule=data)
            tasks = trainer.global_step * data.meta_batch_size
            summary = {
                "tasks": tasks,
                "train_loss": float(np.mean(metrics.losses)) if metrics.losses else float("nan"),
                "train_accuracy": float(np.mean(metrics.accuracies)) if metrics.accuracies else float("nan"),
            }
            return model_arrays(model), tasks, summary

    # -- set-up --------------------------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        """The per-meta-batch seed of this site's local training (dropout and other draws): one per site."""
        return self.site_index

    def local_model(self, config: dict[str, Any]) -> tuple[EpisodicModule, EpisodicDataModule]:
        """This site's model and data, built on the first round with the federation's feature encoding."""
        if self.model is None:
            encoded = config.get("preprocessor") or ""
            preprocessor = TablePreprocessor.from_state_dict(json.loads(encoded)) if encoded else None
            model, data = build_model_and_data(self.args, preprocessor)
            model.init_from = None  # the server started the global model from it; rounds must not reload it
            data.pools = (
                data.build_pools()
            )  # only its meta-train split: setup() would ask for a meta-test too
            try:
                EpisodeDataset(data.pools["meta_train"], data.n_way, data.n_shot, data.n_query, 0, 0)
            except DataError as error:  # e.g. a hospital with too few patients of a diagnosis for K + Q
                self.sits_out = str(error)
            self.model, self.data = model, data
        assert self.data is not None
        return self.model, self.data


def local_trainer(steps: int, accelerator: str, seed: int, *callbacks: Callback) -> Trainer:
    """A Trainer for one round of local meta-training: no validation, checkpoints or logger (nothing of the
    site's data is written or logged), gradients in evaluation mode left on as the CLI does (MAML)."""
    return Trainer(
        max_steps=steps,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        inference_mode=False,
        use_distributed_sampler=False,
        callbacks=[MetaBatchSeeding(seed), *callbacks],
    )
