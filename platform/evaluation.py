"""The paper's evaluation of the classifier: on cells, on unseen patients, on populations.

Cells are tracks, patients are left out one at a time, populations pool distinct cells, and
P(high) is calibrated.

A cell is a tracked cell, as in Zaritsky et al. (2021): its descriptor is the mean of its
frames' latent codes (:func:`cell_means`), and populations pool k *different* cells of one line
(:func:`lch.classify.population_draws`). The classifier is judged on patients whose labels it
never saw: each labelled training patient is left out in turn and scored by a classifier refit on
the others (:func:`leave_one_patient_out`); the patients held out of the autoencoder are scored by
the classifier of all training patients. Those out-of-patient logits also calibrate P(high)
(:func:`fit_calibration`, Platt's sigmoid, folded into the linear classifier) when that
calibration improves the probabilities of patients it was not fit on
(:func:`calibrate_out_of_patient`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import special
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss
from torch import nn

from lch.classify import (
    CALL_THRESHOLD,
    HIGH,
    LOW,
    POPULATION_KS,
    cell_auc,
    fit_classifier,
    population_draws,
)
from lch.model import LCHModel
from lch.training import CellSet, Split, encode, refresh_statistics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Bootstrap resamples of the population draws behind each interval.
N_BOOTSTRAP = 1000
CONFIDENCE = 0.95
N_DRAWS = 100
RELIABILITY_BINS = 10
POPULATION_GROUP = "cell_line"

Fit = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, float]]
"""``fit(z, y, patients) -> (weight, bias)``: a linear classifier on descriptors."""


def cell_index(table: pd.DataFrame, by: Sequence[str] = ("store", "track_id")) -> np.ndarray:
    """Each row's cell (its track), numbered 0..C-1 in order of first row.

    Raises
    ------
    ValueError
        If the table has no ``track_id`` (cells segmented before tracking existed).
    """
    missing = [c for c in by if c not in table]
    if missing:
        raise ValueError(
            f"the cell table has no {', '.join(missing)}: segment the cohort again "
            "(lch segment) so its cells are tracked"
        )
    return table.groupby(list(by), sort=False).ngroup().to_numpy()


def cell_means(values: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Mean of ``values`` (N, D) over each cell's rows: (C, D), cell c in row c."""
    values = np.asarray(values, dtype=np.float64)
    cells = np.asarray(cells, dtype=np.int64)
    counts = np.bincount(cells)
    sums = np.zeros((len(counts), values.shape[1]))
    np.add.at(sums, cells, values)
    return sums / counts[:, None]


def first_of_each(values: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Return the value of each cell's first row (a per-cell attribute: label, patient, line)."""
    _, first = np.unique(np.asarray(cells), return_index=True)
    return np.asarray(values)[first]


def leave_one_patient_out(
    z: np.ndarray, y: np.ndarray, patients: np.ndarray, fit: Fit
) -> np.ndarray:
    """Out-of-fold logits: each patient scored by a classifier fit on the others.

    Parameters
    ----------
    z : numpy.ndarray
        Descriptors (N, D).
    y : numpy.ndarray
        Label codes (N,), 1 high / 0 low.
    patients : numpy.ndarray
        Patient of each descriptor (N,).
    fit : callable
        See :data:`Fit`.

    Returns
    -------
    numpy.ndarray
        Logits (N,); NaN for a patient whose fold cannot be fit (it was the only patient of
        its class).
    """
    patients = np.asarray(patients, dtype=object)
    logits = np.full(len(z), np.nan)
    for patient in pd.unique(patients):
        out = patients == patient
        rest = y[~out]
        if not ((rest == HIGH).any() and (rest == LOW).any()):
            continue
        weight, bias = fit(z[~out], rest, patients[~out])
        logits[out] = z[out] @ weight + bias
    return logits


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Turn logits into probabilities, ``1 / (1 + exp(-logit))``, in float64."""
    return special.expit(np.asarray(logits, dtype=np.float64))


def fit_calibration(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt's sigmoid calibration ``P = sigmoid(a * logit + b)`` from out-of-fold logits.

    With the logits of :func:`leave_one_patient_out` and the final classifier fit on all
    patients, this is scikit-learn's ``CalibratedClassifierCV(method="sigmoid",
    ensemble=False)`` with patients as the folds.

    Returns ``(1, 0)`` (no change) when the logits do not rank the classes the right way
    round (a slope <= 0 would turn the classifier around) or hold one class only.
    """
    ok = np.isfinite(logits)
    x, t = np.asarray(logits)[ok].reshape(-1, 1), np.asarray(y)[ok]
    if len(np.unique(t)) < 2:
        return 1.0, 0.0
    platt = LogisticRegression(C=1e6, class_weight="balanced").fit(x, t)
    slope, intercept = float(platt.coef_[0, 0]), float(platt.intercept_[0])
    return (slope, intercept) if slope > 0 else (1.0, 0.0)


def calibrate_out_of_patient(
    logits: np.ndarray, y: np.ndarray, patients: np.ndarray
) -> np.ndarray:
    """Calibrate each cell's P(high) by :func:`fit_calibration` on the *other* patients' logits.

    NaN where the logit is NaN, or where there is no other patient.

    With a handful of patients each patient's logits are shifted by its own quirks, and a
    calibration fit on the others can make a new patient's probabilities worse, not better;
    these probabilities show whether it does.
    """
    logits, patients = np.asarray(logits, dtype=np.float64), np.asarray(patients, dtype=object)
    ok = np.isfinite(logits)
    calibrated = np.full(len(logits), np.nan)
    for patient in pd.unique(patients[ok]):
        out = ok & (patients == patient)
        rest = ok & ~out
        if rest.any():
            slope, intercept = fit_calibration(logits[rest], np.asarray(y)[rest])
            calibrated[out] = sigmoid(slope * logits[out] + intercept)
    return calibrated


def brier(p: np.ndarray, y: np.ndarray) -> float:
    """Score P(high) against label codes by Brier's score.

    Lower is better; 0.25 is a coin; NaN for no cells.
    """
    if not len(p):
        return math.nan
    return float(brier_score_loss(np.asarray(y) == HIGH, np.asarray(p, dtype=np.float64)))


def percentile_interval(samples: np.ndarray) -> tuple[float, float]:
    """Return the :data:`CONFIDENCE` percentile interval of bootstrap ``samples``."""
    tail = (1 - CONFIDENCE) / 2
    return float(np.quantile(samples, tail)), float(np.quantile(samples, 1 - tail))


def population_table(
    p: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    ks: Sequence[int] = POPULATION_KS,
    n_draws: int = N_DRAWS,
    seed: int = 0,
) -> pd.DataFrame:
    """Score population calls of k distinct cells per group, with bootstrap intervals.

    For each k: ``accuracy`` over ``n_draws`` populations per group (every group weighing the
    same), its ``ci_low``/``ci_high`` (a :data:`CONFIDENCE` percentile interval from
    :data:`N_BOOTSTRAP` resamples of the draws within each group), the populations' ROC
    ``auc``, and ``groups_reaching_k``: the fraction of groups with at least k cells (a smaller
    group pools all of its cells).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for k in ks:
        draws = population_draws(p, y, groups, k=k, n_draws=n_draws, rng=rng)
        correct = draws.correct()  # (G, n_draws)
        picks = rng.integers(0, n_draws, (N_BOOTSTRAP, *correct.shape))
        low, high = percentile_interval(
            np.take_along_axis(correct[None], picks, axis=2).mean(axis=(1, 2)))
        rows.append({
            "k": k, "accuracy": float(correct.mean()), "ci_low": low, "ci_high": high,
            "auc": draws.auc(), "groups_reaching_k": float(np.mean(draws.sizes >= k)),
        })
    return pd.DataFrame(rows, columns=["k", "accuracy", "ci_low", "ci_high", "auc",
                                       "groups_reaching_k"])


def per_group_table(
    p: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int = 20, n_draws: int = N_DRAWS,
    seed: int = 0,
) -> pd.DataFrame:
    """Tabulate each group's label, cells, mean P(high) and accuracies, one row per group.

    The accuracies are the fraction of its cells called right, and that of its populations of
    ``k`` distinct cells.
    """
    draws = population_draws(p, y, groups, k=k, n_draws=n_draws, rng=np.random.default_rng(seed))
    correct = draws.correct()
    groups = np.asarray(groups, dtype=object)
    rows = []
    for i, name in enumerate(draws.names):
        cell_p, high = np.asarray(p)[groups == name], draws.labels[i] == HIGH
        rows.append({
            "group": name, "label": "high" if high else "low", "cells": len(cell_p),
            "mean_p_high": float(cell_p.mean()),
            "cell_accuracy": float(np.mean((cell_p >= CALL_THRESHOLD) == high)),
            f"population_accuracy_k{k}": float(correct[i].mean()),
        })
    return pd.DataFrame(rows)


def plot_population_curve(table: pd.DataFrame) -> Figure:
    """Plot accuracy (with its interval) and AUC against the number of pooled cells.

    The matplotlib Figure is built without pyplot (no global backend state); save it with
    ``fig.savefig(path)``.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.fill_between(table["k"], table["ci_low"], table["ci_high"], alpha=0.25,
                    label=f"{CONFIDENCE:.0%} interval")
    ax.plot(table["k"], table["accuracy"], "o-", label="accuracy")
    ax.plot(table["k"], table["auc"], "s--", label="ROC AUC")
    for row in table[table["groups_reaching_k"] < 1].itertuples():
        ax.annotate(f"{row.groups_reaching_k:.0%} of lines\nhave {row.k} cells",
                    (row.k, row.ci_low), textcoords="offset points", xytext=(0, -24),
                    ha="center", fontsize="x-small")
    ax.set_xscale("log")
    ax.set_xticks(list(table["k"]), [str(k) for k in table["k"]])
    ax.set_ylim(0.0, 1.02)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("distinct cells pooled per population")
    ax.set_ylabel("cross-validated score")
    ax.legend(loc="lower right")
    return fig


def plot_reliability(p: dict[str, np.ndarray], y: np.ndarray) -> Figure:
    """Plot a reliability diagram of each named set of probabilities for the same cells.

    The diagram shows the observed fraction high against the mean P(high), per bin, in a
    matplotlib Figure (no pyplot).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="perfect")
    for name, probabilities in p.items():
        observed, predicted = calibration_curve(
            np.asarray(y) == HIGH, probabilities, n_bins=RELIABILITY_BINS, strategy="quantile"
        )
        ax.plot(predicted, observed, "o-", label=f"{name} (Brier {brier(probabilities, y):.3f})")
    ax.set_xlabel("mean P(high) in bin")
    ax.set_ylabel("fraction of high cells")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize="small")
    return fig


@dataclass
class Evaluation:
    """The cross-validated figures of a trained AAE and the served model built from it.

    ``cells`` has one row per labelled cell (track): ``patient``, ``cell_line``, ``label``,
    ``heldout`` (its patient was held out of the autoencoder), ``frames``, ``short_track`` (seen
    in fewer frames than the segmentation's minimum), ``logit`` (from a classifier that never
    saw its patient's labels; NaN where no fold could be fit) and ``p_high`` (calibrated on the
    other patients when calibration is applied). ``population`` and ``per_line`` are
    :func:`population_table` and :func:`per_group_table` of those cells.
    """

    model: LCHModel
    cells: pd.DataFrame
    population: pd.DataFrame
    per_line: pd.DataFrame
    heldout_cell_auc: float
    heldout_frame_auc: float
    cv_cell_auc: float
    train_cell_auc: float
    calibration: tuple[float, float]
    brier: dict[str, float]
    shrinkage: object = "auto"

    def population_at(self, k: int, metric: str = "accuracy") -> float:
        """``metric`` (accuracy, ci_low, ci_high, auc) of populations of ``k`` distinct cells."""
        return float(self.population.set_index("k").loc[k, metric])

    def metrics(self) -> dict[str, float]:
        """Flat metric names for MLflow."""
        out = {
            "heldout_cell_auc": self.heldout_cell_auc, "heldout_frame_auc": self.heldout_frame_auc,
            "cv_cell_auc": self.cv_cell_auc, "train_cell_auc": self.train_cell_auc,
            "calibration_slope": self.calibration[0],
            "calibration_intercept": self.calibration[1],
            "cells": float(len(self.cells)),
            "heldout_cells": float(self.cells["heldout"].sum()),
        }
        out |= {f"brier_{name}": value for name, value in self.brier.items()}
        for row in self.population.itertuples():
            for metric in ("accuracy", "ci_low", "ci_high", "auc"):
                out[f"cv_population_{metric}_k{row.k}"] = float(getattr(row, metric))
        return out


def _auc(p: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(p)
    return cell_auc(p[ok], y[ok]) if len(np.unique(y[ok])) == 2 else math.nan


def evaluate(
    aae: nn.Module,
    cells: CellSet,
    split: Split,
    batch_size: int = 256,
    ks: Sequence[int] = POPULATION_KS,
    seed: int = 0,
) -> Evaluation:
    """Evaluate a trained autoencoder's classifier as the paper does.

    Describe each labelled cell by the mean code of its track's frames, cross-validate the
    classifier by patient, calibrate it, and score populations of distinct cells.

    The served classifier (:func:`lch.classify.fit_classifier`) is fit on the training patients'
    cells; every training patient is also scored by a refit without it
    (:func:`leave_one_patient_out`) and the patients held out of the autoencoder by the served
    one, so every labelled cell has a logit from a classifier that never saw its patient. Those
    logits calibrate P(high) (:func:`fit_calibration`) when a calibration fit on the other
    patients improves each patient's Brier score (:func:`calibrate_out_of_patient`); the
    reported probabilities are those out-of-patient ones, never calibrated on their own patient.
    Batch-norm statistics are refreshed on the autoencoder's training cells first, so eval-mode
    codes match what the AAE learned. Populations pool cells of one ``cell_line``.

    Parameters
    ----------
    aae : nn.Module
        The trained :class:`lch.model.AAE` (modified: batch-norm statistics, eval mode).
    cells, split
        From :func:`lch.training.load_cells` and :func:`lch.training.split_by_patient`.
    batch_size : int
        Crops per forward pass.
    ks : sequence of int
        Population sizes.
    seed : int
        Seed of the refresh sample, the classifier's folds and the population draws.
    """
    refresh_statistics(aae, cells, split.autoencoder, batch_size, seed)
    rows = np.flatnonzero(split.train | split.test)
    table = cells.table.iloc[rows]
    z = encode(aae, cells, rows, batch_size).astype(np.float64)
    cell = cell_index(table)
    descriptors = cell_means(z, cell)

    def per_cell(values):
        return first_of_each(np.asarray(values), cell)

    y, patients = per_cell(split.labels[rows]), per_cell(table["patient"])
    heldout = per_cell(split.test[rows])
    train = ~heldout
    weight, bias, _, shrinkage = fit_classifier(descriptors[train], y[train], patients[train],
                                                seed)
    logits = descriptors @ weight + bias
    train_logits = logits[train]
    logits[train] = leave_one_patient_out(
        descriptors[train], y[train], patients[train],
        lambda zz, yy, pp: fit_classifier(zz, yy, pp, seed)[:2],
    )
    scored = np.isfinite(logits)
    p_raw = sigmoid(logits)
    p_calibrated = calibrate_out_of_patient(logits, y, patients)
    helps = brier(p_calibrated[scored], y[scored]) < brier(p_raw[scored], y[scored])
    slope, intercept = fit_calibration(logits[scored], y[scored]) if helps else (1.0, 0.0)
    p_high = p_calibrated if helps else p_raw
    lines = per_cell(table[POPULATION_GROUP])
    frame_heldout = split.test[rows]
    out = pd.DataFrame({
        "patient": patients, "cell_line": lines, "label": np.where(y == HIGH, "high", "low"),
        "heldout": heldout, "frames": np.bincount(cell),
        "short_track": per_cell(table["short_track"]).astype(bool), "logit": logits,
        "p_high": p_high,
    })
    return Evaluation(
        model=LCHModel.from_aae(aae, slope * weight, slope * bias + intercept,
                                z[split.train[rows]]),
        cells=out,
        population=population_table(p_high[scored], y[scored], lines[scored], ks, seed=seed),
        per_line=per_group_table(p_high[scored], y[scored], lines[scored], seed=seed),
        heldout_cell_auc=_auc(p_raw[heldout], y[heldout]),
        heldout_frame_auc=_auc(z[frame_heldout] @ weight + bias, split.labels[rows][frame_heldout]),
        cv_cell_auc=_auc(p_raw, y),
        train_cell_auc=_auc(sigmoid(train_logits), y[train]),
        calibration=(slope, intercept),
        brier={"heldout_raw": brier(p_raw[heldout], y[heldout]),
               "heldout_calibrated": brier(p_calibrated[heldout], y[heldout]),
               "cv_raw": brier(p_raw[scored], y[scored]),
               "cv_calibrated": brier(p_calibrated[scored], y[scored])},
        shrinkage=shrinkage,
    )
