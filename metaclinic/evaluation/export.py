"""A meta-trained model adapted to one labelled support set: its predictions and its exportable module.

Adaptation is the evaluation path itself: the support set and the cases to predict form one episode
(:class:`~metaclinic.data.task.Task`, query = the cases), to which the algorithm adapts with its own
:meth:`~metaclinic.algorithms.EpisodicModule.adapt` in eval mode, as meta-test evaluation does: the inner loop
for MAML-style algorithms, prototypes for ProtoNet, attention for Matching Networks, and so on. The adapted
model it returns (:mod:`metaclinic.algorithms.adapted`) maps preprocessed inputs ``(batch, *example)`` to
class logits; probabilities are their softmax divided by the model's temperature (fitted on meta-validation,
:mod:`metaclinic.evaluation.calibration`). The predictions are that module's, and ``torch.export`` saves the
same module, so that it loads without metaclinic, learn2learn or Lightning. Every case is scored from the
support set and itself alone, unless the backbone uses transductive batch norm (``norm="transductive"``): that
one normalises the query set with its own statistics, so a case's probabilities depend on the other cases
scored with it; the exported model does the same, and gives the probabilities of ``predictions.csv`` when it
is called with all the predicted cases in one batch.

Cases are read in the format the model was trained on by :mod:`metaclinic.data.cases`.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from metaclinic.algorithms.adapted import CalibratedProbabilities, frozen, one_episode
from metaclinic.algorithms.base import EpisodicModule
from metaclinic.data.task import TaskBatch
from metaclinic.errors import DataError


# -- the evaluation path -------------------------------------------------------------------------------------
def check_support(model: EpisodicModule, classes: list[str], source: str) -> None:
    """Raises unless ``model`` can adapt to a support set of ``classes``."""
    if len(classes) < 2:
        raise DataError(
            f"{source}: the support set has {len(classes)} class(es) {classes}; it needs two or more"
        )
    if model.fixed_ways and len(classes) != model.n_way:
        raise DataError(
            f"{source}: the support set has {len(classes)} classes {classes}, but {type(model).__name__} was "
            f"meta-trained with a fixed {model.n_way}-way head: give exactly {model.n_way} classes"
        )


def adapted_classifier(
    model: EpisodicModule, support_x: Tensor, support_y: Tensor, query_x: Tensor
) -> nn.Module:
    """The model adapted to the support set, frozen: a module from inputs to class probabilities.

    The algorithm's own :meth:`~metaclinic.algorithms.EpisodicModule.adapt`, called as meta-test evaluation
    calls it (eval mode, no gradients but those the algorithm's inner loop turns on itself), its logits
    divided by the model's temperature and softmaxed. ``query_x`` are the cases predicted with it: only
    transductive batch norm looks at them (it normalises them together).
    """
    episode = one_episode(support_x, support_y, query_x, int(support_y.max()) + 1)
    model.eval()
    model.check_episode(TaskBatch.of(episode))
    with torch.no_grad():
        adapted = frozen(model.adapt(episode))
    return CalibratedProbabilities(adapted, float(model.calibration_temperature)).eval()


def class_probabilities(
    model: EpisodicModule, support_x: Tensor, support_y: Tensor, query_x: Tensor
) -> Tensor:
    """Probabilities ``(queries, n_way)`` of the query cases: the adapted model's, as evaluation's."""
    classifier = adapted_classifier(model, support_x, support_y, query_x)
    with torch.no_grad():
        return classifier(query_x)


# -- the export ----------------------------------------------------------------------------------------------
def export_classifier(module: nn.Module, example: Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module`` for any batch size; ``example`` is a batch of real inputs."""
    if example.shape[0] < 2:  # a batch of one would fix the batch size at 1
        example = example.expand(2, *example.shape[1:])
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad(), warnings.catch_warnings():
        # nn.LSTM (Matching Networks' FCE) re-assigns its weight list while traced; harmless.
        warnings.filterwarnings("ignore", message=".*were assigned during export.*")
        return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
