"""Which columns of a patient table are model inputs, and how each is encoded, inferred and logged.

A table as users bring it has an identifier column, text columns and coded numbers side by side. Feeding
an identifier to the model lets it tell patients apart by their record number (it changed results in
practice), and asking for every text column to be listed in ``categorical_columns`` takes one run per
column. So, unless the config lists the features: identifier-like columns are left out with a warning,
text columns are one-hot encoded with a log line, and every cell that is neither is reported at once.
Only column names and counts are logged, never a cell.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np

from metaclinic.data.problems import Problems
from metaclinic.data.table import Table, TableSpec, number_problem

log = logging.getLogger(__name__)

# Words of a column name that say it identifies a record (split at non-letters and at camelCase humps).
IDENTIFIER_WORDS = frozenset({"id", "ids", "identifier", "uuid", "guid", "mrn", "ssn", "nhs", "idx"})
IDENTIFIER_NAMES = frozenset({"index", "row", "rownum", "record", "recordno", "unnamed"})
MIN_ROWS_FOR_UNIQUE = 10  # below this, a column unique on every row says nothing


@dataclass
class ColumnRoles:
    """The feature columns by encoding, and the columns left out with the reason."""

    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    inferred_categorical: list[str] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the log: names and counts only."""
        text = f"{len(self.numeric)} numeric {self.numeric}, {len(self.categorical)} categorical"
        text += f" {self.categorical}"
        if self.inferred_categorical:
            text += f" (text columns, so categorical: {self.inferred_categorical})"
        if self.excluded:
            text += f"; not features: {sorted(self.excluded)}"
        return text


def infer_roles(table: Table, spec: TableSpec, problems: Problems) -> ColumnRoles:
    """The roles of the table's columns as ``spec`` gives or implies them; problems go to ``problems``.

    ``feature_columns`` (or, when it is ``None``, every column but the label, site, patient and
    ``exclude_columns`` ones) are the candidates. Without ``feature_columns``, an identifier-like column is
    left out. A candidate whose every cell is text becomes categorical; one with numbers and some text,
    or NaN/inf cells, is a problem naming its rows.
    """
    roles = ColumnRoles()
    reserved = [c for c in (*spec.label_columns, spec.site_name, spec.patient_column) if c is not None]
    if spec.feature_columns is not None:
        candidates = list(spec.feature_columns)
        leaking = [c for c in candidates if c in reserved]
        if leaking:
            problems.add(f"feature_columns must not include label, site or patient columns: {leaking}")
            candidates = [c for c in candidates if c not in reserved]
    else:
        candidates = [c for c in table.cells if c not in reserved and c not in spec.exclude_columns]
        roles.excluded.update({c: "exclude_columns" for c in spec.exclude_columns})
    for name in spec.categorical_columns:
        if name not in candidates:
            problems.add(f"categorical column {name!r} is not one of the feature columns {candidates}")
    for name in candidates:
        if name in spec.categorical_columns:
            roles.categorical.append(name)
            continue
        values, bad, non_finite = table.parse_numbers(name)
        reason = None if spec.feature_columns is not None else identifier_reason(table, name, values, bad)
        if reason is not None:
            roles.excluded[name] = reason
            log.warning(
                "column %r looks like an identifier (%s): it is not used as a feature. List it in "
                "table.feature_columns to use it, or in table.exclude_columns to silence this",
                name, reason,
            )  # fmt: skip
            continue
        present = sum(v is not None for v in table.column(name))
        if present and bad.size == present:
            roles.categorical.append(name)
            roles.inferred_categorical.append(name)
            continue
        problem = number_problem(table, name, bad, non_finite)
        if problem:
            problems.add(problem)
        roles.numeric.append(name)
    if roles.inferred_categorical:
        log.info(
            "%d text column(s) are one-hot encoded as categorical: %s (list them in "
            "table.categorical_columns to say so yourself)",
            len(roles.inferred_categorical), roles.inferred_categorical,
        )  # fmt: skip
    return roles


def identifier_reason(table: Table, name: str, values: np.ndarray, not_numbers: np.ndarray) -> str | None:
    """Why column ``name`` looks like a record identifier rather than a patient feature, or ``None``.

    Named like one (``id``, ``patient_id``, ``PatientID``, ``record``, pandas' ``Unnamed: 0`` index), or
    unique on every row (of at least ``MIN_ROWS_FOR_UNIQUE``) while being text or consecutive-ish integers
    (a row number): a measured value with decimals is unique per row too, but a feature.
    """
    words = [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)]
    if IDENTIFIER_WORDS & set(words) or "".join(w for w in words if not w.isdigit()) in IDENTIFIER_NAMES:
        return "named like an identifier"
    cells = [v for v in table.column(name) if v is not None]
    if len(cells) < MIN_ROWS_FOR_UNIQUE or len(cells) != len(table) or len(set(cells)) != len(cells):
        return None
    if not_numbers.size == len(cells):
        return "text unique on every row"
    observed = values[~np.isnan(values)]
    integers = observed.size == len(cells) and bool(np.all(observed == np.round(observed)))
    if integers and observed.max() - observed.min() + 1 <= 2 * len(cells):
        return "integers unique on every row, like a row number"
    return None
