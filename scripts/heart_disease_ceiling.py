"""How much a new hospital's own patients can add to the pooled model: the ceiling for few-shot adaptation.

    python scripts/heart_disease_ceiling.py --out ceiling.md

For each held-out hospital, with the preprocessing of ``configs/heart_disease_loho.yaml`` (fitted on the
three other hospitals, as every LOHO run does), the diagnosis AUROC on the held-out hospital's patients of

- the pooled logistic regression of the three other hospitals, used as is;
- a logistic regression trained on n of the hospital's own patients (n = 10, 20, 40, 80, and all but the
  test fold), class-stratified, 5-fold cross-validated and repeated over 20 seeded draws;
- the pooled model refit on the other hospitals plus the hospital's own training folds (everything).

If even the hospital's own model trained on all its other patients does not beat the pooled model, a
few-shot learner that sees 5 or 10 of them cannot: the information a few patients carry about their
hospital is smaller than what the pooled model already knows. Everything here is the same L2-regularised
logistic regression (scikit-learn, C = 1) as the LOHO baselines.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from metaclinic.data import TableEpisodes, TableSpec
from metaclinic.data.datamodule import DATA_DIR_ENV
from metaclinic.experiment.storage import write_atomically

REPO = Path(__file__).resolve().parents[1]
HOSPITALS = ["cleveland", "hungarian", "switzerland", "va"]
SIZES = (10, 20, 40, 80)


def hospital_data(config: Path, hospital: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features and diagnoses (1 = disease) of the other hospitals pooled and of ``hospital``."""
    settings = yaml.safe_load(config.read_text())["data"]["init_args"]
    settings["table"] = TableSpec(**settings["table"])
    settings.update(meta_train=[h for h in HOSPITALS if h != hospital], meta_val=[], meta_test=[hospital])
    data = TableEpisodes(**settings)
    data.setup("fit")

    def rows(split: str) -> tuple[np.ndarray, np.ndarray]:
        x, y, names = data.supervised_data(split)
        positive = names.index(max(names))  # "1": num > 0 (positive_above: 0)
        return x.flatten(1).double().numpy(), (y.numpy() == positive).astype(int)

    return (*rows("meta_train"), *rows("meta_test"))


def fit_auroc(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    model = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
    return float(roc_auc_score(y_test, model.predict_proba(x_test)[:, 1]))


def ceiling(config: Path, hospital: str, repeats: int = 20) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of the AUROC of every model over the repeated folds."""
    pooled_x, pooled_y, x, y = hospital_data(config, hospital)
    scores: dict[str, list[float]] = {"pooled": [], "own, all": [], "pooled + own": []}
    scores.update({f"own, n={n}": [] for n in SIZES})
    for repeat in range(repeats):
        rng = np.random.default_rng(repeat)
        folds = StratifiedKFold(5, shuffle=True, random_state=repeat).split(x, y)
        for train, test in folds:
            scores["pooled"].append(fit_auroc(pooled_x, pooled_y, x[test], y[test]))
            scores["own, all"].append(fit_auroc(x[train], y[train], x[test], y[test]))
            both = np.concatenate([pooled_x, x[train]]), np.concatenate([pooled_y, y[train]])
            scores["pooled + own"].append(fit_auroc(*both, x[test], y[test]))
            for n in SIZES:
                if n >= len(train):
                    continue
                per_class = [rng.choice(train[y[train] == c], n // 2, replace=False) for c in (0, 1)]
                chosen = np.concatenate(per_class)
                scores[f"own, n={n}"].append(fit_auroc(x[chosen], y[chosen], x[test], y[test]))
    return {name: (float(np.mean(v)), float(np.std(v))) for name, v in scores.items() if v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs/heart_disease_loho.yaml")
    parser.add_argument("--hospitals", nargs="+", default=["cleveland", "hungarian", "va"], choices=HOSPITALS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault(DATA_DIR_ENV, "data")
    results = {h: ceiling(args.config, h) for h in args.hospitals}
    columns = list(next(iter(results.values())))
    lines = ["| held-out hospital | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for hospital, row in results.items():
        cells = [f"{100 * row[c][0]:.1f} ± {100 * row[c][1]:.1f}" if c in row else "" for c in columns]
        lines.append(f"| {hospital} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n\nAUROC (%), mean ± standard deviation over 5 folds x 20 repeats.\n"
    print(text)
    if args.out:
        write_atomically(args.out, text)


if __name__ == "__main__":
    main()
