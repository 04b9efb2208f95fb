"""Logistic regression baselines that a clinician asks about, scored on the meta-learners' own episodes.

Both are :class:`~metaclinic.algorithms.EpisodicModule` subclasses, so they are selected in a config by
``class_path`` like any algorithm and evaluated on exactly the same fixed meta-test episodes. Neither is
meta-trained: ``metaclinic.fit`` goes straight to the meta-test report.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from metaclinic.algorithms.base import EpisodicModule
from metaclinic.data.task import TaskBatch
from metaclinic.errors import DataError


def _as_rows(x: Tensor) -> np.ndarray:
    return x.detach().flatten(1).cpu().double().numpy()


class LogisticBaseline(EpisodicModule):
    """What both logistic regressions share: scikit-learn's settings, and nothing to meta-train.

    Args:
        C: inverse regularisation strength (scikit-learn's ``C``); small support sets need regularisation.
        max_iter: iterations of the L-BFGS solver.
    """

    meta_trained = False
    is_baseline = True

    def __init__(self, C: float = 1.0, max_iter: int = 1000) -> None:
        super().__init__()
        self.C, self.max_iter = C, max_iter

    def new_classifier(self) -> LogisticRegression:
        return LogisticRegression(C=self.C, max_iter=self.max_iter)


class SupportLogisticRegression(LogisticBaseline):
    """L2-regularised logistic regression fitted on each episode's support set alone.

    What a hospital could do with its K labelled patients and no other data. Arguments: ``C`` and
    ``max_iter`` of :class:`LogisticBaseline`.
    """

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        logits = []
        for task in batch:
            classifier = self.new_classifier()
            classifier.fit(_as_rows(task.support_x), task.support_y.cpu().numpy())
            logits.append(torch.from_numpy(classifier.predict_log_proba(_as_rows(task.query_x))))
        return torch.stack(logits).to(batch.query_x.device, torch.float32)


class PooledLogisticRegression(LogisticBaseline):
    """Logistic regression trained once on every meta-train example pooled, applied without adaptation.

    With hospitals as tasks: one model of the other hospitals' patients, used as is in the new hospital.
    It ignores the support set, so it needs meta-test classes whose outcome (``ClassInfo.target``, e.g.
    "diseased") occurs in meta-train, as in ``site`` task mode. Arguments: ``C`` and ``max_iter`` of
    :class:`LogisticBaseline`.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 1000) -> None:
        super().__init__(C, max_iter)
        self.classifier: LogisticRegression | None = None
        self.targets: list[str] = []

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule
        x, y, names = data.supervised_data("meta_train")
        self.classifier = self.new_classifier()
        self.classifier.fit(_as_rows(x), y.numpy())
        self.targets = [names[i] for i in self.classifier.classes_]  # the columns of predict_log_proba

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        assert self.classifier is not None, "PooledLogisticRegression is fitted in setup()"
        pool = self.trainer.datamodule.pools["meta_test" if self.trainer.testing else "meta_val"]
        columns = []
        for classes in batch.classes.tolist():
            targets = [pool.classes[c].target for c in classes]
            unknown = [t for t in targets if t not in self.targets]
            if unknown:
                raise DataError(
                    f"PooledLogisticRegression was trained on outcomes {self.targets} and cannot score "
                    f"{unknown}; it needs evaluation classes whose outcome occurs in meta-train "
                    "(e.g. task_mode 'site')"
                )
            columns.append([self.targets.index(t) for t in targets])
        queries = _as_rows(batch.query_x.flatten(0, 1))
        log_probs = torch.from_numpy(self.classifier.predict_log_proba(queries)).view(
            len(batch), -1, len(self.targets)
        )
        # Each local class j of an episode takes the log-probability of its outcome's column.
        logits = torch.take_along_dim(log_probs, torch.tensor(columns).unsqueeze(1), dim=2)
        return logits.to(batch.query_x.device, torch.float32)
