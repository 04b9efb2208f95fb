"""What doing nothing achieves: methods that learn nothing before the episode, scored beside every model.

A meta-learner is only worth deploying if it beats these on the same episodes. They see each episode's
inputs exactly as the model does (images as pixels, tables as their encoded, standardised features), and
are cheap enough to be scored in every ``fit`` and ``evaluate`` (see ``EpisodicModule.reference_methods``).
"""

from __future__ import annotations

from torch import Tensor

from metaclinic.algorithms.base import EpisodicModule
from metaclinic.algorithms.pooling import class_means, prototype_logits
from metaclinic.baselines.logistic import SupportLogisticRegression
from metaclinic.data.task import TaskBatch


class NearestCentroid(EpisodicModule):
    """Nearest class mean of the raw inputs: the support set's class means, squared Euclidean distance.

    Prototypical Networks without a backbone (Snell, Swersky and Zemel, "Prototypical Networks for Few-shot
    Learning", NeurIPS 2017, with the identity as the embedding): the "no-learning" reference.
    """

    meta_trained = False
    is_baseline = True

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        support, query = batch.support_x.flatten(2).float(), batch.query_x.flatten(2).float()
        prototypes = class_means(support, batch.support_y, batch.n_way)
        return prototype_logits(query, prototypes)


def no_learning_baselines() -> list[EpisodicModule]:
    """The methods scored beside every model: nearest centroid and support-set logistic regression."""
    return [NearestCentroid(), SupportLogisticRegression()]
