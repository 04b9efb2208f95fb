"""Baselines scored on the same episodes as the meta-learners, selectable by ``class_path`` like them."""

from metaclinic.baselines.logistic import PooledLogisticRegression, SupportLogisticRegression
from metaclinic.baselines.supervised import Baseline, BaselinePlusPlus, SimpleShot, SupervisedPretraining

__all__ = [
    "Baseline",
    "BaselinePlusPlus",
    "PooledLogisticRegression",
    "SimpleShot",
    "SupervisedPretraining",
    "SupportLogisticRegression",
]
