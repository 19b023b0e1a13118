"""Linear classification of latent cell descriptors, split and scored by patient.

Labels follow the manifest: ``"high"`` / ``"low"`` / ``"unknown"`` (also accepted: 1 / 0 / -1,
booleans, NaN or None for unknown). Cells are split by patient so that no patient is in both the
training and the held-out set; population scores pool the single-cell probabilities of k different
cells of one held-out cell line/patient, as in Zaritsky et al. 2021 (Fig. 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV

HIGH, LOW, UNKNOWN = 1, 0, -1
POPULATION_KS = (1, 5, 10, 20, 50)
MIN_POPULATION = 20
# A cell or population is called high from P(high) >= 0.5, everywhere a call is made.
CALL_THRESHOLD = 0.5
"""Distinct cells a population call needs (Zaritsky et al.: about 20 cells)."""
# Candidate shrinkages of the classifier's covariance ("auto" is Ledoit-Wolf), and at most this
# many cross-validation folds of one held-out high and one held-out low patient each.
SHRINKAGE_GRID = ("auto", 0.1, 0.3, 0.5, 0.7, 0.9)
MAX_FOLDS = 16
_LABEL_CODES = {"high": HIGH, "low": LOW, "unknown": UNKNOWN, "": UNKNOWN, "none": UNKNOWN}


def _label_code(value: object) -> int:
    if value is None:
        return UNKNOWN
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _LABEL_CODES:
            return _LABEL_CODES[key]
    elif isinstance(value, bool | np.bool_):
        return HIGH if value else LOW
    elif isinstance(value, int | float | np.integer | np.floating):
        if np.isnan(value):
            return UNKNOWN
        if value in (HIGH, LOW, UNKNOWN):
            return int(value)
    raise ValueError(f"unknown label {value!r}: expected 'high', 'low' or 'unknown' (or 1/0/-1)")


def binary_labels(labels: Sequence | np.ndarray) -> np.ndarray:
    """Map labels to int codes: 1 = high, 0 = low, -1 = unknown.

    Parameters
    ----------
    labels : array-like
        ``"high"``/``"low"``/``"unknown"`` strings (case-insensitive), booleans, or 1/0/-1
        numbers; None, NaN and ``""`` mean unknown.

    Returns
    -------
    np.ndarray
        int8 array of the same length.
    """
    # factorize: map each distinct value once (millions of cells, a handful of values);
    # None and NaN come back as code -1.
    index, uniques = pd.factorize(np.asarray(labels, dtype=object).reshape(-1))
    table = np.array([_label_code(u) for u in uniques] + [UNKNOWN], dtype=np.int8)
    return table[index]


def _patient_classes(patients: np.ndarray, y: np.ndarray) -> dict[object, int]:
    """Return the one label of each labelled patient; a patient with both is an error."""
    classes: dict[object, int] = {}
    for patient in np.unique(patients[y != UNKNOWN]):
        found = np.unique(y[(patients == patient) & (y != UNKNOWN)])
        if len(found) > 1:
            raise ValueError(f"patient {patient!r} has cells labelled both high and low")
        classes[patient] = int(found[0])
    return classes


def _n_test(n_patients: int, n_test_per_class: int, test_fraction: float | None) -> int:
    if test_fraction is not None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        return min(n_patients - 1, max(1, round(test_fraction * n_patients)))
    if n_test_per_class < 1:
        raise ValueError(f"n_test_per_class must be >= 1, got {n_test_per_class}")
    return n_test_per_class


def patient_split(
    patients: Sequence | np.ndarray,
    labels: Sequence | np.ndarray,
    *,
    n_test_per_class: int = 1,
    test_fraction: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split labelled cells into train and test sets by patient, holding out both classes.

    Parameters
    ----------
    patients : array-like
        Patient id of each cell (N,).
    labels : array-like
        Label of each cell (N,); see :func:`binary_labels`. Unknown-label cells are in neither
        set.
    n_test_per_class : int
        Patients of each class held out (ignored when ``test_fraction`` is given).
    test_fraction : float, optional
        Fraction of each class's patients held out (rounded, at least 1, at most all but 1).
    seed : int
        Seed of the random choice of held-out patients.

    Returns
    -------
    train_mask, test_mask : np.ndarray
        Boolean masks (N,); no patient has cells in both.

    Raises
    ------
    ValueError
        No labelled cells, only one class, a patient with both labels, or a class with too few
        patients to hold some out and still train on the rest.
    """
    patients = np.asarray(patients, dtype=object).reshape(-1)
    y = binary_labels(labels)
    if len(patients) != len(y):
        raise ValueError(f"patients ({len(patients)}) and labels ({len(y)}) differ in length")
    if not np.any(y != UNKNOWN):
        raise ValueError("no labelled cells: every label is unknown")
    classes = _patient_classes(patients, y)
    rng = np.random.default_rng(seed)
    test_patients: list[object] = []
    for code, name in ((HIGH, "high"), (LOW, "low")):
        members = sorted((p for p, c in classes.items() if c == code), key=str)
        if not members:
            present = "high" if code == LOW else "low"
            raise ValueError(
                f"only one class among labelled cells ({present!r}); need high and low"
            )
        n_test = _n_test(len(members), n_test_per_class, test_fraction)
        if len(members) <= n_test:
            raise ValueError(
                f"too few {name!r} patients for a split by patient: {len(members)} "
                f"({', '.join(map(str, members))}); need more than {n_test} to hold {n_test} out"
            )
        test_patients += list(rng.choice(np.array(members, dtype=object), n_test, replace=False))
    labelled = y != UNKNOWN
    held_out = set(test_patients)
    test_mask = labelled & np.fromiter((q in held_out for q in patients), bool, len(patients))
    return labelled & ~test_mask, test_mask


def _check_binary(y: np.ndarray, what: str) -> np.ndarray:
    y = binary_labels(y)
    if np.any(y == UNKNOWN):
        raise ValueError(f"{what}: labels must all be high or low, found unknown")
    if len(np.unique(y)) < 2:
        raise ValueError(f"{what}: need both high and low labels, found only one class")
    return y


def fit_linear_classifier(
    z: np.ndarray, y: Sequence | np.ndarray
) -> tuple[np.ndarray, float, LinearDiscriminantAnalysis]:
    """Fit a linear discriminant on latent codes; P(high) = sigmoid(z · w + b).

    Linear discriminant analysis, as in the paper: its discriminant direction is the axis the
    exaggeration moves along, it is closed-form and deterministic (no tuning, no iterations),
    and its shared-covariance Gaussian model fits an AAE latent space regularised towards
    N(0, I). Ledoit-Wolf shrinkage keeps the covariance well-conditioned with few cells.

    Parameters
    ----------
    z : np.ndarray
        Latent codes (N, D).
    y : array-like
        Labels (N,), high or low only (see :func:`binary_labels`).

    Returns
    -------
    w : np.ndarray
        Weights (D,), float64.
    b : float
        Bias.
    estimator : LinearDiscriminantAnalysis
        The fitted estimator; ``estimator.predict_proba(z)[:, 1]`` equals sigmoid(z · w + b).
    """
    z = np.asarray(z, dtype=np.float64)
    codes = _check_binary(y, "fit_linear_classifier")
    if z.ndim != 2 or len(z) != len(codes):
        raise ValueError(f"z must be (N, D) with N = {len(codes)} labels, got {z.shape}")
    estimator = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(z, codes)
    return estimator.coef_[0].copy(), float(estimator.intercept_[0]), estimator


def patient_pair_folds(
    patients: np.ndarray, y: np.ndarray, max_folds: int = MAX_FOLDS, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds that each leave out one high and one low patient.

    Parameters
    ----------
    patients, y : np.ndarray
        Patient and label code (1 high, 0 low) of each cell (N,).
    max_folds : int
        At most this many (high, low) pairs, drawn at random when there are more.
    seed : int
        Seed of that draw.

    Returns
    -------
    list of (train_index, test_index)
        Empty when a class has a single patient (leaving it out would leave none to train on).
    """
    high = sorted(set(patients[y == HIGH]), key=str)
    low = sorted(set(patients[y == LOW]), key=str)
    if len(high) < 2 or len(low) < 2:
        return []
    pairs = [(h, q) for h in high for q in low]
    if len(pairs) > max_folds:
        chosen = np.random.default_rng(seed).choice(len(pairs), max_folds, replace=False)
        pairs = [pairs[i] for i in sorted(chosen)]
    folds = []
    for h, q in pairs:
        out = (patients == h) | (patients == q)
        folds.append((np.flatnonzero(~out), np.flatnonzero(out)))
    return folds


def fit_classifier(
    z: np.ndarray, y: np.ndarray, patients: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, float, LinearDiscriminantAnalysis, object]:
    """Linear discriminant on latent codes, regularised for *new patients*.

    :func:`lch.classify.fit_linear_classifier`'s LDA shrinks the covariance by Ledoit-Wolf,
    which is optimal for estimating the covariance of these cells. With a handful of training
    patients that leaves the classifier free to lean on whatever happens to be constant within
    each patient and different between the few of each class (on the demo cohort: cell-body
    darkness, drawn alike for both classes; the training high lines happen to be darker), and
    a held-out patient unlike them is miscalled. Here the shrinkage is chosen among
    :data:`SHRINKAGE_GRID` by cross-validation that leaves one high and one low training patient
    out per fold (log-loss on their cells): tuned to generalise across patients, never looking at
    the held-out ones. With a single training patient in a class there is nothing to
    cross-validate, and it falls back to :func:`lch.classify.fit_linear_classifier`.

    Parameters
    ----------
    z : np.ndarray
        Latent codes (N, D) of the training cells.
    y : np.ndarray
        Label codes (N,), 1 high / 0 low.
    patients : np.ndarray
        Patient of each cell (N,).
    seed : int
        Seed of the fold draw when there are many patients.

    Returns
    -------
    w, b, estimator, shrinkage
        As :func:`lch.classify.fit_linear_classifier` (``estimator.predict_proba(z)[:, 1]``
        equals sigmoid(z · w + b)), plus the shrinkage used.
    """
    folds = patient_pair_folds(np.asarray(patients, dtype=object), y, seed=seed)
    if not folds:
        w, b, estimator = fit_linear_classifier(z, y)
        return w, b, estimator, "auto"
    search = GridSearchCV(
        LinearDiscriminantAnalysis(solver="lsqr"),
        {"shrinkage": list(SHRINKAGE_GRID)},
        cv=folds,
        scoring="neg_log_loss",
    ).fit(np.asarray(z, dtype=np.float64), y)
    estimator = search.best_estimator_
    return (
        estimator.coef_[0].copy(),
        float(estimator.intercept_[0]),
        estimator,
        search.best_params_["shrinkage"],
    )


def call_of(p_high: float) -> str:
    """Call a cell or population "high" or "low" from its (mean) P(high)."""
    return "high" if p_high >= CALL_THRESHOLD else "low"


def cell_auc(p: np.ndarray, y: Sequence | np.ndarray) -> float:
    """Cell-level ROC AUC of P(high) ``p`` (N,) against labels ``y`` (N,)."""
    return float(roc_auc_score(_check_binary(y, "cell_auc"), np.asarray(p, dtype=np.float64)))


def _group_labels(y: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    names = np.unique(groups)
    group_y = np.empty(len(names), dtype=np.int8)
    for i, name in enumerate(names):
        found = np.unique(y[groups == name])
        if len(found) > 1:
            raise ValueError(f"group {name!r} has cells labelled both high and low")
        group_y[i] = found[0]
    return names, group_y


@dataclass(frozen=True)
class PopulationDraws:
    """Populations drawn from each group, and their scores.

    ``scores[g, d]`` is the mean P(high) of draw ``d`` of group ``names[g]`` (label code
    ``labels[g]``, ``sizes[g]`` cells).
    """

    names: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    scores: np.ndarray

    def correct(self) -> np.ndarray:
        """Whether each population (group, draw) is called right (:func:`call_of`)."""
        return (self.scores >= CALL_THRESHOLD) == (self.labels[:, None] == HIGH)

    def accuracy(self) -> float:
        """Fraction of correct calls over all draws, groups weighing the same."""
        return float(self.correct().mean())

    def auc(self) -> float:
        """ROC AUC of the population scores against their groups' labels."""
        truth = np.repeat(self.labels, self.scores.shape[1])
        return float(roc_auc_score(truth, self.scores.reshape(-1)))


def population_draws(
    p: np.ndarray,
    y: Sequence | np.ndarray,
    groups: Sequence | np.ndarray,
    k: int = 20,
    n_draws: int = 100,
    rng: np.random.Generator | None = None,
) -> PopulationDraws:
    """Draw ``n_draws`` populations of ``k`` different cells from each group.

    A population never holds one cell twice: a group of fewer than ``k`` cells pools all of
    them (its ``sizes`` entry says so).

    Parameters
    ----------
    p : np.ndarray
        P(high) of each cell (N,): one entry per distinct cell (a track's, not a frame's).
    y : array-like
        Label of each cell (N,), high or low; constant within a group.
    groups : array-like
        Group (cell line or patient) of each cell (N,).
    k : int
        Cells per population.
    n_draws : int
        Populations drawn per group.
    rng : numpy.random.Generator, optional
        Source of the draws (default: seed 0).
    """
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    codes = _check_binary(y, "population_draws")
    groups = np.asarray(groups, dtype=object).reshape(-1)
    if not len(p) == len(codes) == len(groups):
        raise ValueError(f"p ({len(p)}), y ({len(codes)}), groups ({len(groups)}) differ in length")
    if k < 1 or n_draws < 1:
        raise ValueError(f"k and n_draws must be >= 1, got k={k}, n_draws={n_draws}")
    rng = np.random.default_rng(0) if rng is None else rng
    names, group_y = _group_labels(codes, groups)
    scores, sizes = [], []
    for name in names:
        cell_p = p[groups == name]
        order = rng.permuted(np.tile(np.arange(len(cell_p)), (n_draws, 1)), axis=1)
        scores.append(cell_p[order[:, :k]].mean(axis=1))
        sizes.append(len(cell_p))
    return PopulationDraws(names, group_y, np.array(sizes), np.stack(scores))
