"""The episodic LightningModule every meta-algorithm builds on."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import CatMetric, MeanMetric

from metaclinic.data.task import Task, TaskBatch
from metaclinic.metrics import episode_accuracy, episode_auroc
from metaclinic.report import Estimate, MetaTestReport


def uses_batch_statistics(module: nn.Module) -> bool:
    """Whether some batch norm layer of ``module`` normalises with the current batch even in eval mode."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats for m in module.modules()
    )


class EpisodicModule(LightningModule):
    """Owns what all meta-algorithms share; a subclass only says how it adapts and scores.

    A training step takes a meta-batch of tasks, scores every task's query set after adapting to its support
    set (``adapt_and_score``, or ``score_tasks`` for algorithms that batch over tasks), and returns the mean
    query loss for the outer update. Validation and test do the same without the outer update; test keeps
    every episode's accuracy for the meta-test report (mean with a 95% confidence interval).

    Logged: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/acc``, ``test/acc_ci95``,
    ``test/auroc``; the report holds accuracy and AUROC per episode as mean with 95% CI.

    Args:
        optimizer: builds the outer-loop (meta) optimizer from the parameters.
        scheduler: optionally builds a learning-rate scheduler, stepped every meta-batch.
    """

    meta_trained = True  # False for baselines that have nothing to meta-train (fit goes straight to test)

    def __init__(
        self, optimizer: OptimizerCallable = torch.optim.Adam, scheduler: LRSchedulerCallable | None = None
    ):
        super().__init__()
        # Records the constructor arguments of the subclass too (Lightning walks the __init__ frames).
        # Modules and factories are left out so checkpoints hold no pickled objects; the CLI stores their
        # config instead, and code that loads a checkpoint by hand passes the backbone again.
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.val_loss, self.val_acc = MeanMetric(), MeanMetric()
        self.test_episode_acc, self.test_episode_auroc = CatMetric(), CatMetric()
        self.test_report: MetaTestReport | None = None

    # -- what an algorithm provides --------------------------------------------------------------------------
    def adapt_and_score(self, task: Task) -> Tensor:
        """Adapts to ``task``'s support set and returns query logits ``(n_way * n_query, n_way)``.

        Gradients are enabled in training; in evaluation they are off, and an algorithm that needs them for
        its inner loop turns them on only there (``torch.enable_grad``), so no second-order graph is built.
        """
        raise NotImplementedError

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        """Query scores of every task, by default logits ``(tasks, n_way * n_query, n_way)``.

        Override to batch over tasks; scores of another shape need ``query_loss`` and ``class_logits`` too.
        """
        return torch.stack([self.adapt_and_score(task) for task in batch])

    def query_loss(self, scores: Tensor, batch: TaskBatch) -> Tensor:
        """The loss the outer loop minimises: cross-entropy of the query logits, averaged over the batch."""
        return F.cross_entropy(scores.flatten(0, 1), batch.query_y.flatten())

    def class_logits(self, scores: Tensor, batch: TaskBatch) -> Tensor:
        """Per-class query scores ``(tasks, n_way * n_query, n_way)`` whose argmax is the prediction."""
        return scores

    def embed_episodes(self, backbone: nn.Module, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """Support and query embeddings ``(tasks, n_support, d)``, ``(tasks, n_query_total, d)``.

        One backbone call for the whole meta-batch; except that a backbone whose batch norm uses batch
        statistics embeds each episode on its own, in training as in evaluation, so that an episode is
        normalised with its own statistics whatever else is in its meta-batch or its process (the same
        meta-batch split over several GPUs gives the same result as on one).
        """
        if uses_batch_statistics(backbone):
            pairs = [
                self.embed_episodes_jointly(backbone, batch.support_x[i : i + 1], batch.query_x[i : i + 1])
                for i in range(len(batch))
            ]
            return torch.cat([s for s, _ in pairs]), torch.cat([q for _, q in pairs])
        return self.embed_episodes_jointly(backbone, batch.support_x, batch.query_x)

    @staticmethod
    def embed_episodes_jointly(
        backbone: nn.Module, support_x: Tensor, query_x: Tensor
    ) -> tuple[Tensor, Tensor]:
        (tasks, n_support), n_query = support_x.shape[:2], query_x.shape[1]
        embeddings = backbone(torch.cat([support_x.flatten(0, 1), query_x.flatten(0, 1)]))
        support, query = embeddings.split([tasks * n_support, tasks * n_query])
        return support.view(tasks, n_support, -1), query.view(tasks, n_query, -1)

    def check_episode(self, batch: TaskBatch) -> None:
        """Raises if the algorithm cannot handle these episodes (e.g. a fixed head of another width)."""

    # -- the shared meta-batch step --------------------------------------------------------------------------
    def _step(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """Returns the mean query loss and the accuracy of every episode."""
        self.check_episode(batch)
        return self.query_metrics(self.score_tasks(batch), batch)

    def query_metrics(self, scores: Tensor, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """The query loss and every episode's accuracy, from the scores of ``score_tasks``."""
        logits = self.class_logits(scores, batch)
        return self.query_loss(scores, batch), episode_accuracy(logits, batch.query_y)

    def training_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        loss, accuracy = self._step(batch)
        self.log_training(loss, accuracy)
        return loss

    def log_training(self, loss: Tensor, accuracy: Tensor) -> None:
        self.log("train/loss", loss, prog_bar=True, batch_size=len(accuracy))
        self.log("train/acc", accuracy.mean(), prog_bar=True, batch_size=len(accuracy))

    def validation_step(self, batch: TaskBatch, batch_idx: int) -> None:
        loss, accuracy = self._step(batch)
        self.val_loss.update(loss, weight=len(batch))
        self.val_acc.update(accuracy)
        self.log("val/loss", self.val_loss, prog_bar=False)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: TaskBatch, batch_idx: int) -> None:
        self.check_episode(batch)
        logits = self.class_logits(self.score_tasks(batch), batch)
        self.test_episode_acc.update(episode_accuracy(logits, batch.query_y))
        self.test_episode_auroc.update(episode_auroc(logits, batch.query_y))

    def on_test_epoch_end(self) -> None:
        accuracy = Estimate.of(self.test_episode_acc.compute())
        auroc = Estimate.of(self.test_episode_auroc.compute())
        self.test_episode_acc.reset()
        self.test_episode_auroc.reset()
        self.log_dict({"test/acc": accuracy.mean, "test/acc_ci95": accuracy.ci95, "test/auroc": auroc.mean})
        data = self.trainer.datamodule
        self.test_report = MetaTestReport(
            algorithm=type(self).__name__,
            n_way=getattr(data, "n_way", -1),
            n_shot=getattr(data, "n_shot", -1),
            n_query=getattr(data, "n_query", -1),
            episodes=accuracy.n,
            metrics={"accuracy": accuracy, "auroc": auroc},
        )

    # -- optimisation ----------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
