"""Linear classification of latent cell descriptors, split and scored by patient.

Labels follow the manifest: ``"high"`` / ``"low"`` / ``"unknown"`` (also accepted: 1 / 0 / -1,
booleans, NaN or None for unknown). Cells are split by patient so that no patient is in both the
training and the held-out set; population scores pool the single-cell probabilities of k cells
of one held-out cell line/patient, as in Zaritsky et al. 2021 (Fig. 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import roc_auc_score

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HIGH, LOW, UNKNOWN = 1, 0, -1
POPULATION_KS = (1, 5, 10, 20, 50)
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
    """The one label of each labelled patient; a patient with both labels is an error."""
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


def population_scores(
    p: np.ndarray,
    y: Sequence | np.ndarray,
    groups: Sequence | np.ndarray,
    k: int = 20,
    n_draws: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy and ROC AUC of population calls pooling ``k`` cells of one group.

    For each group (cell line or patient), ``n_draws`` random sets of ``k`` of its cells are
    drawn (without replacement, or with replacement if the group has fewer than ``k`` cells);
    each set's mean P(high) is a population score, called high above 0.5.

    Parameters
    ----------
    p : np.ndarray
        P(high) of each cell (N,).
    y : array-like
        Label of each cell (N,), high or low; constant within a group.
    groups : array-like
        Group of each cell (N,).
    k : int
        Cells per population.
    n_draws : int
        Populations drawn per group.
    seed : int
        Seed of the draws.

    Returns
    -------
    dict
        ``accuracy`` (fraction of correct calls over all draws, every group weighing the same)
        and ``auc`` (ROC AUC of the population scores against their groups' labels).
    """
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    codes = _check_binary(y, "population_scores")
    groups = np.asarray(groups, dtype=object).reshape(-1)
    if not len(p) == len(codes) == len(groups):
        raise ValueError(f"p ({len(p)}), y ({len(codes)}), groups ({len(groups)}) differ in length")
    if k < 1 or n_draws < 1:
        raise ValueError(f"k and n_draws must be >= 1, got k={k}, n_draws={n_draws}")
    rng = np.random.default_rng(seed)
    names, group_y = _group_labels(codes, groups)
    scores, truth = [], []
    for name, label in zip(names, group_y, strict=True):
        cell_p = p[groups == name]
        replace = len(cell_p) < k
        picks = np.stack([rng.choice(len(cell_p), k, replace=replace) for _ in range(n_draws)])
        scores.append(cell_p[picks].mean(axis=1))
        truth.append(np.full(n_draws, label))
    score, label = np.concatenate(scores), np.concatenate(truth)
    accuracy = float(np.mean((score > 0.5) == (label == HIGH)))
    return {"accuracy": accuracy, "auc": float(roc_auc_score(label, score))}


def population_table(
    p: np.ndarray,
    y: Sequence | np.ndarray,
    groups: Sequence | np.ndarray,
    ks: Sequence[int] = POPULATION_KS,
    n_draws: int = 100,
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`population_scores` for each k: a DataFrame with columns k, accuracy, auc."""
    rows = [
        {"k": k, **population_scores(p, y, groups, k=k, n_draws=n_draws, seed=seed)} for k in ks
    ]
    return pd.DataFrame(rows, columns=["k", "accuracy", "auc"])


def plot_population_curve(table: pd.DataFrame) -> Figure:
    """Accuracy and AUC against the number of pooled cells, as a matplotlib Figure.

    Built without pyplot (no global backend state); save with ``fig.savefig(path)``.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(table["k"], table["accuracy"], "o-", label="accuracy")
    ax.plot(table["k"], table["auc"], "s--", label="ROC AUC")
    ax.set_xscale("log")
    ax.set_xticks(list(table["k"]), [str(k) for k in table["k"]])
    ax.set_ylim(0.0, 1.02)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("cells pooled per population")
    ax.set_ylabel("held-out score")
    ax.legend(loc="lower right")
    return fig
