"""The domain classifier that says how far synthetic cells look from the paper's real ones."""

from __future__ import annotations

import numpy as np
import pytest

from lch.domain_gap import (
    WINDOW_PX,
    appearance_features,
    cohort_windows,
    default_look_windows,
    domain_auc,
    feature_names,
    radial_profile,
)
from lch.synth import make_cohort

from real_cells import real_images


@pytest.fixture(scope="module")
def real():
    return [image for _, image, _ in real_images()]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Windows of the plain look (solid dark discs on a light background)."""
    folder = tmp_path_factory.mktemp("domain")
    make_cohort(folder, name="dom", patients=2, movies_per_patient=1, frames=2,
                size=(384, 384), seed=4, look="plain")
    return cohort_windows(folder)


@pytest.fixture(scope="module")
def real_look(real):
    """62 windows of the default look, the ones bench/synth_realism.py measures for seed 0."""
    windows = default_look_windows(len(real), seed=0)
    assert len(windows) == len(real)
    return windows


def test_radial_profile_of_a_centred_disc():
    yy, xx = np.indices((64, 64))
    disc = (np.hypot(yy - 31.5, xx - 31.5) < 16).astype(float)
    profile = radial_profile(disc, ring_px=8, rings=4)
    np.testing.assert_allclose(profile, [1, 1, 0, 0])


def test_features_ignore_exposure_and_gain(real):
    features = appearance_features(real[0])
    assert features.shape == (len(feature_names()),)
    np.testing.assert_allclose(appearance_features(3.0 * real[0] + 200.0), features, atol=1e-9)


def test_windows_are_centred_on_their_cells(synthetic, real_look):
    assert len(synthetic) >= 20
    assert {w.shape for w in [*synthetic, *real_look]} == {(WINDOW_PX, WINDOW_PX)}
    centre = WINDOW_PX // 2
    # The plain look's cells are darker than the background at their centre, the real look's
    # bodies brighter.
    assert np.median([w[centre, centre] < np.median(w) for w in synthetic]) == 1
    assert np.median([w[centre, centre] > np.median(w) for w in real_look]) == 1


def test_real_cells_are_not_told_from_real_cells(real):
    order = np.random.default_rng(0).permutation(len(real))
    half = len(real) // 2
    auc = domain_auc([real[i] for i in order[:half]], [real[i] for i in order[half:]])
    assert auc < 0.75


def test_the_plain_look_is_told_from_real_cells(real, synthetic):
    """The first image model: solid dark discs on a light background."""
    assert domain_auc(real, synthetic) > 0.95


def test_the_real_look_is_hard_to_tell_from_real_cells(real, real_look):
    """Issue 15 asks for <= 0.85; bench/synth_realism.py prints it for more seeds."""
    auc = domain_auc(real, real_look)
    print(f"\ndomain ROC AUC, real look: {auc:.3f}")
    assert auc <= 0.85


def test_too_few_windows_are_refused(real):
    with pytest.raises(ValueError, match="at least 5"):
        domain_auc(real[:4], real[4:10])
