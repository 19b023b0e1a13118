"""How far synthetic cells look from real ones.

A fixed appearance feature set and a cross-validated domain classifier between two sets of
single-cell windows measure it.

A window is a square image centred on one cell, :data:`WINDOW_PX` px at
:data:`lch.pixel_size.DEFAULT_PIXEL_SIZE_UM` (the paper's 83.2 µm crops). Each window is
scaled by its own robust levels before it is measured, ``(image - median) / (p99 - median)``,
so exposure, gain and an 8-bit display stretch do not tell the domains apart; what is left is
the appearance: the radial intensity profile around the centre, the intensity distribution, and
the distributions of local contrast (local SD) and of edges (gradient magnitude).

The classifier is a logistic regression on the standardised features, scored by ROC AUC over
stratified 5-fold cross-validation: 0.5 means the domains cannot be told apart by these
features, 1.0 that every window is recognised.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lch.pixel_size import DEFAULT_PIXEL_SIZE_UM
from lch.segmentation import local_sd
from lch.synth import make_cohort, read_truth

WINDOW_PX = 256
RING_PX = 8
RINGS = 14
INTENSITY_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.75, 0.9, 0.95, 0.995)
TEXTURE_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
LOCAL_SD_WINDOW = 5


def _scaled(window: np.ndarray) -> np.ndarray:
    img = np.asarray(window, dtype=np.float64)
    median, top = np.percentile(img, [50, 99])
    return (img - median) / max(top - median, 1e-9)


def radial_profile(image: np.ndarray, ring_px: int = RING_PX, rings: int = RINGS) -> np.ndarray:
    """Mean of ``image`` in ``rings`` concentric rings ``ring_px`` wide around its centre."""
    h, w = image.shape
    yy, xx = np.indices((h, w))
    ring = (np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) // ring_px).astype(int)
    inside = ring < rings
    sums = np.bincount(ring[inside], weights=image[inside], minlength=rings)
    counts = np.bincount(ring[inside], minlength=rings)
    return sums / np.maximum(counts, 1)


def feature_names() -> list[str]:
    """Names of :func:`appearance_features`' entries, in order."""
    return [
        *(f"ring_{i * RING_PX}px" for i in range(RINGS)),
        *(f"intensity_q{q:g}" for q in INTENSITY_QUANTILES),
        *(f"local_sd_q{q:g}" for q in TEXTURE_QUANTILES),
        *(f"gradient_q{q:g}" for q in TEXTURE_QUANTILES),
    ]


def appearance_features(window: np.ndarray) -> np.ndarray:
    """Measure the fixed feature vector of one window (module docstring)."""
    img = _scaled(window)
    gradient = np.hypot(ndimage.sobel(img, 0), ndimage.sobel(img, 1))
    return np.concatenate(
        [
            radial_profile(img),
            np.quantile(img, INTENSITY_QUANTILES),
            np.quantile(local_sd(img, LOCAL_SD_WINDOW), TEXTURE_QUANTILES),
            np.quantile(gradient, TEXTURE_QUANTILES),
        ]
    )


def domain_auc(
    real: Sequence[np.ndarray], synthetic: Sequence[np.ndarray], seed: int = 0
) -> float:
    """Cross-validated ROC AUC of a logistic regression telling ``synthetic`` from ``real``.

    The windows are told apart by :func:`appearance_features`, over 5 folds, stratified,
    shuffled with ``seed``.
    """
    if min(len(real), len(synthetic)) < 5:
        raise ValueError("each domain needs at least 5 windows for 5-fold cross-validation")
    features = np.stack([appearance_features(w) for w in [*real, *synthetic]])
    is_synthetic = np.r_[np.zeros(len(real)), np.ones(len(synthetic))]
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    scores = cross_val_predict(
        classifier, features, is_synthetic, cv=folds, method="predict_proba"
    )[:, 1]
    return float(roc_auc_score(is_synthetic, scores))


def cell_windows(
    frames: np.ndarray, labels: np.ndarray, *, pixel_size_um: float, seed: int = 0
) -> list[np.ndarray]:
    """Cut one window per labelled cell: :data:`WINDOW_PX` px at the paper's pixel size.

    Each is centred on the cell in a frame drawn with ``seed`` among those where the window
    stays in the frame.

    ``frames`` and ``labels`` are ``T x Y x X``; a movie of another pixel size is resampled to
    the paper's.
    """
    rng = np.random.default_rng(seed)
    half = int(round(WINDOW_PX * DEFAULT_PIXEL_SIZE_UM / 2 / pixel_size_um))
    out = []
    for cell in np.unique(labels[labels > 0]):
        for t in rng.permutation(len(frames)):
            where = np.argwhere(labels[t] == cell)
            if where.size == 0:
                continue
            cy, cx = np.round(where.mean(axis=0)).astype(int)
            if min(cy, cx) < half or cy + half > frames.shape[1] or cx + half > frames.shape[2]:
                continue
            window = frames[t, cy - half : cy + half, cx - half : cx + half].astype(np.float64)
            if window.shape[0] != WINDOW_PX:
                window = ndimage.zoom(window, WINDOW_PX / window.shape[0], order=1)
            out.append(window)
            break
    return out


def cohort_windows(cohort_dir: str | Path, seed: int = 0) -> list[np.ndarray]:
    """Cut the :func:`cell_windows` of every movie of a synthetic cohort.

    The cohort is one :func:`lch.synth.make_cohort` wrote; its truth labels say where the cells
    are.
    """
    folder = Path(cohort_dir)
    truth = read_truth(folder)
    windows = []
    for movie in truth["movies"]:
        frames = tifffile.imread(folder / "raw" / f"{movie['id']}.tif")
        labels = tifffile.imread(folder / movie["labels_path"])
        windows += cell_windows(frames, labels, pixel_size_um=truth["pixel_size_um"], seed=seed)
    return windows


def default_look_windows(n: int, seed: int = 0) -> list[np.ndarray]:
    """Draw ``n`` windows of :func:`lch.synth.make_cohort`'s default look, one cell each.

    The cohort (6 patients x 3 movies x 5 frames of 768 px, ``seed``) is drawn in a temporary
    folder; ``n`` of its cells are picked at random (fewer if it has fewer): the synthetic side
    of the domain check that ``bench/synth_realism.py`` prints and test_domain_gap asserts.
    """
    with tempfile.TemporaryDirectory() as tmp:
        make_cohort(tmp, patients=6, movies_per_patient=3, frames=5, size=(768, 768), seed=seed)
        windows = cohort_windows(tmp, seed)
    pick = np.random.default_rng(seed).choice(len(windows), min(n, len(windows)), replace=False)
    return [windows[i] for i in pick]
