"""The segmenter that lch.segmentation replaced (as it stood before the real cells arrived),
kept only as bench/segment_real.py's baseline. Not used by LCH.

Segmentation of single phase-contrast frames (scikit-image).

The method assumes positive phase contrast as in label-free melanoma movies: cells are darker
than the background and surrounded by a bright halo. It works on any intensity scale (raw
uint16 counts, or float crops in [0, 1]) because every threshold is derived from the image:

1. background flattening: subtract a smooth background (block medians, bilinearly upsampled);
2. texture: local standard deviation of the lightly smoothed, flattened image — dark bodies and
   bright halos are both high-texture against a flat background; Otsu on the texture image gives
   the cell neighbourhoods (body + halo);
3. a significance test: the texture threshold must clearly exceed the background's typical
   texture, otherwise the frame holds no cells and an all-zero label image is returned;
4. the cell itself: pixels of a cell neighbourhood that are darker than the background by more
   than the background's noise;
5. the outline: within a couple of px of that mask's edge, a pixel belongs to the cell where the
   Laplacian of Gaussian is positive, i.e. on the dark side of the steepest edge. The optics blur
   the bright halo into the cell's rim, so the darkness test alone puts the outline further
   inside the brighter the halo (a 10-px-radius cell measured 386 px at halo gain 0.1 and 303 px
   at 0.6; true 314) and loses thin arms between bright halos; the LoG zero crossing stays at the
   edge (317 to 310 px);
6. small closing, hole filling, small-object removal, labelling.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import filters, measure, morphology

from lch.segmentation import check_frame, estimate_background, steepest_edge_outline

DEFAULT_MIN_AREA = 40


def local_std(image: np.ndarray, window: int) -> np.ndarray:
    """Standard deviation in a ``window`` x ``window`` neighbourhood of every pixel."""
    mean = ndimage.uniform_filter(image, window)
    mean_sq = ndimage.uniform_filter(image * image, window)
    return np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))


def _robust_sd(values: np.ndarray) -> float:
    if values.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def segment_frame(
    frame: np.ndarray,
    *,
    min_area: int = DEFAULT_MIN_AREA,
    smoothing: float = 1.0,
    texture_window: int = 5,
    min_texture_ratio: float = 3.0,
    noise_factor: float = 3.0,
    edge_sigma: float = 1.0,
    edge_band: int = 2,
) -> np.ndarray:
    """Label the cells of one phase-contrast frame.

    Parameters
    ----------
    frame
        2-D image on any intensity scale (uint16 counts, float in [0, 1], ...).
    min_area
        Objects smaller than this many px are dropped.
    smoothing
        Gaussian sigma (px) applied after background flattening, against pixel noise.
    texture_window
        Side (px) of the local standard deviation window.
    min_texture_ratio
        The Otsu threshold of the texture image must be this many times the lower-quartile
        texture (the background's) for the frame to be considered to contain cells at all.
    noise_factor
        Cell pixels are darker than the background by this many background noise SDs.
    edge_sigma
        Gaussian sigma (px) of the Laplacian of Gaussian that places the outline.
    edge_band
        How far (px) the outline may move from the darkness test's edge, inwards or outwards.

    Returns
    -------
    numpy.ndarray of int32
        Label image, 0 = background, cells numbered 1..N.

    Raises
    ------
    ValueError
        If the frame is not 2-D, contains NaN/inf, or is constant.
    """
    img = check_frame(frame)
    flattened = img - estimate_background(img)
    flat = filters.gaussian(flattened, sigma=smoothing, preserve_range=True)
    texture = local_std(flat, texture_window)
    threshold = filters.threshold_otsu(texture)
    # The lower quartile, not the median: a single-cell crop whose arms and halo fill more than
    # half of it (an exaggerated decoded cell) still has background in its corners.
    if threshold <= min_texture_ratio * np.percentile(texture, 25):
        return np.zeros(img.shape, dtype=np.int32)
    near_cells = texture > threshold
    # Halos extend a few px beyond the textured band; keep them out of the noise estimate.
    background = ~ndimage.binary_dilation(near_cells, morphology.disk(texture_window))
    noise = _robust_sd(flat[background])
    # Floor for noise-free (decoded) images: 5 % of the darkest contrast.
    darkest = float(-np.percentile(flat[near_cells], 1)) if near_cells.any() else 0.0
    dark = near_cells & (flat < -max(noise_factor * noise, 0.05 * max(darkest, 0.0)))
    return _clean_labels(steepest_edge_outline(flattened, dark, edge_sigma, edge_band), min_area)


def _clean_labels(mask: np.ndarray, min_area: int) -> np.ndarray:
    # Pad so that closing does not erode cells cut by the frame edge.
    padded = np.pad(mask, 1, mode="edge")
    mask = ndimage.binary_closing(padded, morphology.disk(1))[1:-1, 1:-1]
    mask = ndimage.binary_fill_holes(mask)
    labels = measure.label(mask, connectivity=2)
    sizes = np.bincount(labels.ravel())
    big = sizes >= min_area
    big[0] = False
    return measure.label(big[labels], connectivity=2).astype(np.int32)
