"""The bound on pooled exaggeration trends, and the criterion judged against it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lch.trends import (
    judge_trends,
    plot_trends,
    real_cell_check,
    spearman_table,
    trend_bound,
    trend_report,
)

SIGMAS = np.arange(-4.0, 5.0)


def test_bound_follows_the_formula():
    # V = var(-4..4) = 60 / 9; with c = 1 the pooled rho can reach sqrt(V / (V + 1)).
    assert trend_bound(1.0, SIGMAS) == pytest.approx(math.sqrt(60 / 69))
    assert trend_bound(0.0, SIGMAS) == 0.0
    assert trend_bound(0.5, SIGMAS) == pytest.approx(math.sqrt(15 / 9 / (15 / 9 + 1)))


def _faithful(c_slope: float, n_cells: int = 300, seed: int = 0):
    """Cells whose feature moves by ``c_slope`` per SD of shift from a unit-spread start."""
    rng = np.random.default_rng(seed)
    start = rng.normal(size=n_cells)
    rows = [{"cell": i, "sigma": s, "grows": start[i] + c_slope * s,
             "flat": rng.normal()} for i in range(n_cells) for s in SIGMAS]
    return pd.DataFrame(rows)


def test_a_faithful_decoder_reaches_the_bound():
    # Real cells whose feature correlates c = 0.6 with the score; a decoder that moves it by
    # 0.6 of its spread per SD of shift (as faithful as can be) reaches the bound.
    rng = np.random.default_rng(1)
    score = rng.normal(size=4000)
    cells = pd.DataFrame({"grows": 0.6 * score + 0.8 * rng.normal(size=4000),
                          "flat": rng.normal(size=4000)})
    report = trend_report(_faithful(0.6), cells, score, SIGMAS, ["grows"], ["flat"])
    row = report.set_index("feature").loc["grows"]
    assert row["c"] == pytest.approx(0.6, abs=0.03)
    assert row["ratio"] == pytest.approx(1.0, abs=0.05)
    assert judge_trends(report) == []
    # A decoder that draws half the change falls short of the bound.
    half = trend_report(_faithful(0.3), cells, score, SIGMAS, ["grows"], ["flat"])
    assert half["ratio"].iloc[0] < 0.8 and judge_trends(half)


def test_fidelity_says_whether_the_decoder_draws_the_feature():
    rng = np.random.default_rng(2)
    score = rng.normal(size=500)
    cells = pd.DataFrame({"grows": 0.6 * score + 0.8 * rng.normal(size=500),
                          "flat": rng.normal(size=500)})
    # Reconstructions that keep "grows" up to a little noise, and lose "flat" altogether.
    reconstructed = pd.DataFrame({"grows": cells["grows"] + 0.1 * rng.normal(size=500),
                                  "flat": rng.normal(size=500)})
    report = trend_report(_faithful(0.1), cells, score, SIGMAS, ["grows"], ["flat"],
                          reconstructed=reconstructed).set_index("feature")
    assert report.loc["grows", "fidelity"] > 0.98
    assert abs(report.loc["flat", "fidelity"]) < 0.1
    # The shortfall says how faithfully the decoder draws the feature.
    (fault,) = [f for f in judge_trends(report.reset_index()) if f.startswith("grows")]
    assert fault.endswith(f"rho {report.loc['grows', 'fidelity']:.3f})")
    without = trend_report(_faithful(0.1), cells, score, SIGMAS, ["grows"], ["flat"])
    assert without["fidelity"].isna().all()
    with pytest.raises(ValueError, match="499 reconstructions for 500 cells"):
        trend_report(_faithful(0.1), cells, score, SIGMAS, ["grows"], ["flat"],
                     reconstructed=reconstructed.iloc[1:])


def _report(rho_planted, c_planted, rho_control, c_control=None):
    rows = [{"feature": f"p{i}", "role": "planted", "rho": r, "c": c,
             "bound": float(trend_bound(c, SIGMAS))}
            for i, (r, c) in enumerate(zip(rho_planted, c_planted, strict=True))]
    c_control = c_control or [0.0] * len(rho_control)
    rows += [{"feature": f"c{i}", "role": "control", "rho": r, "c": c,
              "bound": float(trend_bound(c, SIGMAS))}
             for i, (r, c) in enumerate(zip(rho_control, c_control, strict=True))]
    return pd.DataFrame(rows)


def test_judge_names_each_shortfall():
    assert judge_trends(_report([0.8, 0.75], [0.8, 0.6], [0.1, -0.2])) == []
    short = judge_trends(_report([0.6, 0.75], [0.8, 0.6], [0.1]))
    assert len(short) == 1 and short[0].startswith("p0: rho 0.600 below 0.85 x bound")
    unspecific = judge_trends(_report([0.8, 0.75], [0.8, 0.6], [0.55]))
    assert len(unspecific) == 1 and "not above the controls' 0.550" in unspecific[0]
    # The margin a faithful decoder would show: here the planted 0.6 bound less a control's.
    assert unspecific[0].endswith(f"(the cells' bounds allow {trend_bound(0.6, SIGMAS):.3f})")
    (confounded,) = judge_trends(_report([0.8, 0.75], [0.8, 0.6], [0.6], c_control=[0.5]))
    allowed = trend_bound(0.6, SIGMAS) - trend_bound(0.5, SIGMAS)
    assert confounded.endswith(f"(the cells' bounds allow {allowed:.3f})") and allowed < 0.25
    # A trend against the data's sign, or none at all, fails.
    assert judge_trends(_report([-0.8], [0.8], [0.0]))
    assert judge_trends(_report([math.nan], [0.8], [0.0]))


def test_report_checks_its_inputs():
    with pytest.raises(ValueError, match="3 scores for 2 cells"):
        trend_report(_faithful(0.5), pd.DataFrame({"grows": [1, 2], "flat": [0, 1]}),
                     np.zeros(3), SIGMAS, ["grows"], ["flat"])
    with pytest.raises(ValueError, match="no 'sigma' column"):
        spearman_table(pd.DataFrame({"x": [1, 2, 3]}))


def test_trend_figure_shows_the_median_and_band_of_each_feature(tmp_path):
    table = _faithful(0.6, n_cells=50)
    fig = plot_trends(table, ["grows", "flat"], planted=["grows"], controls=["flat"])
    panels = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title().split("\n")[0] for ax in panels] == ["grows", "flat"]
    grows, flat = panels
    rho = spearman_table(table, ["grows"])["rho"].iloc[0]
    assert f"planted, rho {rho:.2f}" in grows.get_title() and "control, rho" in flat.get_title()
    assert grows.title.get_color() != flat.title.get_color()
    line = grows.get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), SIGMAS)
    np.testing.assert_allclose(line.get_ydata(), table.groupby("sigma")["grows"].median())
    band = grows.collections[0].get_paths()[0].vertices[:, 1]
    quartiles = table.groupby("sigma")["grows"].quantile([0.25, 0.75])
    assert band.min() == pytest.approx(quartiles.min()) and band.max() == pytest.approx(
        quartiles.max())
    fig.savefig(tmp_path / "trends.png")
    assert (tmp_path / "trends.png").stat().st_size > 1000


def _hypotheses():
    """An exaggeration drawing arms longer (strongly), the halo brighter, the body smaller and
    solidity flat; real cells where arms separate the classes, the halo does not, and the body
    is bigger in high cells (against the decoder's trend)."""
    rng = np.random.default_rng(3)
    rows = [{"cell": i, "sigma": s, "protrusion_length": 2.0 * s + rng.normal(),
             "halo_intensity": s + 2.0 * rng.normal(), "body_area": -s + 3.0 * rng.normal(),
             "solidity": rng.normal()} for i in range(20) for s in SIGMAS]
    labels = np.array(["high"] * 60 + ["low"] * 60 + ["unknown"] * 5)
    high = labels == "high"
    cells = pd.DataFrame({
        "protrusion_length": np.where(high, 2.0, 0.0) + rng.normal(size=125),
        "halo_intensity": rng.normal(size=125),
        "body_area": np.where(high, 1.5, 0.0) + rng.normal(size=125),
        "solidity": rng.normal(size=125),
    })
    return pd.DataFrame(rows), cells, labels


def test_the_strongest_trends_are_tested_on_real_cells_and_unsupported_ones_flagged():
    exaggerated, cells, labels = _hypotheses()
    table = real_cell_check(exaggerated, cells, labels, top=3).set_index("feature")
    # The three strongest trends, strongest first; solidity's flat trend is not a hypothesis.
    assert list(table.index) == ["protrusion_length", "halo_intensity", "body_area"]
    assert (table["cells"] == 120).all()  # the 5 unlabelled cells left out
    arms = table.loc["protrusion_length"]
    assert arms["auc"] > 0.85 and arms["ci_low"] > 0.75 and arms["ci_high"] <= 1.0
    assert arms["direction"] == "higher in high" and arms["flag"] == ""
    assert table.loc["halo_intensity", "ci_low"] < 0.5 < table.loc["halo_intensity", "ci_high"]
    assert table.loc["halo_intensity", "flag"].startswith("not shown by real cells")
    body = table.loc["body_area"]
    assert body["rho"] < 0 and body["auc"] > 0.75
    assert body["flag"] == "real cells show the opposite (higher in high)"
    again = real_cell_check(exaggerated, cells, labels, top=3).set_index("feature")
    pd.testing.assert_frame_equal(table, again)  # seeded


def test_real_cell_check_needs_both_classes_and_one_label_per_cell():
    exaggerated, cells, labels = _hypotheses()
    only_high = np.where(labels == "low", "high", labels)
    table = real_cell_check(exaggerated, cells, only_high, top=1)
    assert table["flag"].tolist() == ["real cells of only one class measured"]
    assert math.isnan(table["auc"].iloc[0])
    with pytest.raises(ValueError, match="124 labels for 125 cells"):
        real_cell_check(exaggerated, cells, labels[1:])
