"""Segmentation of single phase-contrast frames (scikit-image), and object-level scoring.

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
from scipy.optimize import linear_sum_assignment
from skimage import filters, measure, morphology
from skimage.transform import resize

DEFAULT_MIN_AREA = 40
BACKGROUND_BLOCK = 32


def check_frame(frame: np.ndarray) -> np.ndarray:
    """Validate one 2-D frame and return it as float64.

    Raises
    ------
    ValueError
        If the frame is not 2-D, contains NaN/inf, or is constant.
    """
    arr = np.asarray(frame)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D frame, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("frame is empty (zero pixels)")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("frame contains NaN or infinite values")
    if arr.max() == arr.min():
        raise ValueError(f"frame is constant (every pixel = {arr.flat[0]!r}); nothing to segment")
    return arr


def _block_edges(n: int, block: int) -> np.ndarray:
    n_blocks = max(1, n // block)
    return np.linspace(0, n, n_blocks + 1).round().astype(int)


def estimate_background(
    image: np.ndarray, mask: np.ndarray | None = None, *, block: int = BACKGROUND_BLOCK
) -> np.ndarray:
    """Smooth background: medians of ``block``-sized tiles, bilinearly upsampled.

    Parameters
    ----------
    image
        2-D image.
    mask
        Optional boolean image of pixels to ignore (e.g. dilated cells). Tiles left without
        pixels take the median of the other tiles.
    block
        Tile size in px; images smaller than two tiles get one tile (a constant background).

    Returns
    -------
    numpy.ndarray of float64, same shape as ``image``.
    """
    img = np.asarray(image, dtype=np.float64)
    values = img if mask is None else np.where(mask, np.nan, img)
    ye, xe = _block_edges(img.shape[0], block), _block_edges(img.shape[1], block)
    grid = np.full((len(ye) - 1, len(xe) - 1), np.nan)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            tile = values[ye[i] : ye[i + 1], xe[j] : xe[j + 1]]
            if np.any(~np.isnan(tile)):
                grid[i, j] = np.nanmedian(tile)
    if np.all(np.isnan(grid)):
        grid[:] = np.median(img)
    grid[np.isnan(grid)] = np.nanmedian(grid)
    if grid.size == 1:
        return np.full(img.shape, grid.flat[0])
    return resize(grid, img.shape, order=1, mode="edge", anti_aliasing=False)


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


def steepest_edge_outline(
    image: np.ndarray, mask: np.ndarray, sigma: float = 1.0, band: int = 2
) -> np.ndarray:
    """Move the outline of dark objects to the steepest edge of ``image``.

    Parameters
    ----------
    image
        Background-flattened 2-D image (objects darker than 0).
    mask
        Boolean mask of the dark objects from a threshold.
    sigma
        Gaussian sigma (px) of the Laplacian of Gaussian.
    band
        Pixels deeper than ``band`` px inside ``mask`` are kept; within ``band`` px of its
        edge, on either side, a pixel is in the object where the LoG is positive.

    Returns
    -------
    numpy.ndarray of bool
    """
    footprint = morphology.disk(band)
    core = ndimage.binary_erosion(mask, footprint)
    rim = ndimage.binary_dilation(mask, footprint) & (ndimage.gaussian_laplace(image, sigma) > 0)
    return core | rim


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


def _overlaps(pred: np.ndarray, true: np.ndarray):
    """Pixel counts of every (pred label, true label) pair that overlaps."""
    both = (pred > 0) & (true > 0)
    pairs, counts = np.unique(
        np.stack([pred[both], true[both]]).astype(np.int64), axis=1, return_counts=True
    )
    return pairs[0], pairs[1], counts


def object_f1(
    pred_labels: np.ndarray, true_labels: np.ndarray, iou_threshold: float = 0.5
) -> dict[str, float | int]:
    """Object-level precision, recall and F1 with one-to-one matching at IoU >= threshold.

    Parameters
    ----------
    pred_labels, true_labels
        Label images of the same shape (0 = background).
    iou_threshold
        A predicted and a true object match if their intersection over union reaches this.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1`` (1.0 when both images are empty), ``matched``,
        ``n_pred`` and ``n_true``.
    """
    pred, true = np.asarray(pred_labels), np.asarray(true_labels)
    if pred.shape != true.shape:
        raise ValueError(f"shapes differ: pred {pred.shape} vs true {true.shape}")
    pred_ids, pred_area = np.unique(pred[pred > 0], return_counts=True)
    true_ids, true_area = np.unique(true[true > 0], return_counts=True)
    n_pred, n_true = len(pred_ids), len(true_ids)
    matched = 0
    if n_pred and n_true:
        p, t, inter = _overlaps(pred, true)
        pi, ti = np.searchsorted(pred_ids, p), np.searchsorted(true_ids, t)
        iou = np.zeros((n_pred, n_true))
        iou[pi, ti] = inter / (pred_area[pi] + true_area[ti] - inter)
        rows, cols = linear_sum_assignment(iou, maximize=True)
        matched = int(np.sum(iou[rows, cols] >= iou_threshold))
    precision = matched / n_pred if n_pred else float(n_true == 0)
    recall = matched / n_true if n_true else float(n_pred == 0)
    total = precision + recall
    f1 = 2 * precision * recall / total if total else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "matched": matched,
        "n_pred": n_pred,
        "n_true": n_true,
    }
