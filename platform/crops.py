"""Fixed-size, background-normalised single-cell crops for the autoencoder.

Normalisation: the frame is divided by its smooth background (estimated with the cells masked
out) and scaled so that the background sits at :data:`BACKGROUND_VALUE` = 0.5::

    crop = clip(0.5 * frame / background, 0, 1)

This flat-field ratio removes exposure and uneven illumination, so crops are comparable across
movies and patients; it represents up to twice the background brightness (phase-contrast halos
stay well below), fits a sigmoid / binary cross-entropy decoder, and keeps intensity ratios to
the background unchanged, so :func:`lch.morphology.measure_crop` on a crop gives the same halo
and body contrast as :func:`lch.morphology.measure_cells` on the frame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from lch.segmentation import check_frame, estimate_background

BACKGROUND_VALUE = 0.5
DEFAULT_MIN_AREA = 60
# Cells near the segmentation's own texture halo must not bias the background.
CELL_MARGIN = 6


def normalise_frame(frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``clip(0.5 * frame / background, 0, 1)`` as float32, the background estimated without cells.

    Raises
    ------
    ValueError
        If the frame is invalid (see :func:`lch.segmentation.check_frame`) or its background is
        not positive anywhere (the ratio needs intensities proportional to light).
    """
    img = check_frame(frame)
    if np.shape(labels) != img.shape:
        raise ValueError(f"labels {np.shape(labels)} do not match the frame {img.shape}")
    cells = ndimage.binary_dilation(np.asarray(labels) > 0, iterations=CELL_MARGIN)
    background = estimate_background(img, mask=cells)
    if np.any(background <= 0):
        raise ValueError(
            "background estimate is not positive; crops need intensities proportional to light"
        )
    return np.clip(BACKGROUND_VALUE * img / background, 0.0, 1.0).astype(np.float32)


def _drop_reason(row: pd.Series, size: int, shape, min_area: int, max_area: int) -> str:
    if row["area"] < min_area:
        return "too_small"
    if row["area"] > max_area:
        return "too_large"
    y0, x0 = _corner(row, size)
    if y0 < 0 or x0 < 0 or y0 + size > shape[0] or x0 + size > shape[1]:
        return "border"
    return ""


def _corner(row: pd.Series, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` window centred on the cell's centroid."""
    half = size // 2
    return int(round(row["centroid_y"])) - half, int(round(row["centroid_x"])) - half


def cut_crops(
    frame: np.ndarray,
    labels: np.ndarray,
    table: pd.DataFrame,
    size: int = 64,
    *,
    min_area: int = DEFAULT_MIN_AREA,
    max_area: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut one normalised ``size`` x ``size`` crop per cell, centred on its centroid.

    Parameters
    ----------
    frame
        2-D raw frame.
    labels
        Its label image (used to keep cells out of the background estimate).
    table
        One row per cell with at least ``centroid_y``, ``centroid_x`` and ``area``
        (e.g. :func:`lch.morphology.measure_cells`).
    size
        Crop side in px.
    min_area, max_area
        Cells outside ``[min_area, max_area]`` px are dropped; ``max_area`` defaults to a
        quarter of the crop's area (a bigger object would not fit with its surroundings).

    Returns
    -------
    crops : numpy.ndarray of float32, shape (N, size, size), values in [0, 1]
        One crop per kept row, in table order; background at :data:`BACKGROUND_VALUE`.
    keep : numpy.ndarray of bool, shape (len(table),)
    drop_reason : numpy.ndarray of str, shape (len(table),)
        ``""`` when kept, else ``"too_small"``, ``"too_large"`` or ``"border"`` (the window
        leaves the frame); checked in that order.
    """
    max_area = size * size // 4 if max_area is None else max_area
    reasons = [
        _drop_reason(row, size, np.shape(frame), min_area, max_area) for _, row in table.iterrows()
    ]
    drop_reason = np.array(reasons, dtype=str)
    keep = drop_reason == ""
    if not keep.any():
        return np.zeros((0, size, size), np.float32), keep, drop_reason
    norm = normalise_frame(frame, labels)
    corners = [_corner(row, size) for _, row in table.loc[keep].iterrows()]
    crops = np.stack([norm[y : y + size, x : x + size] for y, x in corners])
    return crops.astype(np.float32), keep, drop_reason
