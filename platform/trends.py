"""Trends of measured features along an exaggeration, and the bound the data set on them.

An exaggeration (:mod:`lch.exaggerate`) decodes each cell at shifts ``s`` along the discriminant
direction; each decoded image is measured (:func:`lch.morphology.measure_crop`). Whether the
decoder draws a feature as the classifier reads it is judged by Spearman's rho between ``s`` and
the feature, pooled over cells.

Pooled over cells, rho cannot reach 1 even for a faithful decoder: each cell's feature moves
with ``s`` from where that cell starts, and cells start far apart. With a feature that changes
by ``m`` per SD of shift and cells spread by ``sqrt(v)``, pooled rho^2 is about
``V m^2 / (V m^2 + v)`` (``V`` the variance of the shifts, 6.67 for s in -4..4); a decoder
faithful to the data has ``m / sqrt(v)`` equal to ``c``, the feature's correlation with the
discriminant score among the real cells. So ``rho* = sqrt(V c^2 / (V c^2 + 1))`` is what the data
allow (:func:`trend_bound`), and the criterion (:func:`judge_trends`) asks of each planted
feature a rho of at least :data:`BOUND_SHARE` of its bound, and of the planted features that they
all trend more strongly than every unplanted control, by at least :data:`CONTROL_MARGIN`.

The bound presumes a decoder that draws the feature at all. How far it does is measured on the
real cells themselves: Spearman's rho between each feature on the cells and on their
reconstructions (their own codes decoded), the report's ``fidelity``. A feature the decoder
does not reproduce (fidelity near 0) cannot trend along the exaggeration either.

It also presumes a move along the codes' own mean given the score (the classifier's activation
pattern, Haufe et al. 2014), which is where ``c`` is measured; the linear method moves along the
classifier's weight, and the two part where the codes are correlated (the benchmark
``bench/exaggeration_directions.py`` shows both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Features whose trend with s is reported by default: the planted ones (protrusions, halo)
# and the controls (size, shape).
DEFAULT_FEATURES: tuple[str, ...] = (
    "protrusion_count",
    "protrusion_length",
    "protrusion_reach",
    "halo_intensity",
    "area",
    "body_area",
    "solidity",
    "eccentricity",
    "body_contrast",
)
# What LCH's synthetic cohorts plant (arm-like extensions, light scattering), and measures that
# nothing plants (total area, solidity and eccentricity are left out: arms change them).
PLANTED_FEATURES: tuple[str, ...] = ("protrusion_reach", "halo_intensity")
CONTROL_FEATURES: tuple[str, ...] = ("body_area", "body_contrast")
BOUND_SHARE = 0.85
CONTROL_MARGIN = 0.25
# The strongest trends put to the test on real cells (the paper's hypotheses came from a few).
HYPOTHESES = 4


def spearman_table(table: pd.DataFrame, features: Sequence[str] | None = None) -> pd.DataFrame:
    """Spearman's rho between ``s`` and each feature, pooled over cells.

    Parameters
    ----------
    table : pandas.DataFrame
        :attr:`lch.exaggerate.Exaggeration.table` (columns ``sigma`` and the features).
    features : sequence of str, optional
        Columns to test; default :data:`DEFAULT_FEATURES` plus ``probability_reencoded``,
        those present in the table.

    Returns
    -------
    pandas.DataFrame
        One row per feature: ``feature``, ``rho``, ``pvalue``, ``n`` (rows with the feature
        measured; decoded images without a detected cell are NaN and left out). ``rho`` is NaN
        when fewer than 3 rows are measured or the feature is constant.
    """
    if "sigma" not in table:
        raise ValueError("table has no 'sigma' column: expected Exaggeration.table")
    if features is None:
        wanted = (*DEFAULT_FEATURES, "probability_reencoded")
        features = [f for f in wanted if f in table]
    missing = [f for f in features if f not in table]
    if missing:
        raise ValueError(f"features not in the table: {missing}")
    rows = [_spearman_row(table["sigma"], table[feature], feature) for feature in features]
    return pd.DataFrame(rows, columns=["feature", "rho", "pvalue", "n"])


def _spearman_row(x: pd.Series | np.ndarray, values: pd.Series, feature: str) -> dict[str, Any]:
    v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    x = np.asarray(x, dtype=float)
    ok = np.isfinite(v) & np.isfinite(x)
    x, v = x[ok], v[ok]
    rho = pvalue = math.nan
    if ok.sum() >= 3 and np.ptp(v) > 0 and np.ptp(x) > 0:
        result = stats.spearmanr(x, v)
        rho, pvalue = float(result.statistic), float(result.pvalue)
    return {"feature": feature, "rho": rho, "pvalue": pvalue, "n": int(ok.sum())}


def trend_bound(c: float | np.ndarray, sigmas: Sequence[float]) -> float | np.ndarray:
    """Return the pooled rho a decoder faithful to the data can reach.

    It is ``sqrt(V c^2 / (V c^2 + 1))``.

    Parameters
    ----------
    c : float or numpy.ndarray
        The feature's correlation with the discriminant score among real cells.
    sigmas : sequence of float
        The shifts of the exaggeration (``V`` is their variance).
    """
    explained = float(np.var(np.asarray(sigmas, dtype=float))) * np.square(c)
    return np.sqrt(explained / (explained + 1.0))


def trend_report(
    exaggerated: pd.DataFrame,
    cells: pd.DataFrame,
    scores: np.ndarray,
    sigmas: Sequence[float],
    planted: Sequence[str] = PLANTED_FEATURES,
    controls: Sequence[str] = CONTROL_FEATURES,
    reconstructed: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Each planted and control feature's trend along the exaggeration beside the data's bound.

    Parameters
    ----------
    exaggerated : pandas.DataFrame
        :attr:`lch.exaggerate.Exaggeration.table`.
    cells : pandas.DataFrame
        The same features measured on real (not decoded) cells, one row per cell, measured as the
        decoded images are (:func:`lch.morphology.measure_crop` on their crops).
    scores : numpy.ndarray
        Those cells' discriminant scores (logits), (N,).
    sigmas : sequence of float
        The exaggeration's shifts.
    planted, controls : sequence of str
        Features the phenotype carries, and features it does not.
    reconstructed : pandas.DataFrame, optional
        The same features measured on those cells' reconstructions, row for row
        (:func:`lch.exaggerate.measure_reconstructions`).

    Returns
    -------
    pandas.DataFrame
        One row per feature: ``feature``, ``role`` ("planted"/"control"), ``rho`` (along the
        exaggeration), ``c`` (Spearman correlation with the score among real cells), ``bound``
        (:func:`trend_bound` of ``c``), ``ratio`` (``rho / bound``) and ``fidelity`` (Spearman
        correlation between the cells' feature and their reconstructions'; NaN without
        ``reconstructed``).
    """
    scores = np.asarray(scores, dtype=float).reshape(-1)
    if len(scores) != len(cells):
        raise ValueError(f"{len(scores)} scores for {len(cells)} cells")
    if reconstructed is not None and len(reconstructed) != len(cells):
        raise ValueError(f"{len(reconstructed)} reconstructions for {len(cells)} cells")
    rows = []
    for role, names in (("planted", planted), ("control", controls)):
        for feature in names:
            rho = _spearman_row(exaggerated["sigma"], exaggerated[feature], feature)["rho"]
            c = _spearman_row(scores, cells[feature], feature)["rho"]
            bound = float(trend_bound(c, sigmas))
            ratio = rho / bound if bound > 0 else math.nan
            fidelity = math.nan
            if reconstructed is not None:
                fidelity = _spearman_row(cells[feature].to_numpy(dtype=float),
                                         reconstructed[feature], feature)["rho"]
            rows.append({"feature": feature, "role": role, "rho": rho, "c": c, "bound": bound,
                         "ratio": ratio, "fidelity": fidelity})
    return pd.DataFrame(rows, columns=["feature", "role", "rho", "c", "bound", "ratio",
                                       "fidelity"])


def judge_trends(
    report: pd.DataFrame, share: float = BOUND_SHARE, margin: float = CONTROL_MARGIN
) -> list[str]:
    """List what a :func:`trend_report` falls short of.

    Empty when the exaggeration shows the planted features as the data allow and specifically.

    Each planted feature needs ``rho >= share * bound`` (in the direction of ``c``), and every
    planted feature's ``|rho|`` must exceed every control's by ``margin``. A NaN (a feature
    never measured, no trend) fails. A shortfall names the feature's ``fidelity`` where the
    report has one: whether the decoder draws the feature at all; a margin too small names the
    one a faithful decoder would show (the planted features' least bound less the controls'
    greatest): whether the cells allow it at all.
    """
    planted = report[report["role"] == "planted"]
    faults = []
    for row in planted.itertuples():
        aligned = row.rho * np.sign(row.c)
        if not aligned >= share * row.bound:
            fault = f"{row.feature}: rho {row.rho:.3f} below {share} x bound {row.bound:.3f}"
            fidelity = getattr(row, "fidelity", math.nan)
            if math.isfinite(fidelity):
                fault += f" (its reconstructions follow the cells with rho {fidelity:.3f})"
            faults.append(fault)
    weakest, strongest = planted_over_controls(report)
    if not weakest - strongest >= margin:
        fault = f"planted |rho| {weakest:.3f} not above the controls' {strongest:.3f} by {margin}"
        # What a decoder faithful to these cells would show: whether the data allow the margin.
        allowed = control_margin(report, "bound")
        if math.isfinite(allowed):
            fault += f" (the cells' bounds allow {allowed:.3f})"
        faults.append(fault)
    return faults


def planted_over_controls(report: pd.DataFrame, column: str = "rho") -> tuple[float, float]:
    """Return a :func:`trend_report`'s least planted ``|column|`` and greatest control one.

    Their difference is the margin of the criterion (:func:`judge_trends`): of ``rho``, the one
    the exaggeration shows; of ``bound``, the one a decoder faithful to the cells would show.
    The controls' greatest is 0 without controls (a NaN control counts as 0).
    """
    planted = report.loc[report["role"] == "planted", column].abs()
    controls = report.loc[report["role"] == "control", column].abs()
    return float(planted.min()), float(controls.fillna(0.0).max()) if len(controls) else 0.0


def control_margin(report: pd.DataFrame, column: str = "rho") -> float:
    """Return the planted features' least ``|column|`` less the controls' greatest.

    Of ``rho``, the margin :func:`judge_trends` asks for; of ``bound``, the margin the cells
    allow (:func:`planted_over_controls`).
    """
    weakest, strongest = planted_over_controls(report, column)
    return weakest - strongest


def plot_trends(table: pd.DataFrame, features: Sequence[str] | None = None,
                planted: Sequence[str] = PLANTED_FEATURES,
                controls: Sequence[str] = CONTROL_FEATURES) -> Figure:
    """Plot each measured feature against the shift ``s``.

    Each panel shows one feature's median over cells and their interquartile band, titled with
    its pooled rho (:func:`spearman_table`); the planted features in red, the unplanted controls
    in blue, the other measures in grey. A matplotlib Figure built without pyplot; save with
    ``fig.savefig(path)``.

    Parameters
    ----------
    table : pandas.DataFrame
        :attr:`lch.exaggerate.Exaggeration.table`.
    features : sequence of str, optional
        As in :func:`spearman_table`.
    planted, controls : sequence of str
        The features the criterion (:func:`judge_trends`) holds to a trend, and to none.
    """
    from matplotlib.figure import Figure

    rho = spearman_table(table, features).set_index("feature")["rho"]
    columns = 4
    rows = math.ceil(len(rho) / columns)
    fig = Figure(figsize=(2.6 * columns, 2.1 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, feature in zip(axes, rho.index, strict=False):
        by_s = table.groupby("sigma")[feature]
        median = by_s.median()
        s = np.asarray(median.index, dtype=float)
        kind, colour = (("planted, ", "tab:red") if feature in planted
                        else ("control, ", "tab:blue") if feature in controls else ("", "0.35"))
        ax.fill_between(s, by_s.quantile(0.25), by_s.quantile(0.75), color=colour, alpha=0.25,
                        lw=0)
        ax.plot(s, median, "o-", color=colour, ms=3)
        ax.set_title(f"{feature}\n{kind}rho {rho[feature]:.2f}", fontsize="small",
                     color=colour, fontweight="bold" if feature in planted else "normal")
        ax.set_xlabel("s (SD of the training cells' scores)", fontsize="x-small")
        ax.tick_params(labelsize="x-small")
    for ax in axes[len(rho):]:
        ax.set_axis_off()
    return fig


def real_cell_check(
    exaggerated: pd.DataFrame,
    cells: pd.DataFrame,
    labels: Sequence | np.ndarray,
    top: int = HYPOTHESES,
    seed: int = 0,
) -> pd.DataFrame:
    """Test the exaggeration's strongest trends on real cells, each feature alone.

    Exaggeration yields hypotheses ("the classifier reads arm-like extensions"); the paper then
    measured those features on real cells. For each of the ``top`` features with the largest
    ``|rho|`` along the exaggeration, this is the cell-level ROC AUC of the feature alone for
    high against low on the real cells, with a percentile interval over cells resampled within
    each class. A feature the decoder exaggerates but the real cells do not show (interval
    around 0.5), or show the other way (the AUC's direction against the trend's), is flagged.

    Parameters
    ----------
    exaggerated : pandas.DataFrame
        :attr:`lch.exaggerate.Exaggeration.table`.
    cells : pandas.DataFrame
        The features measured on real (not decoded) cells, one row per cell: held-out lines'
        cells, measured as the decoded images are.
    labels : array-like
        Each cell's label, "high" or "low" (others are left out).
    top : int
        How many of the strongest trends to test.
    seed : int
        Seed of the resampling.

    Returns
    -------
    pandas.DataFrame
        One row per feature, strongest trend first: ``feature``, ``rho`` (along the
        exaggeration), ``auc`` (high against low; above 0.5: higher in high cells),
        ``ci_low``/``ci_high``, ``cells`` (measured), ``direction`` ("higher in high",
        "lower in high") and ``flag`` ("" when the real cells show the trend, else why not).
    """
    from lch.classify import HIGH, LOW, binary_labels
    from lch.evaluation import N_BOOTSTRAP, percentile_interval

    y = binary_labels(labels)
    if len(y) != len(cells):
        raise ValueError(f"{len(y)} labels for {len(cells)} cells")
    trends = spearman_table(exaggerated, [f for f in DEFAULT_FEATURES if f in exaggerated])
    trends = trends.dropna(subset=["rho"])
    trends = trends.iloc[np.argsort(-trends["rho"].abs().to_numpy(), kind="stable")][:top]
    rng = np.random.default_rng(seed)
    rows = []
    for feature, rho in zip(trends["feature"], trends["rho"], strict=True):
        values = pd.to_numeric(cells[feature], errors="coerce").to_numpy(dtype=float)
        keep = np.isfinite(values) & np.isin(y, (HIGH, LOW))
        v, high = values[keep], y[keep] == HIGH
        row = {"feature": feature, "rho": float(rho), "auc": math.nan, "ci_low": math.nan,
               "ci_high": math.nan, "cells": int(keep.sum()), "direction": "", "flag": ""}
        if high.all() or not high.any():
            row["flag"] = "real cells of only one class measured"
            rows.append(row)
            continue
        groups = [np.flatnonzero(high), np.flatnonzero(~high)]
        draws = np.concatenate([rng.choice(g, (N_BOOTSTRAP, len(g))) for g in groups], axis=1)
        auc = float(_rank_auc(v, high))
        low, up = percentile_interval(_rank_auc(v[draws], high[draws]))
        row.update(auc=auc, ci_low=low, ci_high=up,
                   direction="higher in high" if auc > 0.5 else "lower in high")
        if low <= 0.5 <= up:
            row["flag"] = "not shown by real cells (interval includes 0.5)"
        elif (auc > 0.5) != (rho > 0):
            row["flag"] = f"real cells show the opposite ({row['direction']})"
        rows.append(row)
    columns = ["feature", "rho", "auc", "ci_low", "ci_high", "cells", "direction", "flag"]
    return pd.DataFrame(rows, columns=columns)


def _rank_auc(values: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC AUC of ``values`` for ``positive`` along the last axis (Mann-Whitney, ties halved)."""
    ranks = stats.rankdata(values, axis=-1)
    n_pos = positive.sum(axis=-1)
    n_neg = positive.shape[-1] - n_pos
    return ((ranks * positive).sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
