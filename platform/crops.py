"""Fixed-size, background-normalised single-cell crops for the autoencoder.

Field of view: a crop shows a square of :data:`DEFAULT_FIELD_OF_VIEW_UM` µm (the paper's 256 px
at 0.325 µm) around the cell, resampled to ``size`` px (default 64), so movies of different
pixel sizes give crops of one physical scale: ``field_of_view_um / size`` µm per crop pixel.
The frame is low-passed before it is sampled more coarsely (skimage's ``resize`` rule,
sigma = (scale - 1) / 2), so the texture does not alias.

Normalisation: the frame's relative contrast to its smooth background (estimated with the cells
masked out), ``frame / background - 1``, is measured in units of its own spread over the
background pixels (robust SD) and compressed into [0, 1] with the background at
:data:`BACKGROUND_VALUE` = 0.5::

    crop = 0.5 + 0.5 * tanh(contrast / (CONTRAST_SDS * spread))

Dividing by the background removes uneven illumination; dividing by the spread removes exposure
and gain (and a camera offset, as far as the background is even), so raw camera frames and
display-stretched 8-bit images (a nearly black background, bright cells) both fill the range;
``tanh`` keeps the order of intensities instead of clipping the brightest parts. Because the
spread comes from the background, not the cells, a brighter halo in one movie than another stays
brighter in its crops.
:func:`lch.morphology.measure_crop` therefore measures the halo and body contrast of a crop on
this compressed scale, ``tanh(contrast / (CONTRAST_SDS * spread))``, a monotonic function of
what :func:`lch.morphology.measure_cells` measures on the frame.

Orientation: each crop is centred on the cell's centroid and rotated so that the point of the
cell farthest from it (the tip of its longest arm, or the long end of the body) points along
+x. Arms grow at random angles; unaligned, "has an arm" is no direction in the autoencoder's
latent space and exaggeration blurs arms into a faint ring; aligned, the dominant arm sits at
one place and pushing a code towards "high" draws it out. The morphometrics are
rotation-invariant, so the cell table does not depend on it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage

from lch.pixel_size import DEFAULT_PIXEL_SIZE_UM, check_pixel_size, um_to_px
from lch.segmentation import check_frame, estimate_background, robust_spread

BACKGROUND_VALUE = 0.5
DEFAULT_CROP_SIZE = 64
DEFAULT_FIELD_OF_VIEW_UM = 83.2
# The segmenter's own minimum cell area; smaller objects are debris.
DEFAULT_MIN_AREA_UM2 = 25.0
# The background's scales, in µm: cells (with their halos, beyond the segmented outline) are
# kept out of tiles large enough to hold background beside them.
CELL_MARGIN_UM = 4.0
BACKGROUND_TILE_UM = 20.8
# Background spreads (at crop resolution) mapped to tanh(1): real cells reach 20-60 of them.
CONTRAST_SDS = 30.0


def relative_contrast(
    frame: np.ndarray,
    labels: np.ndarray,
    scale: float = 1.0,
    *,
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM,
) -> tuple[np.ndarray, float]:
    """Compute ``frame / background - 1`` (float64) and its robust SD over the background.

    The contrast is low-passed for sampling every ``scale`` pixels, and its SD is measured over
    the background pixels at that resolution.

    Measuring the spread after the low-pass makes it the noise of one crop pixel, so frames of
    different pixel sizes cut to one field of view get the same contrast scale.

    Raises
    ------
    ValueError
        If the frame is invalid (see :func:`lch.segmentation.check_frame`), its background is
        not positive anywhere, or the background pixels do not vary at all.
    """
    img = check_frame(frame)
    if np.shape(labels) != img.shape:
        raise ValueError(f"labels {np.shape(labels)} do not match the frame {img.shape}")
    px = check_pixel_size(pixel_size_um)
    margin = um_to_px(CELL_MARGIN_UM, px)
    cells = ndimage.binary_dilation(np.asarray(labels) > 0, iterations=margin)
    background = estimate_background(img, mask=cells, block=max(8, round(BACKGROUND_TILE_UM / px)))
    if np.any(background <= 0):
        raise ValueError(
            "background estimate is not positive; crops need a background brighter than 0"
        )
    contrast = img / background - 1.0
    if scale > 1:
        contrast = ndimage.gaussian_filter(contrast, sigma=(scale - 1) / 2, mode="nearest")
    outside = contrast[~cells] if np.any(~cells) else contrast.ravel()
    spread = robust_spread(outside)
    if not spread > 0:
        raise ValueError("the background does not vary at all (no noise): not a camera frame")
    return contrast, spread


def compress_contrast(contrast: np.ndarray | float, spread: float) -> np.ndarray:
    """Crop values ``0.5 + 0.5 * tanh(contrast / (CONTRAST_SDS * spread))`` (float32)."""
    scaled = np.asarray(contrast, dtype=np.float64) / (CONTRAST_SDS * spread)
    return (BACKGROUND_VALUE + 0.5 * np.tanh(scaled)).astype(np.float32)


def normalise_frame(
    frame: np.ndarray,
    labels: np.ndarray,
    scale: float = 1.0,
    *,
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM,
) -> np.ndarray:
    """Put the frame on the crops' scale (module docstring), ready to sample every ``scale`` px.

    The background is estimated without the cells.

    Raises
    ------
    ValueError
        See :func:`relative_contrast`.
    """
    return compress_contrast(
        *relative_contrast(frame, labels, scale, pixel_size_um=pixel_size_um)
    )


def farthest_angle(mask: np.ndarray, centre: tuple[float, float]) -> float:
    """Return the direction of the ``mask`` pixel farthest from ``centre`` (row, col).

    In radians, from +x towards +y (image rows pointing down); 0 for an empty mask.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return 0.0
    dy, dx = rows - centre[0], cols - centre[1]
    k = int(np.argmax(dy * dy + dx * dx))
    return math.atan2(float(dy[k]), float(dx[k]))


def crop_pixel_size(field_of_view_um: float, size: int) -> float:
    """µm per crop pixel of crops showing ``field_of_view_um`` µm in ``size`` px."""
    return float(field_of_view_um) / int(size)


def oriented_crop(
    image: np.ndarray,
    centre: tuple[float, float],
    angle: float,
    size: int,
    fill: float,
    scale: float = 1.0,
) -> np.ndarray:
    """Cut the ``size`` x ``size`` crop of ``image`` centred on ``centre`` and rotated.

    ``centre`` is (row, col), sub-pixel; the crop is rotated so that direction ``angle`` points
    along +x; outside the image is ``fill``.

    ``scale`` is the number of image pixels per crop pixel (the crop covers ``size * scale``
    image pixels); the caller low-passes the image first when it is above 1. One linear
    interpolation does the sub-pixel centring, the rotation and the resampling.
    """
    cos, sin = math.cos(angle), math.sin(angle)
    # Output (row, col) relative to the crop centre → input offset from ``centre``: output +x
    # (0, 1) samples the input along (sin, cos), i.e. along ``angle``.
    matrix = scale * np.array([[cos, sin], [-sin, cos]])
    half = (size - 1) / 2.0
    offset = np.asarray(centre, dtype=float) - matrix @ np.array([half, half])
    out = ndimage.affine_transform(
        np.asarray(image, dtype=np.float32),
        matrix,
        offset=offset,
        output_shape=(size, size),
        order=1,
        mode="constant",
        cval=fill,
    )
    return out.astype(np.float32, copy=False)


def align_crop(
    crop: np.ndarray,
    fill: float = BACKGROUND_VALUE,
    *,
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM,
) -> np.ndarray:
    """Re-centre a single-cell crop on its cell and rotate it as :func:`cut_crops` does.

    For crops cut by other tools. The cell is the object nearest the centre
    (:func:`lch.segmentation.segment_frame` at the crop's ``pixel_size_um``); a crop without one
    is returned unchanged.
    """
    from lch.morphology import central_mask  # morphology imports this module's neighbours

    arr = check_frame(crop)
    mask = central_mask(arr, pixel_size_um)
    if mask is None:
        return np.asarray(crop, dtype=np.float32)
    centre = ndimage.center_of_mass(mask)
    return oriented_crop(arr, centre, farthest_angle(mask, centre), arr.shape[0], fill)


def _drop_reason(row: pd.Series, shape, min_area: float, max_area: float) -> str:
    if row["area"] < min_area:
        return "too_small"
    if row["area"] > max_area:
        return "too_large"
    # A cell cut by the frame edge is incomplete; a window that only reaches past it is padded.
    if (row["bbox_min_row"] <= 0 or row["bbox_min_col"] <= 0
            or row["bbox_max_row"] >= shape[0] or row["bbox_max_col"] >= shape[1]):
        return "border"
    return ""


def cut_crops(
    frame: np.ndarray,
    labels: np.ndarray,
    table: pd.DataFrame,
    size: int = DEFAULT_CROP_SIZE,
    *,
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM,
    field_of_view_um: float = DEFAULT_FIELD_OF_VIEW_UM,
    min_area_um2: float = DEFAULT_MIN_AREA_UM2,
    max_area_um2: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut one normalised crop per cell.

    Each shows ``field_of_view_um`` µm around its centroid, resampled to ``size`` x ``size`` px
    and rotated so that its farthest point lies along +x (see the module docstring).

    Parameters
    ----------
    frame
        2-D raw frame.
    labels
        Its label image (used to keep cells out of the background estimate).
    table
        One row per cell with at least ``label``, ``centroid_y``, ``centroid_x``, ``area`` (px)
        and the bounding box (e.g. :func:`lch.morphology.measure_cells`).
    size
        Crop side in px.
    pixel_size_um
        The frame's pixel size.
    field_of_view_um
        Side of the square the crop shows, in µm.
    min_area_um2, max_area_um2
        Cells outside ``[min_area_um2, max_area_um2]`` are dropped; ``max_area_um2`` defaults
        to a quarter of the field of view (a bigger object would not fit with its
        surroundings).

    Returns
    -------
    crops : numpy.ndarray of float32, shape (N, size, size), values in [0, 1]
        One crop per kept row, in table order; background (and whatever lies outside the
        frame) at :data:`BACKGROUND_VALUE`.
    keep : numpy.ndarray of bool, shape (len(table),)
    drop_reason : numpy.ndarray of str, shape (len(table),)
        ``""`` when kept, else ``"too_small"``, ``"too_large"`` or ``"border"`` (the cell
        touches the frame edge); checked in that order.
    """
    px = check_pixel_size(pixel_size_um)
    if not field_of_view_um > 0:
        raise ValueError(f"field of view {field_of_view_um!r} µm must be positive")
    max_area_um2 = field_of_view_um**2 / 4 if max_area_um2 is None else max_area_um2
    shape = np.shape(frame)
    reasons = [_drop_reason(row, shape, min_area_um2 / px**2, max_area_um2 / px**2)
               for _, row in table.iterrows()]
    drop_reason = np.array(reasons, dtype=str)
    keep = drop_reason == ""
    if not keep.any():
        return np.zeros((0, size, size), np.float32), keep, drop_reason
    scale = field_of_view_um / px / size
    norm = normalise_frame(frame, labels, scale, pixel_size_um=px)
    crops = np.stack([_cell_crop(norm, labels, row, size, scale)
                      for _, row in table.loc[keep].iterrows()])
    return crops, keep, drop_reason


def _cell_crop(
    norm: np.ndarray, labels: np.ndarray, row: pd.Series, size: int, scale: float
) -> np.ndarray:
    r0, c0 = int(row["bbox_min_row"]), int(row["bbox_min_col"])
    window = (slice(r0, int(row["bbox_max_row"])), slice(c0, int(row["bbox_max_col"])))
    centre = (float(row["centroid_y"]), float(row["centroid_x"]))
    local = (centre[0] - r0, centre[1] - c0)
    angle = farthest_angle(np.asarray(labels)[window] == row["label"], local)
    return oriented_crop(norm, centre, angle, size, BACKGROUND_VALUE, scale)
