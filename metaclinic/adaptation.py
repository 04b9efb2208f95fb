"""A meta-trained model adapted to one labelled support set: its predictions and its exportable module.

Adaptation is the evaluation path itself: the support set and the cases to predict form one episode
(:class:`~metaclinic.data.task.TaskBatch`, query = the cases), which the algorithm scores with its own
``score_tasks`` and ``class_logits`` in eval mode: the inner loop for MAML-style algorithms, prototypes
for ProtoNet, attention for Matching Networks, and so on. Probabilities are the softmax of the class logits
divided by the model's temperature (fitted on meta-validation, :mod:`metaclinic.calibration`).

The adapted model is the algorithm's :meth:`~metaclinic.algorithms.EpisodicModule.adapted_classifier`, a
plain ``nn.Module`` (:mod:`metaclinic.algorithms.adapted`) from preprocessed inputs ``(batch, *example)``
to class probabilities, which ``torch.export`` saves so that it loads without metaclinic, learn2learn or
Lightning. Every case is scored from the support set and itself alone, unless the backbone uses
transductive batch norm (``norm="transductive"``): that one normalises the query set with its own
statistics, so a case's probabilities depend on the other cases scored with it; the exported model does the
same, and gives the probabilities of ``predictions.csv`` when it is called with all the predicted cases in
one batch.

Cases are read in the format the model was trained on by :mod:`metaclinic.data.cases`.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from metaclinic.algorithms.adapted import CalibratedProbabilities, one_episode
from metaclinic.algorithms.base import EpisodicModule
from metaclinic.algorithms.inner_loop import InnerLoopModule
from metaclinic.errors import DataError


# -- the evaluation path -------------------------------------------------------------------------------------
def check_support(model: EpisodicModule, classes: list[str], source: str) -> None:
    """Raises unless ``model`` can adapt to a support set of ``classes``."""
    if len(classes) < 2:
        raise DataError(
            f"{source}: the support set has {len(classes)} class(es) {classes}; it needs two or more"
        )
    if isinstance(model, InnerLoopModule) and len(classes) != model.n_way:
        raise DataError(
            f"{source}: the support set has {len(classes)} classes {classes}, but {type(model).__name__} was "
            f"meta-trained with a fixed {model.n_way}-way head: give exactly {model.n_way} classes"
        )


def class_probabilities(
    model: EpisodicModule, support_x: Tensor, support_y: Tensor, query_x: Tensor
) -> Tensor:
    """Probabilities ``(queries, n_way)`` of the query cases after adapting to the support set.

    Exactly what meta-test evaluation computes for an episode: eval mode, no gradients but those the
    algorithm's inner loop turns on itself, ``score_tasks`` then ``class_logits``, then a softmax.
    """
    n_way = int(support_y.max()) + 1
    batch = one_episode(support_x, support_y, query_x, n_way)
    model.eval()
    model.check_episode(batch)
    with torch.no_grad():
        logits = model.class_logits(model.score_tasks(batch), batch)
    return (logits[0].float() / model.calibration_temperature).softmax(-1)


# -- adapted models ------------------------------------------------------------------------------------------
def adapted_classifier(
    model: EpisodicModule, support_x: Tensor, support_y: Tensor, query_x: Tensor
) -> nn.Module:
    """The model adapted to the support set, as a frozen module from inputs to class probabilities.

    The algorithm's own :meth:`~metaclinic.algorithms.EpisodicModule.adapted_classifier` (see
    :mod:`metaclinic.algorithms.adapted`); ``query_x`` are the cases predicted with it (ANIL and Baseline
    over a batch-statistics backbone fit their head to support embeddings normalised together with them).
    """
    model.eval()
    with torch.no_grad():
        adapted = model.adapted_classifier(support_x, support_y, query_x)
    return CalibratedProbabilities(adapted, float(model.calibration_temperature)).requires_grad_(False).eval()


def export_classifier(module: nn.Module, example: Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module`` for any batch size; ``example`` is a batch of real inputs."""
    if example.shape[0] < 2:  # a batch of one would fix the batch size at 1
        example = example.expand(2, *example.shape[1:])
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad(), warnings.catch_warnings():
        # nn.LSTM (Matching Networks' FCE) re-assigns its weight list while traced; harmless.
        warnings.filterwarnings("ignore", message=".*were assigned during export.*")
        return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
