"""The paper's evaluation: cells as tracks, leave one patient out, populations of distinct cells
with intervals, calibrated P(high)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_classify import overlapping_populations

from lch.evaluation import (
    brier,
    calibrate_out_of_patient,
    cell_index,
    cell_means,
    first_of_each,
    fit_calibration,
    leave_one_patient_out,
    per_group_table,
    plot_population_curve,
    plot_reliability,
    population_table,
    sigmoid,
)


def test_a_cell_is_a_track_of_one_store():
    table = pd.DataFrame({"store": [0, 0, 1, 0, 1], "track_id": [3, 3, 3, 4, 3]})
    cells = cell_index(table)
    # Track 3 of store 0 and track 3 of store 1 are different cells.
    assert cells.tolist() == [0, 0, 1, 2, 1]
    z = np.array([[1.0, 0], [3, 2], [5, 5], [7, 7], [9, 9]])
    np.testing.assert_allclose(cell_means(z, cells), [[2, 1], [7, 7], [7, 7]])
    assert first_of_each(np.array(["a", "b", "c", "d", "e"]), cells).tolist() == ["a", "c", "d"]
    with pytest.raises(ValueError, match="no track_id: segment the cohort again"):
        cell_index(table.drop(columns="track_id"))


def test_each_patient_is_scored_by_a_fit_that_never_saw_it():
    patients = np.array(["h1", "h1", "h2", "l1", "l2", "l2"], dtype=object)
    y = np.array([1, 1, 1, 0, 0, 0])
    z = np.arange(12, dtype=float).reshape(6, 2)
    seen = []

    def fit(zz, yy, pp):
        seen.append(set(pp))
        return np.array([1.0, 0.0]), float(len(pp))

    logits = leave_one_patient_out(z, y, patients, fit)
    assert seen == [{"h2", "l1", "l2"}, {"h1", "l1", "l2"}, {"h1", "h2", "l2"},
                    {"h1", "h2", "l1"}]
    # h1's rows: z[:, 0] + the number of rows its fit saw (4).
    np.testing.assert_allclose(logits, [4, 6, 9, 11, 12, 14])
    # The only patient of its class cannot be left out: no classifier, NaN.
    alone = leave_one_patient_out(z[1:], y[1:] * 0 + np.array([1, 0, 0, 0, 0]),
                                  patients[1:], fit)
    assert np.isnan(alone[0]) and np.isfinite(alone[1:]).all()


def test_calibration_tames_overconfident_logits():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 1.5, 4000)
    y = (rng.uniform(size=4000) < sigmoid(true_logit)).astype(int)
    overconfident = 5 * true_logit + 1.0
    slope, intercept = fit_calibration(overconfident, y)
    assert slope == pytest.approx(0.2, abs=0.02) and intercept == pytest.approx(-0.2, abs=0.1)
    before, after = brier(sigmoid(overconfident), y), brier(sigmoid(slope * overconfident +
                                                                      intercept), y)
    assert after < before - 0.02
    # Logits that rank the classes the wrong way round are not turned around; NaN is skipped.
    assert fit_calibration(-overconfident, y) == (1.0, 0.0)
    assert fit_calibration(np.r_[overconfident, np.nan], np.r_[y, 1]) == (slope, intercept)


def test_calibration_is_checked_on_patients_it_was_not_fit_on():
    rng = np.random.default_rng(2)
    patients = np.repeat([f"p{i}" for i in range(8)], 200)
    y = np.repeat([1, 0] * 4, 200)
    signal = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.0, len(y))
    # Every patient overconfident alike: a calibration fit on the others helps each one.
    calibrated = calibrate_out_of_patient(5 * signal, y, patients)
    assert brier(calibrated, y) < brier(sigmoid(5 * signal), y) - 0.01
    # Each patient's logits at a level of its own (two on the wrong side): a calibration fit on
    # the other three does not carry over to the fourth, and the check says so.
    patients = np.repeat(["h1", "h2", "l1", "l2"], 50)
    y = np.repeat([1, 1, 0, 0], 50)
    logits = np.repeat([6.0, -1.0, -6.0, 1.0], 50) + rng.normal(0, 0.5, 200)
    calibrated = calibrate_out_of_patient(logits, y, patients)
    assert brier(calibrated, y) > brier(sigmoid(logits), y) + 0.1
    # NaN logits (a patient no fold could score) stay NaN; the rest are calibrated.
    logits[:50] = np.nan
    calibrated = calibrate_out_of_patient(logits, y, patients)
    assert np.isnan(calibrated[:50]).all() and np.isfinite(calibrated[50:]).all()


def test_population_accuracy_with_intervals_and_small_lines():
    p, y, groups = overlapping_populations()
    table = population_table(p, y, groups, n_draws=50, seed=0)
    assert table["k"].tolist() == [1, 5, 10, 20, 50]
    assert list(table.columns) == ["k", "accuracy", "ci_low", "ci_high", "auc",
                                   "groups_reaching_k"]
    assert (table["ci_low"] <= table["accuracy"]).all()
    assert (table["accuracy"] <= table["ci_high"]).all()
    assert (table["ci_high"] - table["ci_low"]).iloc[0] > 0.01  # one cell: a real spread
    assert table["accuracy"].iloc[-1] > table["accuracy"].iloc[0] + 0.25
    assert table["auc"].is_monotonic_increasing
    assert table["groups_reaching_k"].tolist() == [1.0, 1.0, 1.0, 1.0, 1.0]
    # A line of 3 cells and one of 30: k = 5 reaches only one of them.
    small = population_table(np.r_[np.full(3, 0.9), np.full(30, 0.2)], np.r_[[1] * 3, [0] * 30],
                             np.r_[["a"] * 3, ["b"] * 30], ks=[1, 5])
    assert small["groups_reaching_k"].tolist() == [1.0, 0.5]
    assert small["accuracy"].tolist() == [1.0, 1.0]
    assert population_table(p, y, groups, n_draws=50, seed=0).equals(table)


def test_per_line_table():
    p = np.array([0.9, 0.6, 0.4, 0.2, 0.3, 0.7])
    y = np.array([1, 1, 1, 0, 0, 0])
    out = per_group_table(p, y, np.array(["a", "a", "a", "b", "b", "b"]), k=2, n_draws=20)
    row = out.set_index("group")
    assert row.loc["a", "label"] == "high" and row.loc["a", "cells"] == 3
    assert row.loc["a", "mean_p_high"] == pytest.approx(1.9 / 3)
    assert row.loc["a", "cell_accuracy"] == pytest.approx(2 / 3)
    assert row.loc["b", "cell_accuracy"] == pytest.approx(2 / 3)
    assert 0.0 < row.loc["a", "population_accuracy_k2"] <= 1.0


def test_figures_render(tmp_path):
    p, y, groups = overlapping_populations()
    curve = plot_population_curve(population_table(p, y, groups, n_draws=20))
    reliability = plot_reliability({"raw": p, "squeezed": 0.5 + (p - 0.5) / 2}, y)
    for name, fig in (("curve", curve), ("reliability", reliability)):
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
