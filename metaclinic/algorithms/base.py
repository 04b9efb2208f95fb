"""The episodic LightningModule every meta-algorithm builds on."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torchmetrics import CatMetric, MeanMetric
from torchmetrics.functional.classification import multiclass_accuracy

from metaclinic.data.task import Task, TaskBatch
from metaclinic.report import Estimate, MetaTestReport


class EpisodicModule(LightningModule):
    """Owns what all meta-algorithms share; a subclass only says how it adapts and scores.

    A training step takes a meta-batch of tasks, scores every task's query set after adapting to its support
    set (``adapt_and_score``, or ``score_tasks`` for algorithms that batch over tasks), and returns the mean
    query loss for the outer update. Validation and test do the same without the outer update; test keeps
    every episode's accuracy for the meta-test report (mean with a 95% confidence interval).

    Logged: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/acc``, ``test/acc_ci95``.

    Args:
        optimizer: builds the outer-loop (meta) optimizer from the parameters.
        scheduler: optionally builds a learning-rate scheduler, stepped every meta-batch.
    """

    def __init__(
        self, optimizer: OptimizerCallable = torch.optim.Adam, scheduler: LRSchedulerCallable | None = None
    ):
        super().__init__()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.val_loss, self.val_acc = MeanMetric(), MeanMetric()
        self.test_episode_acc = CatMetric()
        self.test_report: MetaTestReport | None = None

    # -- what an algorithm provides --------------------------------------------------------------------------
    def adapt_and_score(self, task: Task) -> Tensor:
        """Adapts to ``task``'s support set and returns query logits ``(n_way * n_query, n_way)``.

        Gradients are enabled in training; in evaluation they are off, and an algorithm that needs them for
        its inner loop turns them on only there (``torch.enable_grad``), so no second-order graph is built.
        """
        raise NotImplementedError

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        """Query logits of every task, ``(tasks, n_way * n_query, n_way)``. Override to batch over tasks."""
        return torch.stack([self.adapt_and_score(task) for task in batch])

    def check_episode(self, batch: TaskBatch) -> None:
        """Raises if the algorithm cannot handle these episodes (e.g. a fixed head of another width)."""

    # -- the shared meta-batch step --------------------------------------------------------------------------
    def _step(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """Returns the mean query loss and the accuracy of every episode."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} needs autograd during evaluation (inner-loop adaptation), "
                "but the Trainer "
                "runs evaluation in inference mode. Create it with Trainer(inference_mode=False)."
            )
        self.check_episode(batch)
        logits = self.score_tasks(batch)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        accuracy = multiclass_accuracy(
            logits.argmax(-1),
            batch.query_y,
            num_classes=batch.n_way,
            average="micro",
            multidim_average="samplewise",
        )
        return loss, accuracy

    def training_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        loss, accuracy = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log("train/acc", accuracy.mean(), prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: TaskBatch, batch_idx: int) -> None:
        loss, accuracy = self._step(batch)
        self.val_loss.update(loss, weight=len(batch))
        self.val_acc.update(accuracy)
        self.log("val/loss", self.val_loss, prog_bar=False)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: TaskBatch, batch_idx: int) -> None:
        _, accuracy = self._step(batch)
        self.test_episode_acc.update(accuracy)

    def on_test_epoch_end(self) -> None:
        accuracy = Estimate.of(self.test_episode_acc.compute())
        self.test_episode_acc.reset()
        self.log_dict({"test/acc": accuracy.mean, "test/acc_ci95": accuracy.ci95})
        data = self.trainer.datamodule if self._trainer is not None else None
        self.test_report = MetaTestReport(
            algorithm=type(self).__name__,
            n_way=getattr(data, "n_way", -1),
            n_shot=getattr(data, "n_shot", -1),
            n_query=getattr(data, "n_query", -1),
            episodes=accuracy.n,
            metrics={"accuracy": accuracy},
        )

    # -- optimisation ----------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
