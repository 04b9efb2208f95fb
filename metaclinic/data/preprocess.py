"""Feature preprocessing of patient tables, fitted on meta-train rows only and stored in checkpoints.

Fitting on meta-train alone keeps the held-out hospitals (or diseases) out of every statistic the model
sees: their medians, means and category lists would otherwise leak into training. The fitted state is plain
numbers and strings, so checkpoints that hold it load with ``weights_only=True``.

An evaluation-only run (no meta-train split) has no patients to fit on but the evaluated ones, whose
statistics would make one patient's prediction depend on the others. There numeric features are imputed
and standardised within each episode from its support set alone (:meth:`TablePreprocessor.for_episodes`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass
class TablePreprocessor:
    """Median imputation with missing-value indicators, standardisation and one-hot encoding.

    Numeric column ``c`` gives the feature ``c`` (imputed with the meta-train median, then standardised with
    the meta-train mean and standard deviation) and, when ``c`` has missing cells in meta-train, the 0/1
    feature ``c:missing``. Categorical column ``c`` gives one 0/1 feature ``c=v`` per value ``v`` seen in
    meta-train, plus ``c:missing``; a value never seen in meta-train encodes as all zeros. A column that is
    entirely missing in some hospital is therefore handled: it is imputed and flagged, not dropped.
    """

    numeric: list[str]
    categorical: list[str]
    medians: list[float]
    means: list[float]
    stds: list[float]
    numeric_indicators: list[str]
    categories: dict[str, list[str]]
    categorical_indicators: list[str]
    per_episode: bool = False

    @classmethod
    def fit(
        cls,
        numeric: dict[str, np.ndarray],
        categorical: dict[str, np.ndarray],
        rows: np.ndarray,
        missing_indicators: bool = True,
    ) -> TablePreprocessor:
        """Fits on ``rows`` (the meta-train rows) of float columns (NaN = missing) and text columns."""
        medians, means, stds, indicators = [], [], [], []
        for name, values in numeric.items():
            train = values[rows]
            observed = train[~np.isnan(train)]
            if observed.size == 0:
                log.warning("column %r is missing in every meta-train row: it carries no information", name)
                median = 0.0
            else:
                median = float(np.median(observed))
            imputed = np.where(np.isnan(train), median, train)
            std = float(imputed.std()) if imputed.size else 0.0
            medians.append(median)
            means.append(float(imputed.mean()) if imputed.size else 0.0)
            stds.append(std if std > 1e-12 else 1.0)
            if missing_indicators and np.isnan(train).any():
                indicators.append(name)
        categories, categorical_indicators = {}, []
        for name, values in categorical.items():
            train = values[rows]
            categories[name] = sorted({v for v in train if v is not None})
            if missing_indicators and any(v is None for v in train):
                categorical_indicators.append(name)
        return cls(
            list(numeric), list(categorical), medians, means, stds, indicators, categories,
            categorical_indicators,
        )  # fmt: skip

    @classmethod
    def for_episodes(
        cls,
        numeric: dict[str, np.ndarray],
        categorical: dict[str, np.ndarray],
        missing_indicators: bool = True,
    ) -> TablePreprocessor:
        """Encoding without fitted statistics: numeric columns stay raw (NaN where missing) until
        :meth:`standardise_episodes` imputes and standardises them with each support set's own moments.

        The one-hot and missing-indicator columns are those of the whole table: a column that is zero in a
        support set gets no weight from it, so it changes no prediction of a centroid or support-set model.
        """
        indicators = [c for c, v in numeric.items() if missing_indicators and np.isnan(v).any()]
        categories = {c: sorted({v for v in values if v is not None}) for c, values in categorical.items()}
        categorical_indicators = [
            c for c, v in categorical.items() if missing_indicators and any(x is None for x in v)
        ]
        n = len(numeric)
        return cls(
            list(numeric), list(categorical), [math.nan] * n, [0.0] * n, [1.0] * n, indicators, categories,
            categorical_indicators, per_episode=True,
        )  # fmt: skip

    def standardise_episodes(
        self, support: torch.Tensor, query: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-episode imputation and standardisation of the numeric features (the first ``len(numeric)``).

        ``support (tasks, n_support, width)``, ``query (tasks, n_query, width)``: each task's support median
        fills missing cells (0 when the support set has none), then the support mean and standard deviation
        standardise support and query alike. A query's features depend on the support set and itself only.
        """
        n = len(self.numeric)
        if n == 0:
            return support, query
        support, query = support.clone(), query.clone()
        raw = support[..., :n]
        median = torch.nan_to_num(torch.nanmedian(raw, dim=1, keepdim=True).values, nan=0.0)
        imputed_support = torch.where(torch.isnan(raw), median, raw)
        imputed_query = torch.where(torch.isnan(query[..., :n]), median, query[..., :n])
        mean = imputed_support.mean(dim=1, keepdim=True)
        std = imputed_support.std(dim=1, unbiased=False, keepdim=True)
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        support[..., :n], query[..., :n] = (imputed_support - mean) / std, (imputed_query - mean) / std
        return support, query

    @property
    def feature_names(self) -> list[str]:
        names = [*self.numeric, *(f"{c}:missing" for c in self.numeric_indicators)]
        for column in self.categorical:
            names += [f"{column}={v}" for v in self.categories[column]]
            if column in self.categorical_indicators:
                names.append(f"{column}:missing")
        return names

    @property
    def width(self) -> int:
        return len(self.feature_names)

    def transform(self, numeric: dict[str, np.ndarray], categorical: dict[str, np.ndarray]) -> np.ndarray:
        """Features ``(rows, width)`` as float32, in the order of ``feature_names``."""
        parts = []
        for name, median, mean, std in zip(self.numeric, self.medians, self.means, self.stds, strict=True):
            values = numeric[name]
            parts.append((np.where(np.isnan(values), median, values) - mean) / std)
        parts += [np.isnan(numeric[name]).astype(np.float64) for name in self.numeric_indicators]
        for name in self.categorical:
            values = categorical[name]
            parts += [np.array([v == c for v in values], dtype=np.float64) for c in self.categories[name]]
            if name in self.categorical_indicators:
                parts.append(np.array([v is None for v in values], dtype=np.float64))
        rows = len(next(iter({**numeric, **categorical}.values())))
        return np.stack(parts, axis=1).astype(np.float32) if parts else np.zeros((rows, 0), np.float32)

    def unseen_categories(self, categorical: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, int]:
        """How many of ``rows`` have a category value that meta-train never showed, per column."""
        counts = {}
        for name in self.categorical:
            known = set(self.categories[name])
            unseen = sum(1 for v in categorical[name][rows] if v is not None and v not in known)
            if unseen:
                counts[name] = unseen
        return counts

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TablePreprocessor:
        return cls(**state)
