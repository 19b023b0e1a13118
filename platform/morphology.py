"""Cell morphometrics: one function for segmented cells in frames and for decoded crops.

Features (one row per label; lengths in px, intensities as noted). The scales that find them
(opening, halo ring, background annulus) are in µm, so a cell measures alike at any pixel size.

- ``area``, ``perimeter``, ``eccentricity``, ``solidity``, centroid and bounding box
  (scikit-image ``regionprops``; ``bbox_max_*`` are exclusive).
- ``body_area``: area of the body without its arms: the size control that arms do not
  inflate. The body is the cell's bright core where it has one (:func:`bright_core`: the
  part brighter than halfway from the background to the cell's brightest, holes filled, when
  that is compact and at least :data:`CORE_FRACTION` of the opened mask: a phase-bright body,
  or a rim around a darker interior), else the opened mask (see below). An outline drawn from
  texture takes in some of a bright halo, the more the brighter the halo; the bright core
  takes in less, but not none where the halo adjoins the rim at nearly its level (a blurred
  halo on a tanh-compressed crop, :mod:`lch.crops`), so there a brighter halo still reads as a
  larger body.
- On a crop (:func:`measure_crop`) the mask is the segmenter's object plus the thin dark lines
  leaving it (arms too thin at the crop's coarse pixels for the texture outline to follow).
- ``protrusion_count`` / ``protrusion_length``: thin arm-like extensions found by a
  morphological top-hat of the mask. The mask is opened with a disk of radius
  ``opening_radius_um`` (removing every part narrower than about twice that: the arms)
  and each connected component of *mask minus opening* is a candidate arm. Its length is the
  largest distance of its pixels from the opened body, i.e. how far it reaches beyond the body
  edge. Candidates shorter than ``min_protrusion_length_um`` (outline ruggedness) are ignored.
  ``protrusion_length`` is the mean length of the counted arms (0 when there are none).
- ``protrusion_reach``: how far the longest thin extension reaches beyond the body, in px, with
  no minimum (0 when the mask has no part narrower than the opening). Unlike the count and the
  mean length it grows smoothly as an arm grows out of the body, which is what a decoded image
  shows as a code moves along the discriminant direction.
- ``mean_intensity``: mean raw intensity inside the mask.
- ``background``: local background, the median intensity in an annulus ``background_gap_um`` to
  ``background_gap_um + background_width_um`` outside the mask (other cells and their surroundings
  excluded).
- ``body_contrast``: ``(mean intensity of the body - background) / background``, the body as
  for ``body_area``: the brightness control, which arms (a dim core) and a halo the outline took
  in do not change.
- ``halo_intensity`` (light scattering): ``(mean of a ring ring_width_um wide, from halo_gap_um
  out from the body, outside the body and the arms - background) / background``. The ring
  follows the body, so that a cell's arms do not dilute its halo, and may lie within an outline
  that took in the halo. Dividing by the local background makes it
  independent of exposure and uneven illumination, so it is comparable across frames, movies and
  patients; it assumes intensities proportional to light (no camera offset). On crops
  (:mod:`lch.crops`, a compressed contrast) it keeps its sign and order, not its frame value.
  NaN where the background is not positive or the annuli are empty.
- ``touches_border``: the mask reaches the image edge (features are then truncated).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage import measure, morphology

from lch.pixel_size import DEFAULT_PIXEL_SIZE_UM, check_pixel_size, um_to_px
from lch.segmentation import (
    COMPACT_SOLIDITY,
    attach_dark_lines,
    check_frame,
    largest_object,
    mask_solidity,
    segment_frame,
)

OPENING_RADIUS_UM = 1.95
MIN_PROTRUSION_LENGTH_UM = 2.6
# The halo ring starts HALO_GAP_UM out: nearer, the optics blur the body's own light into it
# and outlines from different segmenters differ.
HALO_GAP_UM = 0.65
RING_WIDTH_UM = 1.95
BACKGROUND_GAP_UM = 5.2
BACKGROUND_WIDTH_UM = 6.5
# A compact bright core is the body when it covers this share of the opened mask (less: a few
# bright granules); low enough that processes wider than the opening, or a blurred halo taken
# into the outline, do not hide a body that is there.
CORE_FRACTION = 0.15

POSITION_COLUMNS = [
    "label",
    "centroid_y",
    "centroid_x",
    "bbox_min_row",
    "bbox_min_col",
    "bbox_max_row",
    "bbox_max_col",
]
"""The columns that say where a cell sits rather than what it looks like."""
FEATURE_COLUMNS = [
    *POSITION_COLUMNS,
    "area",
    "body_area",
    "perimeter",
    "eccentricity",
    "solidity",
    "protrusion_count",
    "protrusion_length",
    "protrusion_reach",
    "mean_intensity",
    "background",
    "body_contrast",
    "halo_intensity",
    "touches_border",
]


def extension_reaches(
    mask: np.ndarray, *, opening_radius: int
) -> tuple[np.ndarray, list[float]]:
    """Split one cell mask into its body and its thin extensions (see the module docstring).

    Returns
    -------
    body : numpy.ndarray of bool
        The mask opened by a disk of radius ``opening_radius`` (same shape as ``mask``).
    reaches : list of float
        For every part of the mask outside the body, how far it reaches beyond the body edge
        in px (no minimum: arms are the ones reaching ``min_protrusion_length``).
    """
    pad = opening_radius + 1
    padded = np.pad(np.asarray(mask, dtype=bool), pad)
    body = ndimage.binary_opening(padded, morphology.disk(opening_radius))
    if not body.any():
        return body[pad:-pad, pad:-pad], []
    thin, n = ndimage.label(padded & ~body, structure=np.ones((3, 3)))
    reaches: list[float] = []
    if n:
        from_body = ndimage.distance_transform_edt(~body)
        reach = np.atleast_1d(ndimage.maximum(from_body, thin, index=np.arange(1, n + 1)))
        reaches = [float(v) for v in reach]
    return body[pad:-pad, pad:-pad], reaches


def bright_core(
    image: np.ndarray, cell: np.ndarray, opened: np.ndarray, background: float
) -> np.ndarray | None:
    """Return the cell's bright core, or None where it has none that could be its body.

    The core is the largest part of ``cell`` brighter than halfway from ``background`` to the
    cell's brightest (99th percentile), closed and with its holes filled: a phase-bright body,
    or a bright rim with its darker interior, without the dimmer halo beyond the rim, however
    far the outline reaches into it. It counts when it is compact (solidity above
    :data:`lch.segmentation.COMPACT_SOLIDITY`, as the segmenter's bright bodies) and covers at
    least :data:`CORE_FRACTION` of ``opened`` (the cell without its arms).
    """
    peak = float(np.percentile(image[cell], 99))
    if not peak > background:
        return None
    bright = cell & (image > (peak + background) / 2)
    core = largest_object(ndimage.binary_fill_holes(ndimage.binary_closing(bright)))
    compact = mask_solidity(core) > COMPACT_SOLIDITY
    return core if compact and core.sum() >= CORE_FRACTION * opened.sum() else None


def _near_others(others: np.ndarray, gap: int) -> np.ndarray:
    if not others.any():
        return np.zeros_like(others)
    return ndimage.distance_transform_edt(~others) <= gap


def _annulus(cell: np.ndarray, near_others: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Return the local background: an annulus around the whole cell, away from others."""
    outside = ndimage.distance_transform_edt(~cell)
    return (outside > params["gap"]) & (outside <= params["gap"] + params["width"]) & ~near_others


def _halo_ring(
    body: np.ndarray, arms: np.ndarray, near_others: np.ndarray, params: dict[str, Any]
) -> np.ndarray:
    """Return the halo ring around ``body``, outside it and the arms, away from others."""
    from_body = ndimage.distance_transform_edt(~body)
    inner = params["halo_gap"]
    return (~(body | arms) & (from_body > inner) & (from_body <= inner + params["ring_width"])
            & ~near_others)


def _intensity_features(
    image: np.ndarray, cell: np.ndarray, body: np.ndarray, ring: np.ndarray, background: float
) -> dict[str, float]:
    mean_body = float(image[body].mean())
    ok = background > 0 and ring.any()
    return {
        "mean_intensity": float(image[cell].mean()),
        "background": background,
        "body_contrast": (mean_body - background) / background if background > 0 else math.nan,
        "halo_intensity": (float(image[ring].mean()) - background) / background if ok else math.nan,
    }


def _window(bbox: tuple[int, int, int, int], pad: int, shape: tuple[int, ...]):
    r0, c0, r1, c1 = bbox
    return (
        slice(max(r0 - pad, 0), min(r1 + pad, shape[0])),
        slice(max(c0 - pad, 0), min(c1 + pad, shape[1])),
    )


def _measure_region(region, image, labels, params: dict[str, Any]) -> dict[str, Any]:
    pad = params["gap"] + params["width"] + 1
    win = _window(region.bbox, pad, labels.shape)
    lab = labels[win]
    cell = lab == region.label
    body, reaches = extension_reaches(region.image, opening_radius=params["opening_radius"])
    arms = [r for r in reaches if r >= params["min_length"]]
    r0, c0, r1, c1 = region.bbox
    opened = np.zeros_like(cell)
    y0, x0 = r0 - win[0].start, c0 - win[1].start
    opened[y0 : y0 + body.shape[0], x0 : x0 + body.shape[1]] = body
    near_others = _near_others((lab > 0) & ~cell, params["gap"])
    annulus = _annulus(cell, near_others, params)
    background = float(np.median(image[win][annulus])) if annulus.any() else math.nan
    core = bright_core(image[win], cell, opened, background)
    body_in_window = opened if core is None else core
    body = body_in_window if body_in_window.any() else cell
    ring = _halo_ring(body, cell & ~opened, near_others, params)
    row = {
        "label": int(region.label),
        "centroid_y": float(region.centroid[0]),
        "centroid_x": float(region.centroid[1]),
        "bbox_min_row": r0,
        "bbox_min_col": c0,
        "bbox_max_row": r1,
        "bbox_max_col": c1,
        "area": int(region.area),
        "body_area": int(body_in_window.sum()),
        "perimeter": float(region.perimeter),
        "eccentricity": float(region.eccentricity),
        "solidity": float(region.solidity),
        "protrusion_count": len(arms),
        "protrusion_length": float(np.mean(arms)) if arms else 0.0,
        "protrusion_reach": max(reaches, default=0.0),
    }
    row.update(_intensity_features(image[win], cell, body, ring, background))
    row["touches_border"] = bool(
        r0 == 0 or c0 == 0 or r1 == labels.shape[0] or c1 == labels.shape[1]
    )
    return row


def measure_cells(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM,
    opening_radius_um: float = OPENING_RADIUS_UM,
    min_protrusion_length_um: float = MIN_PROTRUSION_LENGTH_UM,
    halo_gap_um: float = HALO_GAP_UM,
    ring_width_um: float = RING_WIDTH_UM,
    background_gap_um: float = BACKGROUND_GAP_UM,
    background_width_um: float = BACKGROUND_WIDTH_UM,
) -> pd.DataFrame:
    """Measure every labelled cell of one image (see the module docstring for definitions).

    Parameters
    ----------
    image
        2-D intensity image (raw frame, normalised crop or decoded crop).
    labels
        Integer label image of the same shape (0 = background).
    pixel_size_um
        The image's pixel size: the scales below are in µm, so one cell measures alike at any
        pixel size (the features themselves stay in px).
    opening_radius_um, min_protrusion_length_um
        Arm detection: parts narrower than about ``2 * opening_radius_um`` that reach at least
        ``min_protrusion_length_um`` beyond the body count as protrusions.
    halo_gap_um, ring_width_um
        The halo ring spans ``halo_gap_um`` to ``halo_gap_um + ring_width_um`` out from the
        body, outside the mask.
    background_gap_um, background_width_um
        The local background annulus spans ``background_gap_um`` to
        ``background_gap_um + background_width_um`` outside the mask.

    Returns
    -------
    pandas.DataFrame
        One row per label, columns :data:`FEATURE_COLUMNS`, ordered by label.
    """
    img = np.asarray(image, dtype=np.float64)
    lab = np.asarray(labels)
    if img.shape != lab.shape or img.ndim != 2:
        raise ValueError(f"image {img.shape} and labels {lab.shape} must be equal 2-D shapes")
    px = check_pixel_size(pixel_size_um)
    params = {
        "opening_radius": um_to_px(opening_radius_um, px),
        "min_length": min_protrusion_length_um / px,
        "halo_gap": um_to_px(halo_gap_um, px),
        "ring_width": um_to_px(ring_width_um, px),
        "gap": um_to_px(background_gap_um, px),
        "width": um_to_px(background_width_um, px),
    }
    rows = [_measure_region(r, img, lab, params) for r in measure.regionprops(lab.astype(np.int32))]
    return pd.DataFrame(rows, columns=FEATURE_COLUMNS)


def _nan_features() -> dict[str, Any]:
    return {name: math.nan for name in FEATURE_COLUMNS}


def _central_label(labels: np.ndarray) -> int:
    """Return the label whose nearest pixel is closest to the image centre (0 if none)."""
    regions = measure.regionprops(labels)
    if not regions:
        return 0
    centre = (np.asarray(labels.shape) - 1) / 2.0
    dists = [np.min(np.hypot(*(r.coords - centre).T)) for r in regions]
    return int(regions[int(np.argmin(dists))].label)


def measure_crop(
    crop: np.ndarray, *, pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM, **kwargs: Any
) -> dict[str, Any]:
    """Segment a single-cell crop and measure the object nearest its centre, with its arms.

    A crop's pixels are coarse (a model's 64 px crops: 1.3 µm), and an arm one or two pixels
    wide escapes the texture outline; the thin dark lines leaving the object are added to it
    (:func:`lch.segmentation.attach_dark_lines`) before it is measured.

    Parameters
    ----------
    crop
        2-D crop on any intensity scale (normalised or decoded crops in [0, 1], raw windows).
    pixel_size_um
        The crop's pixel size (a model's decoded crops have its ``config.crop_pixel_size_um``).
    **kwargs
        Passed to :func:`measure_cells`.

    Returns
    -------
    dict
        The :data:`FEATURE_COLUMNS` of that object; all NaN when no object is found (including
        a constant crop).

    Raises
    ------
    ValueError
        If the crop is not 2-D or contains NaN/inf.
    """
    arr, labels, target = _segment_crop(crop, pixel_size_um)
    if target == 0:
        return _nan_features()
    labels = attach_dark_lines(arr, labels, target, pixel_size_um)
    table = measure_cells(arr, labels, pixel_size_um=pixel_size_um, **kwargs)
    return table.loc[table["label"] == target].iloc[0].to_dict()


def _segment_crop(
    crop: np.ndarray, pixel_size_um: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Segment a crop: return it as float64, its labels and the label nearest the centre.

    The label is 0 for none.

    A finite constant crop holds no object rather than being an error.
    """
    arr = np.asarray(crop, dtype=np.float64)
    if arr.ndim == 2 and np.all(np.isfinite(arr)) and arr.size and arr.max() == arr.min():
        return arr, np.zeros(arr.shape, np.int32), 0
    arr = check_frame(arr)
    labels = segment_frame(arr, pixel_size_um=pixel_size_um)
    return arr, labels, _central_label(labels)


def central_mask(
    crop: np.ndarray, pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM
) -> np.ndarray | None:
    """Return the mask of the object nearest the centre of a single-cell crop.

    The segmenter's object, as frames' cells are cut (:func:`lch.crops.cut_crops`): without the
    thin lines :func:`measure_crop` adds. None when the crop holds no object (or is constant).

    Raises
    ------
    ValueError
        If the crop is not 2-D or contains NaN/inf.
    """
    _, labels, target = _segment_crop(crop, pixel_size_um)
    return labels == target if target else None
