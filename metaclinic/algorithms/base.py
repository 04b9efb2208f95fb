"""The episodic LightningModule every meta-algorithm builds on."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import CatMetric, MeanMetric

from metaclinic.algorithms.adapted import SupportSetClassifier
from metaclinic.algorithms.initialisation import load_backbone
from metaclinic.data.task import Task, TaskBatch
from metaclinic.errors import DataError
from metaclinic.evaluation.metrics import episode_accuracy
from metaclinic.evaluation.recorder import MetaTestRecorder
from metaclinic.evaluation.report import MetaTestReport
from metaclinic.experiment.lightning_internals import attached_trainer
from metaclinic.models.normalization import embed_jointly, normalises_per_episode, uses_batch_statistics


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on ``device`` (nothing to do where autocast does not exist)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class EpisodicModule(LightningModule):
    """Owns what all meta-algorithms share; a subclass only says how it adapts and scores.

    A training step takes a meta-batch of tasks, scores every task's query set after adapting to its support
    set (``adapt``, or ``score_tasks`` for algorithms that batch over tasks), and returns the mean
    query loss for the outer update. Validation and test do the same without the outer update; test keeps
    every episode's metrics (:mod:`metaclinic.evaluation.metrics`) for the meta-test report (mean with a 95%
    confidence interval, per episode, per domain).

    Logged: ``train/loss``, ``train/accuracy``, ``val/loss``, ``val/accuracy``, and ``test/<metric>`` with
    ``test/<metric>_ci95`` for every metric of the report (``test/accuracy``, ``test/accuracy_ci95``, ...).

    Args:
        optimizer: builds the outer-loop (meta) optimizer from the parameters.
        scheduler: optionally builds a learning-rate scheduler, stepped every meta-batch.
        init_from: a checkpoint of a finished run (any algorithm with a backbone of the same shape, e.g. a
            SimpleShot run), or the run's directory (``runs/<name>``: its newest run's evaluated checkpoint):
            meta-training starts from its backbone weights ("pretrain, then meta-train", as
            Meta-Baseline and P>M>F do). Read with ``weights_only=True``; resuming a run ignores it (the
            resumed checkpoint has the weights).
    """

    backward_per_task = False  # True where every task builds its own graph: see training_loss
    fixed_ways = False  # True where the model has an output of width self.n_way (check_episode checks it)
    meta_trained = True  # False for baselines that have nothing to meta-train (fit goes straight to test)
    is_baseline = False  # True for the reference methods that reports show beside every meta-learner
    # Methods scored on the same meta-test episodes in the same run (the no-learning baselines), set by the
    # commands; a plain list, so they are not part of this module's weights.
    reference_methods: Sequence[EpisodicModule] = ()

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        init_from: str | None = None,
    ):
        super().__init__()
        self.init_from = init_from
        # Records the constructor arguments of the subclass too (Lightning walks the __init__ frames).
        # Modules and factories are left out so checkpoints hold no pickled objects; the CLI stores their
        # config instead, and code that loads a checkpoint by hand passes the backbone again.
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.val_loss, self.val_acc = MeanMetric(), MeanMetric()
        # Every meta-test episode's metrics, turned into the report at the end (gathered across processes).
        self.test_recorder = MetaTestRecorder()
        self.test_report: MetaTestReport | None = None
        # Probabilities are softmax(logits / temperature); the temperature is fitted on meta-validation
        # episodes after training (metaclinic.evaluation.calibration) and saved with the weights.
        self.register_buffer("calibration_temperature", torch.ones(()))
        self.calibration_queries = False  # validation keeps its query logits while True (for calibration)
        self.calibration_logits, self.calibration_labels = CatMetric(), CatMetric()

    # -- what an algorithm provides: adapt, or score_tasks ---------------------------------------------------
    def adapt(self, task: Task) -> nn.Module:
        """This model adapted to ``task``'s support set: a module from query inputs to class logits.

        The one scoring path (easyfsl's ``process_support_set`` then ``forward``): evaluation, ``metaclinic
        .adapt`` and its export all score with what this returns (:mod:`metaclinic.algorithms.adapted`).
        An algorithm that adapts weights (MAML, ANIL, Baseline) overrides it and keeps the default
        ``score_tasks``; one that compares queries with the support set (and batches over tasks) overrides
        ``score_tasks`` and keeps this default, an adapted model that scores through ``score_tasks``. Only
        transductive batch norm looks at ``task.query_x`` (the query set it normalises with). Gradients are
        enabled in training; in evaluation they are off, and an algorithm that needs them for its inner loop
        turns them on only there (``torch.enable_grad``), so no second-order graph is built.
        """
        if type(self).score_tasks is EpisodicModule.score_tasks:
            raise NotImplementedError(f"{type(self).__name__} overrides neither adapt nor score_tasks")
        return SupportSetClassifier(self, task)

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        """Query scores of every task, by default logits ``(tasks, n_way * n_query, n_way)``.

        By default every task's adapted model (``adapt``) scores its query set. Override to batch over
        tasks; scores of another shape need ``query_loss`` and ``class_logits`` too.
        """
        if type(self).adapt is EpisodicModule.adapt:
            raise NotImplementedError(f"{type(self).__name__} overrides neither adapt nor score_tasks")
        return torch.stack([self.adapt(task)(task.query_x) for task in batch])

    def query_loss(self, scores: Tensor, batch: TaskBatch) -> Tensor:
        """The loss the outer loop minimises: cross-entropy of the query logits, averaged over the batch."""
        return F.cross_entropy(scores.flatten(0, 1), batch.query_y.flatten())

    def class_logits(self, scores: Tensor, batch: TaskBatch) -> Tensor:
        """Per-class query scores ``(tasks, n_way * n_query, n_way)`` whose argmax is the prediction."""
        return scores

    def embed_episodes(self, backbone: nn.Module, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """Support and query embeddings ``(tasks, n_support, d)``, ``(tasks, n_way * n_query, d)``.

        One backbone call for the whole meta-batch; except that a backbone whose normalisation takes the
        moments of an episode (its support set's, or in transductive batch norm its whole batch's) embeds each
        episode on its own, in training as in evaluation, so that an episode is normalised with its own
        statistics whatever else is in its meta-batch or its process (the same meta-batch split over several
        GPUs gives the same result as on one).
        """
        if normalises_per_episode(backbone):
            pairs = [
                embed_jointly(backbone, batch.support_x[i : i + 1], batch.query_x[i : i + 1])
                for i in range(len(batch))
            ]
            return torch.cat([s for s, _ in pairs]), torch.cat([q for _, q in pairs])
        return embed_jointly(backbone, batch.support_x, batch.query_x)

    @property
    def transductive(self) -> bool:
        """Whether a query's scores depend on the other queries of its episode (batch-statistics batch norm).

        The meta-test report says so: such an evaluation shares statistics across queries, which a clinic
        scoring one patient at a time never has.
        """
        return uses_batch_statistics(self)

    def check_episode(self, batch: TaskBatch) -> None:
        """Raises if the algorithm cannot handle these episodes: by default, with ``fixed_ways``, episodes of
        another width than the model's ``n_way`` outputs."""
        if self.fixed_ways and batch.n_way != self.n_way:
            raise DataError(
                f"{type(self).__name__} was built with a {self.n_way}-way head but the episodes are "
                f"{batch.n_way}-way; set model.init_args.n_way to data.init_args.n_way"
            )

    def require_autograd(self) -> None:
        """Raises where an algorithm that differentiates in evaluation (an inner loop, gradients as inputs)
        runs under the Trainer's default inference mode, in which no gradient can be taken."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} needs autograd during evaluation, but the Trainer runs evaluation in "
                "inference mode. Create it with Trainer(inference_mode=False)."
            )

    # -- the shared meta-batch step --------------------------------------------------------------------------
    def checked_scores(self, batch: TaskBatch) -> Tensor:
        """``score_tasks`` of a meta-batch whose episodes were checked to fit this model."""
        self.check_episode(batch)
        return self.score_tasks(batch)

    def training_scores(self, batch: TaskBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """A training meta-batch's scores and the weighted terms the meta-loss adds to the query loss, by name
        (none by default; LEO's penalties, MetaGAN's adversarial game). Logged as ``train/<name>``."""
        return self.checked_scores(batch), {}

    def _step(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """The meta-loss of ``batch`` (its query loss and extra terms) and the accuracy of every episode."""
        scores, extra_terms = self.training_scores(batch)
        loss, accuracy = self.query_metrics(scores, batch)
        if not extra_terms:
            return loss, accuracy
        trainer = attached_trainer(self)
        if trainer is not None and trainer.training:  # logged in the training loop, not when called by hand
            self.log_dict({f"train/{k}": v.detach() for k, v in extra_terms.items()}, batch_size=len(batch))
        return loss + sum(extra_terms.values()), accuracy

    def query_metrics(self, scores: Tensor, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """The query loss and every episode's accuracy, from the scores of ``score_tasks``."""
        logits = self.class_logits(scores, batch)
        return self.query_loss(scores, batch), episode_accuracy(logits, batch.query_y)

    def training_loss(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """The meta-loss the outer update differentiates, and every episode's accuracy.

        By default one graph holds the whole meta-batch. Where every task builds a graph of its own and the
        meta-loss is the mean of the tasks' losses, ``backward_per_task`` differentiates each task's loss as
        soon as it is scored, so one task's graph is alive at a time. For MAML that graph holds every inner
        step's activations: peak memory becomes one task's, whatever the meta-batch size (as in learn2learn's
        Lightning modules, which take one task per step).

        The loss returned then has the value of the mean loss and, by construction (``mean + s - s.detach()``,
        ``s`` the sum of ``parameter * meta-gradient``), exactly the accumulated meta-gradient, so Lightning's
        backward, DDP's gradient averaging, clipping and accumulation work on it unchanged. Each task's loss
        is scaled as Lightning's loss scaler (``16-mixed``) scales the returned one, so fp16 gradients do not
        underflow and an overflow still reaches the scaler as ``inf``. Each backward pass runs with autocast
        off, as Lightning's does: under autocast the second-order terms of the (fp32) inner loop would be
        computed in half precision, and overflowed to NaN at fp16's loss scale. What a task contributes is
        ``task_meta_gradient`` (Reptile: its own update direction instead of a gradient).
        """
        if not self.backward_per_task:
            return self._step(batch)
        params = [p for p in self.parameters() if p.requires_grad]
        meta_grads = [torch.zeros_like(p) for p in params]
        scale = self.loss_scale()
        losses, accuracies = [], []
        for i in range(len(batch)):
            loss, accuracy, grads = self.task_meta_gradient(batch[i : i + 1], params, scale / len(batch))
            for total, grad in zip(meta_grads, grads, strict=True):
                if grad is not None:
                    total.add_(grad)
            losses.append(loss.detach())
            accuracies.append(accuracy)
        through_params = sum((p * (g / scale)).sum() for p, g in zip(params, meta_grads, strict=True))
        return torch.stack(losses).mean() + through_params - through_params.detach(), torch.cat(accuracies)

    def task_meta_gradient(
        self, task: TaskBatch, params: list[nn.Parameter], weight: float
    ) -> tuple[Tensor, Tensor, Sequence[Tensor | None]]:
        """One task's query loss and accuracy, and its share of the meta-gradient: the gradient of ``weight``
        times its loss with respect to ``params`` (``None`` for a parameter it does not use).

        Reptile overrides it with its own direction, ``weight * (theta - phi)``; the accumulation and the
        surrogate loss above are the same for every algorithm.
        """
        loss, accuracy = self._step(task)
        with full_precision(loss.device):  # a backward pass, as Lightning's, outside autocast
            grads = torch.autograd.grad(loss * weight, params, allow_unused=True)
        return loss, accuracy, grads

    def loss_scale(self) -> float:
        """The factor Lightning's precision plugin multiplies the loss by before backward (1 without one)."""
        trainer = attached_trainer(self)
        scaler = getattr(trainer.precision_plugin, "scaler", None) if trainer is not None else None
        return scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0

    def training_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        loss, accuracy = self.training_loss(batch)
        self.log_training(loss.detach(), accuracy)
        return loss

    def log_training(self, loss: Tensor, accuracy: Tensor) -> None:
        self.log("train/loss", loss, prog_bar=True, batch_size=len(accuracy))
        self.log("train/accuracy", accuracy.mean(), prog_bar=True, batch_size=len(accuracy))

    def validation_step(self, batch: TaskBatch, batch_idx: int) -> None:
        scores = self.checked_scores(batch)
        loss, accuracy = self.query_metrics(scores, batch)
        if self.calibration_queries:
            self.calibration_logits.update(self.class_logits(scores, batch).detach().float().flatten(0, 1))
            self.calibration_labels.update(batch.query_y.flatten())
        self.val_loss.update(loss, weight=len(batch))
        self.val_acc.update(accuracy)
        self.log("val/loss", self.val_loss, prog_bar=False)
        self.log("val/accuracy", self.val_acc, prog_bar=True)

    def collected_validation_queries(self) -> tuple[Tensor, Tensor]:
        """The query logits ``(queries, n_way)`` and labels kept by validation, gathered across processes."""
        logits, labels = self.calibration_logits.compute(), self.calibration_labels.compute()
        self.calibration_logits.reset()
        self.calibration_labels.reset()
        return logits, labels

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # Checkpoints written before calibration existed have no temperature: they are uncalibrated (1).
        state_dict.setdefault(prefix + "calibration_temperature", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def test_step(self, batch: TaskBatch, batch_idx: int) -> None:
        for method in (self, *self.reference_methods):
            logits = method.class_logits(method.checked_scores(batch), batch)
            method.test_recorder.record(logits, batch, method.calibration_temperature)

    def on_test_start(self) -> None:
        for method in self.reference_methods:
            method.to(self.device).eval()

    def on_test_epoch_end(self) -> None:
        domains = getattr(self.trainer.datamodule, "domain_names", lambda split: None)("meta_test")
        self.test_report = self.summarise_test_episodes(domains)
        self.test_report.references = {
            type(m).__name__: m.summarise_test_episodes(domains) for m in self.reference_methods
        }
        logged = {"test/transductive": float(self.transductive)}
        for name, estimate in self.test_report.metrics.items():
            logged.update({f"test/{name}": estimate.mean, f"test/{name}_ci95": estimate.ci95})
        self.log_dict(logged)

    def summarise_test_episodes(self, domain_names: list[str] | None) -> MetaTestReport:
        """The meta-test report of the episodes recorded since the last one (gathered across processes)."""
        temperature = float(self.calibration_temperature)
        return self.test_recorder.report(type(self).__name__, domain_names, temperature)

    # -- set-up ----------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # Before Lightning restores a resumed checkpoint, which then overwrites these weights.
        if stage == "fit" and self.init_from is not None:
            load_backbone(self.backbone, self.init_from)

    # -- optimisation ----------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
