"""Logistic regression baselines that a clinician asks about, scored on the meta-learners' own episodes.

All are :class:`~metaclinic.algorithms.EpisodicModule` subclasses, so they are selected in a config by
``class_path`` like any algorithm and evaluated on exactly the same fixed meta-test episodes. None is
meta-trained: ``metaclinic.fit`` goes straight to the meta-test report.

Besides a model of the support set alone and the pooled model of the other hospitals used as is, two
classic ways of *updating* the pooled model with the new hospital's few patients (Steyerberg, "Clinical
Prediction Models", 2nd ed., Springer 2019, ch. 20; Janssen, Moons, Kalkman, Grobbee and Vergouwe,
"Updating methods improved the performance of a clinical prediction model in new patients", J. Clin.
Epidemiol. 61(1), 2008): recalibration in the large (:class:`RecalibratedLogisticRegression`) and a
refit penalised toward the pooled coefficients (:class:`RefitLogisticRegression`).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from metaclinic.algorithms.base import EpisodicModule
from metaclinic.data.datamodule import SPLITS, EpisodicDataModule
from metaclinic.data.episodes import EpisodeDataset
from metaclinic.data.pool import ClassPool
from metaclinic.data.task import TaskBatch
from metaclinic.errors import DataError

log = logging.getLogger("metaclinic")

LAM_GRID = tuple(np.logspace(-3, 3, 13).tolist())  # lambda for RefitLogisticRegression(lam="auto")


def _as_rows(x: Tensor) -> np.ndarray:
    return x.detach().flatten(1).cpu().double().numpy()


def _with_intercept(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))])


def _parameters(classifier: LogisticRegression) -> np.ndarray:
    """A fitted model as one matrix ``(features + 1, m)``: coefficients, then the intercept row.

    ``m`` is 1 for two outcomes (the log-odds of the second, as scikit-learn's), else one column per outcome.
    """
    return np.vstack([classifier.coef_.T, classifier.intercept_[None]])


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """Log-probabilities of every outcome ``(n, k)`` from linear predictors ``(n, m)`` (binary: log-odds)."""
    full = np.hstack([np.zeros_like(z), z]) if z.shape[1] == 1 else z
    return full - logsumexp(full, axis=1, keepdims=True)


def _sub_pool(pool: ClassPool, ids: list[int]) -> ClassPool:
    """The classes ``ids`` of ``pool`` (e.g. one site's), over the same examples and patients."""
    return ClassPool(
        pool.examples, [pool.class_indices[c] for c in ids], [pool.classes[c] for c in ids], pool.groups,
        same_domain_episodes=True,
    )  # fmt: skip


def _log_proba(x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return _log_softmax(_with_intercept(x) @ theta)


def penalised_fit(
    x: np.ndarray,
    y: np.ndarray,
    centre: np.ndarray,
    lam: float,
    offset: np.ndarray | None = None,
    max_iter: int = 1000,
) -> np.ndarray:
    """``argmin_theta  mean_i -log p(y_i | offset_i + x_i theta) + lam / 2 * ||theta - centre||^2``.

    A (multinomial) logistic regression whose L2 penalty pulls toward ``centre`` rather than zero, which
    scikit-learn cannot do: convex, solved in float64 by L-BFGS from ``centre`` (deterministic). ``x (n, p)``,
    outcome columns ``y (n,)``, ``centre (p, m)`` (``m`` = 1: binary log-odds), ``offset (n, m)``: a fixed
    linear predictor added to ``x theta`` (default 0).
    """
    n, m = len(x), centre.shape[1]
    offset = np.zeros((n, m)) if offset is None else offset
    observed = np.eye(max(m, 2))[y][:, -m:]  # the outcomes of the columns theta predicts

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        theta = flat.reshape(centre.shape)
        log_p, difference = _log_softmax(offset + x @ theta), theta - centre
        loss = -log_p[np.arange(n), y].mean() + lam / 2 * np.sum(difference**2)
        gradient = x.T @ (np.exp(log_p[:, -m:]) - observed) / n + lam * difference
        return loss, gradient.ravel()

    options = {"maxiter": max_iter, "gtol": 1e-10, "ftol": 1e-15}
    result = minimize(objective, centre.ravel(), jac=True, method="L-BFGS-B", options=options)
    return result.x.reshape(centre.shape)


class LogisticBaseline(EpisodicModule):
    """What the logistic regressions share: scikit-learn's settings, and nothing to meta-train.

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

    With more features than support examples (raw pixels: 2352 against 25), the fit runs in the support
    set's row space: the L2-penalised weights lie in it (the penalty's gradient is ``w``, the loss's a
    combination of support rows), so projecting support and query onto an orthonormal basis of it gives
    the same solution (to 5e-10 in probability at a tight solver tolerance) from a 25-dimensional problem:
    0.11 -> 0.05 s per 5-way 5-shot episode of 28x28 RGB images.
    """

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        logits = []
        for task in batch:
            support, query = _as_rows(task.support_x), _as_rows(task.query_x)
            if support.shape[1] > support.shape[0]:
                _, _, basis = np.linalg.svd(support, full_matrices=False)
                support, query = support @ basis.T, query @ basis.T
            classifier = self.new_classifier()
            classifier.fit(support, task.support_y.cpu().numpy())
            logits.append(torch.from_numpy(classifier.predict_log_proba(query)))
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
        x, y, names = self.trainer.datamodule.supervised_data("meta_train")
        self.classifier, self.targets = self.fit_outcomes(_as_rows(x), [names[i] for i in y.tolist()])

    def fit_outcomes(self, x: np.ndarray, outcomes: list[str]) -> tuple[LogisticRegression, list[str]]:
        """The pooled model of rows ``x`` with outcomes ``outcomes``, and its outcome columns (sorted)."""
        classifier = self.new_classifier().fit(x, np.asarray(outcomes))
        return classifier, [str(t) for t in classifier.classes_]

    def outcome_columns(self, pool: ClassPool, classes: Tensor, targets: list[str]) -> list[list[int]]:
        """For every episode (row of pool-wide ``classes``), the outcome column of each local class."""
        columns = []
        for episode in classes.tolist():
            outcomes = [pool.classes[c].target for c in episode]
            unknown = [t for t in outcomes if t not in targets]
            if unknown:
                raise DataError(
                    f"{type(self).__name__} was trained on outcomes {targets} and cannot score "
                    f"{unknown}; it needs evaluation classes whose outcome occurs in meta-train "
                    "(e.g. task_mode 'site')"
                )
            columns.append([targets.index(t) for t in outcomes])
        return columns

    def score_tasks(self, batch: TaskBatch) -> Tensor:
        assert self.classifier is not None, f"{type(self).__name__} is fitted in setup()"
        pool = self.trainer.datamodule.pools["meta_test" if self.trainer.testing else "meta_val"]
        columns = self.outcome_columns(pool, batch.classes, self.targets)
        log_probs = self.query_log_proba(batch, columns)  # (tasks, queries, outcomes)
        # Each local class j of an episode takes the log-probability of its outcome's column.
        logits = torch.take_along_dim(log_probs, torch.tensor(columns).unsqueeze(1), dim=2)
        return logits.to(batch.query_x.device, torch.float32)

    def query_log_proba(self, batch: TaskBatch, columns: list[list[int]]) -> Tensor:
        """Log-probabilities of every outcome column for every query, ``(tasks, queries, outcomes)``."""
        assert self.classifier is not None
        queries = _as_rows(batch.query_x.flatten(0, 1))
        log_probs = torch.from_numpy(self.classifier.predict_log_proba(queries))
        return log_probs.view(len(batch), -1, len(self.targets))


class UpdatedLogisticRegression(PooledLogisticRegression):
    """The pooled model updated on each episode's support set; a subclass says how (:meth:`update`).

    The support labels are mapped to the pooled model's outcome columns (``ClassInfo.target``) exactly as
    the queries are scored, so the update works on the pooled model's own parameters.
    """

    def update(self, theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``theta (features + 1, m)`` updated on support rows ``x`` with outcome columns ``y``."""
        raise NotImplementedError

    def query_log_proba(self, batch: TaskBatch, columns: list[list[int]]) -> Tensor:
        assert self.classifier is not None
        theta, log_probs = _parameters(self.classifier), []
        for task, episode_columns in zip(batch, columns, strict=True):
            support_y = np.asarray(episode_columns)[task.support_y.cpu().numpy()]
            updated = self.update(theta, _as_rows(task.support_x), support_y)
            log_probs.append(torch.from_numpy(_log_proba(_as_rows(task.query_x), updated)))
        return torch.stack(log_probs)


class RecalibratedLogisticRegression(UpdatedLogisticRegression):
    """Recalibration in the large: the pooled coefficients kept, the intercept(s) re-estimated on the support.

    The least a new hospital can update: its patients' case mix and outcome prevalence differ, the
    predictors' effects are assumed to carry over, so only the intercept is refitted by maximum likelihood
    with the pooled linear predictor as an offset (Steyerberg, "Clinical Prediction Models", 2nd ed.,
    Springer 2019, ch. 20; Janssen, Moons, Kalkman, Grobbee and Vergouwe, "Updating methods improved the
    performance of a clinical prediction model in new patients", J. Clin. Epidemiol. 61(1), 2008). One
    parameter per outcome is all K-shot support sets can estimate, and since a shift of the log-odds keeps
    the order of patients, it changes calibration but never the AUROC of an episode.

    Args:
        ridge: multiclass only: a tiny L2 penalty on the per-class offsets, which are defined only up to a
            common shift and diverge for an outcome absent from the support set. Binary: plain maximum
            likelihood (defined since every episode has both outcomes).
        C, max_iter: of :class:`LogisticBaseline` (``max_iter`` also bounds the offsets' solver).
    """

    def __init__(self, ridge: float = 1e-3, C: float = 1.0, max_iter: int = 1000) -> None:
        super().__init__(C, max_iter)
        self.ridge = ridge

    def update(self, theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        m = theta.shape[1]
        offsets = penalised_fit(
            np.ones((len(x), 1)), y, np.zeros((1, m)), self.ridge if m > 1 else 0.0,
            offset=_with_intercept(x) @ theta, max_iter=self.max_iter,
        )  # fmt: skip
        return np.vstack([theta[:-1], theta[-1:] + offsets])


class RefitLogisticRegression(UpdatedLogisticRegression):
    """The pooled model refitted on each support set, with every coefficient pulled toward its pooled value.

    Minimises ``mean log-loss(support) + lam / 2 * ||theta - theta_pooled||^2``: a model revision
    (Steyerberg, "Clinical Prediction Models", 2nd ed., Springer 2019, ch. 20; Janssen, Moons, Kalkman,
    Grobbee and Vergouwe, "Updating methods improved the performance of a clinical prediction model in new
    patients", J. Clin. Epidemiol. 61(1), 2008) shrunk toward the pooled model instead of toward zero,
    because K patients cannot re-estimate every coefficient on their own. The intercept is penalised toward
    the pooled intercept too, so that ``lam`` spans the whole range from the pooled model (``lam -> inf``)
    to a support-only maximum-likelihood fit (``lam -> 0``); re-estimating the intercept alone is
    :class:`RecalibratedLogisticRegression`. Features are standardised by the data's preprocessing, so one
    ``lam`` suits all coefficients.

    ``lam="auto"`` chooses ``lam`` on meta-train sites only, never on meta-val or meta-test rows, by an inner
    leave-one-site-out: each meta-train site in turn is held out, the pooled model is fitted on the other
    meta-train sites, and ``inner_episodes`` seeded episodes of the configured shape are drawn from the
    held-out site by the data's own episode sampler (patients disjoint between support and query). The
    ``lam`` of the grid with the lowest query log-loss, averaged over episodes and then over sites, wins:
    log-loss, not AUROC, because it is proper, defined for any number of classes, and does not tie between
    neighbouring ``lam`` on a handful of queries (ties go to the larger ``lam``). A site with too few
    patients for an episode sits out. The preprocessing was fitted on all meta-train sites, including the
    held-out one (a small optimism, inside meta-train). Without a usable meta-train site (e.g. a single
    meta-train hospital), ``lam`` is chosen on the meta-val episodes instead, with a warning; without
    those too, a :class:`DataError` asks for a number. The choice is logged, kept as :attr:`chosen_lam` and
    written in the report's ``extra["lam"]``.

    Args:
        lam: the penalty's strength, or ``"auto"``.
        lam_grid: the values ``"auto"`` chooses from; default 13 values from 1e-3 to 1e3, log-spaced.
        inner_episodes: episodes per held-out meta-train site for ``"auto"``.
        C, max_iter: of :class:`LogisticBaseline` (the pooled model; ``max_iter`` also bounds the refit).
    """

    def __init__(
        self,
        lam: float | Literal["auto"] = "auto",
        lam_grid: list[float] | None = None,
        inner_episodes: int = 100,
        C: float = 1.0,
        max_iter: int = 1000,
    ) -> None:
        super().__init__(C, max_iter)
        if lam != "auto" and (isinstance(lam, str) or lam < 0):
            raise DataError(f"RefitLogisticRegression: lam must be a number >= 0 or 'auto', got {lam!r}")
        self.lam, self.lam_grid, self.inner_episodes = lam, sorted(lam_grid or LAM_GRID), inner_episodes
        self.chosen_lam: float | None = None if lam == "auto" else float(lam)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.lam == "auto":
            self.chosen_lam = self.choose_lam(self.trainer.datamodule)

    def update(self, theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        assert self.chosen_lam is not None, "lam is chosen in setup()"
        return self.refit(theta, x, y, self.chosen_lam)

    def refit(self, theta: np.ndarray, x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
        return penalised_fit(_with_intercept(x), y, theta, lam, max_iter=self.max_iter)

    def choose_lam(self, data: EpisodicDataModule) -> float:
        """The ``lam`` of the grid with the lowest inner leave-one-site-out log-loss (see the class doc)."""
        pool, losses, sites = data.pools["meta_train"], [], []
        for i, (site, ids) in enumerate(pool.domains().items()):
            try:
                losses.append(self.held_out_site_losses(data, pool, ids, stream=len(SPLITS) + i))
                sites.append(site)
            except DataError as error:
                log.info(
                    "RefitLogisticRegression: meta-train site %s sits out the choice of lam: %s", site, error
                )
        how = f"leave-one-site-out over meta-train sites {sites}"
        if not sites:
            val = data.pools["meta_val"]
            if val.num_classes == 0:
                raise DataError(
                    "RefitLogisticRegression(lam='auto') chooses lam on meta-train sites held out in turn, "
                    "but no meta-train site can be held out (one needs episodes of its own and other sites "
                    "with its outcomes) and meta_val is empty: give model.init_args.lam a number"
                )
            log.warning(
                "RefitLogisticRegression: no meta-train site can be held out; lam is chosen on meta_val"
            )
            episodes = EpisodeDataset(
                val, data.n_way, data.n_shot, data.n_query, data.eval_seed, SPLITS.index("meta_val"),
                data.val_episodes,
            )  # fmt: skip
            assert self.classifier is not None
            theta, how = _parameters(self.classifier), "meta_val episodes"
            losses = [self.grid_losses(theta, self.targets, val, episodes, data)]
        mean = np.mean(losses, axis=0)
        best = len(mean) - 1 - int(np.argmin(mean[::-1]))  # ties: the larger lam, nearer the pooled model
        log.info(
            "RefitLogisticRegression: lam = %g, chosen by %s (query log-loss %.4f; %.4f at lam = %g)",
            self.lam_grid[best], how, mean[best], mean[-1], self.lam_grid[-1],
        )  # fmt: skip
        return self.lam_grid[best]

    def held_out_site_losses(
        self, data: EpisodicDataModule, pool: ClassPool, ids: list[int], stream: int
    ) -> np.ndarray:
        """Grid losses on episodes of the site of classes ``ids``, pooled on the other meta-train sites."""
        held_out = _sub_pool(pool, ids)
        episodes = EpisodeDataset(
            held_out, data.n_way, data.n_shot, data.n_query, data.eval_seed, stream, self.inner_episodes
        )  # raises if the site has too few patients
        rest = [c for c in range(pool.num_classes) if c not in ids]
        outcomes = [pool.classes[c].target for c in rest for _ in pool.class_indices[c]]
        if len(set(outcomes)) < 2:
            raise DataError("the other meta-train sites have fewer than two outcomes")
        x = data.prepare_inputs(pool.examples[torch.cat([pool.class_indices[c] for c in rest])])
        classifier, targets = self.fit_outcomes(_as_rows(x), outcomes)
        return self.grid_losses(_parameters(classifier), targets, held_out, episodes, data)

    def grid_losses(
        self,
        theta: np.ndarray,
        targets: list[str],
        pool: ClassPool,
        episodes: EpisodeDataset,
        data: EpisodicDataModule,
    ) -> np.ndarray:
        """Mean query log-loss over ``episodes`` of the refit of ``theta`` with every ``lam`` of the grid."""
        total = np.zeros(len(self.lam_grid))
        for e in range(len(episodes)):
            task, _ = episodes[e]
            columns = self.outcome_columns(pool, task.classes[None], targets)[0]
            support_x, query_x = (_as_rows(data.prepare_inputs(x)) for x in (task.support_x, task.query_x))
            support_y, query_y = np.asarray(columns)[task.support_y.numpy()], task.query_y.numpy()
            for j, lam in enumerate(self.lam_grid):
                log_p = _log_proba(query_x, self.refit(theta, support_x, support_y, lam))[:, columns]
                log_p -= logsumexp(log_p, axis=1, keepdims=True)  # over the episode's classes, as query_loss
                total[j] -= log_p[np.arange(len(query_y)), query_y].mean()
        return total / len(episodes)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        assert self.test_report is not None
        self.test_report.extra["lam"] = self.chosen_lam
