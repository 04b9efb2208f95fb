"""Baselines scored on the same episodes as the meta-learners, selectable by ``class_path`` like them."""

from metaclinic.baselines.logistic import (
    PooledLogisticRegression,
    RecalibratedLogisticRegression,
    RefitLogisticRegression,
    SupportLogisticRegression,
)
from metaclinic.baselines.no_learning import NearestCentroid
from metaclinic.baselines.supervised import Baseline, BaselinePlusPlus, SimpleShot, SupervisedPretraining

__all__ = [
    "Baseline",
    "BaselinePlusPlus",
    "NearestCentroid",
    "PooledLogisticRegression",
    "RecalibratedLogisticRegression",
    "RefitLogisticRegression",
    "SimpleShot",
    "SupervisedPretraining",
    "SupportLogisticRegression",
]
