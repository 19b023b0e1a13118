"""Split by patient, linear classifier and population scores on latent codes."""

from __future__ import annotations

import numpy as np
import pytest

from lch.classify import (
    SHRINKAGE_GRID,
    binary_labels,
    cell_auc,
    fit_classifier,
    fit_linear_classifier,
    patient_pair_folds,
    patient_split,
    population_draws,
)


def cohort(seed: int = 0):
    """7 high and 6 low patients, 30-80 cells each, plus an unlabelled patient."""
    rng = np.random.default_rng(seed)
    patients, labels = [], []
    for i in range(14):
        label = "high" if i < 7 else "low" if i < 13 else "unknown"
        n = int(rng.integers(30, 80))
        patients += [f"m{i:02d}"] * n
        labels += [label] * n
    return np.array(patients), np.array(labels)


def test_binary_labels_accepts_manifest_and_numeric_forms():
    got = binary_labels(["high", "LOW", "unknown", None, "", True, False, 1, 0, -1, np.nan])
    assert got.tolist() == [1, 0, -1, -1, -1, 1, 0, 1, 0, -1, -1]
    with pytest.raises(ValueError, match="unknown label 'medium'"):
        binary_labels(["high", "medium"])


@pytest.mark.parametrize("seed", range(5))
def test_patient_split_keeps_patients_apart(seed):
    patients, labels = cohort()
    train, test = patient_split(patients, labels, seed=seed)
    assert not np.any(train & test)
    assert set(patients[train]).isdisjoint(patients[test])
    # Exactly one patient of each class held out; every other labelled cell is for training.
    held_out = {p: labels[patients == p][0] for p in set(patients[test])}
    assert sorted(held_out.values()) == ["high", "low"]
    assert np.array_equal(train | test, labels != "unknown")
    assert set(labels[train]) == {"high", "low"}


def test_patient_split_is_seeded_and_varies():
    patients, labels = cohort()
    a = patient_split(patients, labels, seed=3)
    b = patient_split(patients, labels, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    held_out = {frozenset(patients[patient_split(patients, labels, seed=s)[1]]) for s in range(8)}
    assert len(held_out) > 1


def test_patient_split_by_fraction():
    patients, labels = cohort()
    _, test = patient_split(patients, labels, test_fraction=0.3, seed=1)
    test_patients = set(patients[test])
    # round(0.3 * 7) = 2 high, round(0.3 * 6) = 2 low.
    assert len(test_patients) == 4
    assert sorted(labels[patients == p][0] for p in test_patients) == ["high"] * 2 + ["low"] * 2


@pytest.mark.parametrize(
    ("patients", "labels", "match"),
    [
        (["a", "b"], ["unknown", "unknown"], "no labelled cells"),
        (["a", "b", "c"], ["high", "high", "unknown"], "only one class"),
        (["a", "b", "c"], ["high", "high", "low"], "too few 'low' patients.*c"),
        (["a", "a", "b", "c", "d"], ["high", "low", "high", "low", "low"], "patient 'a'"),
        (["a", "b"], ["high"], "differ in length"),
    ],
)
def test_patient_split_errors(patients, labels, match):
    with pytest.raises(ValueError, match=match):
        patient_split(patients, labels)


def test_patient_split_needs_more_patients_than_held_out():
    patients, labels = cohort()
    with pytest.raises(ValueError, match="too few 'low' patients for a split by patient: 6"):
        patient_split(patients, labels, n_test_per_class=6)


def planted_codes(n: int, seed: int, shift: float = 1.5):
    """Codes in 6-D where class high is shifted along a known direction."""
    rng = np.random.default_rng(seed)
    direction = np.array([1.0, -2.0, 0.0, 0.5, 0.0, 1.0])
    direction /= np.linalg.norm(direction)
    y = rng.integers(0, 2, n)
    z = rng.normal(size=(n, 6)) + shift * y[:, None] * direction
    return z, y, direction


def test_linear_classifier_finds_planted_direction():
    z, y, direction = planted_codes(2000, seed=0)
    w, b, estimator = fit_linear_classifier(z, y)
    assert w.shape == (6,) and isinstance(b, float)
    assert w @ direction / np.linalg.norm(w) > 0.98
    p = 1 / (1 + np.exp(-(z @ w + b)))
    assert np.allclose(p, estimator.predict_proba(z)[:, 1], atol=1e-10)
    # Held-out cells: an AUC near the Gaussian optimum Phi(shift / sqrt(2)) = 0.856.
    z_test, y_test, _ = planted_codes(2000, seed=1)
    auc = cell_auc(1 / (1 + np.exp(-(z_test @ w + b))), y_test)
    assert 0.82 < auc < 0.89


def test_shuffled_labels_give_chance_auc():
    z, y, _ = planted_codes(2000, seed=0)
    z_test, y_test, _ = planted_codes(4000, seed=1)
    w, b, _ = fit_linear_classifier(z, np.random.default_rng(7).permutation(y))
    p_test = 1 / (1 + np.exp(-(z_test @ w + b)))
    assert abs(cell_auc(p_test, np.random.default_rng(8).permutation(y_test)) - 0.5) < 0.04


def test_classifier_and_auc_errors():
    with pytest.raises(ValueError, match="only one class"):
        fit_linear_classifier(np.zeros((4, 2)), [1, 1, 1, 1])
    with pytest.raises(ValueError, match="found unknown"):
        cell_auc([0.1, 0.9], ["high", "unknown"])
    with pytest.raises(ValueError, match=r"z must be \(N, D\)"):
        fit_linear_classifier(np.zeros((3, 2)), [1, 0, 1, 0])


def test_cell_auc_value():
    assert cell_auc([0.1, 0.4, 0.35, 0.8], ["low", "low", "high", "high"]) == 0.75


def overlapping_populations(seed: int = 0):
    """12 lines (6 high, 6 low); single-cell P(high) overlaps, line means differ by 0.16."""
    rng = np.random.default_rng(seed)
    p, y, groups = [], [], []
    for line in range(12):
        high = line < 6
        n = int(rng.integers(40, 200))
        p.append(np.clip(rng.normal(0.58 if high else 0.42, 0.2, n), 0, 1))
        y += [int(high)] * n
        groups += [f"line{line}"] * n
    return np.concatenate(p), np.array(y), np.array(groups)


def test_pooling_cells_calls_populations():
    p, y, groups = overlapping_populations()
    single = population_draws(p, y, groups, k=1, n_draws=200, rng=np.random.default_rng(0))
    pooled = population_draws(p, y, groups, k=20, n_draws=200, rng=np.random.default_rng(0))
    # One cell: P(correct) = Phi(0.08 / 0.2) = 0.66; twenty: Phi(0.08 / (0.2 / sqrt 20)) = 0.96.
    assert 0.6 < single.accuracy() < 0.72
    assert 0.6 < single.auc() < 0.78
    assert pooled.accuracy() > 0.93
    assert pooled.auc() > 0.98
    again = population_draws(p, y, groups, k=20, n_draws=200, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(again.scores, pooled.scores)


def test_population_draws_small_groups_and_errors():
    p = np.array([0.9, 0.8, 0.2, 0.1, 0.3])
    y = np.array([1, 1, 0, 0, 0])
    groups = np.array(["a", "a", "b", "b", "b"])
    # Fewer cells than k: every population pools all of them, never one cell twice.
    draws = population_draws(p, y, groups, k=50, n_draws=10)
    assert (draws.accuracy(), draws.auc()) == (1.0, 1.0)
    assert list(draws.sizes) == [2, 3]
    np.testing.assert_allclose(draws.scores, [[0.85] * 10, [0.2] * 10])
    with pytest.raises(ValueError, match="group 'a' has cells labelled both"):
        population_draws(p, [1, 0, 0, 0, 0], groups)
    with pytest.raises(ValueError, match="only one class"):
        population_draws(p, np.zeros(5), groups)


def test_classifier_folds_leave_out_one_patient_of_each_class():
    patients = np.array(["h1", "h1", "h2", "l1", "l2", "l2", "l3"], dtype=object)
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    folds = patient_pair_folds(patients, y)
    assert len(folds) == 2 * 3
    for train_index, test_index in folds:
        held = set(patients[test_index])
        assert len(held) == 2 and set(y[test_index]) == {0, 1}
        assert not held & set(patients[train_index])
        assert len(train_index) + len(test_index) == len(patients)
    assert len(patient_pair_folds(patients, y, max_folds=4)) == 4
    assert patient_pair_folds(patients[2:], y[2:]) == []  # one high patient: nothing to leave out


def test_classifier_generalises_to_a_new_patient_and_matches_its_weights():
    rng = np.random.default_rng(0)
    patients, labels, codes = [], [], []
    for i, label in enumerate([1, 0, 1, 0, 1, 0]):
        z = rng.normal(size=(60, 8))
        z[:, 0] += 1.5 if label else -1.5  # the class signal, shared by every patient
        z[:, 1] += rng.normal(0, 2)  # a per-patient offset unrelated to the class
        patients += [f"p{i}"] * 60
        labels += [label] * 60
        codes.append(z)
    z, y, patients = np.concatenate(codes), np.array(labels), np.array(patients, dtype=object)
    train = ~np.isin(patients, ["p4", "p5"])
    w, b, estimator, shrinkage = fit_classifier(z[train], y[train], patients[train])
    assert shrinkage in SHRINKAGE_GRID
    p = estimator.predict_proba(z[~train])[:, 1]
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-(z[~train] @ w + b))), atol=1e-9)
    assert cell_auc(p, y[~train]) > 0.9
    # One patient per class: Ledoit-Wolf's shrinkage, as in lch.classify.
    pair = np.isin(patients, ["p0", "p1"])
    assert fit_classifier(z[pair], y[pair], patients[pair])[3] == "auto"
