"""Baselines scored on the same episodes as the meta-learners, selectable by ``class_path`` like them."""

from metaclinic.baselines.logistic import PooledLogisticRegression, SupportLogisticRegression

__all__ = ["PooledLogisticRegression", "SupportLogisticRegression"]
