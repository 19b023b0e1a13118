"""One single-cell image → the model's input crop.

A crop the model reads is normalised (:mod:`lch.crops`): background-relative contrast in [0, 1]
with the background at 0.5, a fixed field of view in µm resampled to the crop size, the cell
turned so that its longest extension points along +x. Other tools send either such crops or a
*raw window* cut from their own movie, in its own dtype and range (8-/16-bit counts, floats) and
at its own pixel size. A raw window is segmented and its centre cell cut exactly as ingestion
cuts cells from movies (:func:`centre_cell`); a normalised crop is used as sent. Which one an
image is can be said, or detected (:func:`looks_normalised`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from skimage.transform import resize as _sk_resize

from lch.cells import frame_cells
from lch.segmentation import segment_frame

NORMALISED, RAW = "normalised", "raw"
# A normalised crop's background sits at 0.5; an 8-bit one (as LCH writes PNGs) at 127-128.
BACKGROUND_LEVEL = 0.5
BACKGROUND_TOLERANCE = 0.05


def looks_normalised(image: np.ndarray) -> bool:
    """Return True for what LCH's crops look like; anything else is a raw window.

    A crop is floats within [0, 1], or 8-bit pixels whose border (the background) has its
    median at half the range.
    """
    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.floating):
        values = image[np.isfinite(image)]
        return bool(values.size) and values.min() >= 0 and values.max() <= 1
    if image.dtype != np.uint8 or image.ndim != 2:
        return False
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return abs(float(np.median(border)) / 255 - BACKGROUND_LEVEL) <= BACKGROUND_TOLERANCE


def normalised_crop(image: np.ndarray, crop_size: int, *, resize: bool = True,
                    what: str = "crop") -> np.ndarray:
    """Check a normalised crop and return it as floats in [0, 1] at ``crop_size``.

    The crop is floats in [0, 1], or 8-bit pixels (divided by 255). A square of another size is
    resized when ``resize``, else refused; a non-square one always is.

    Raises
    ------
    ValueError
        NaN/inf, floats outside [0, 1], integer pixels other than 8-bit (a 16-bit image is a
        raw window), or the shape.
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        crop = image.astype(np.float32) / 255
    elif image.dtype == np.bool_ or np.issubdtype(image.dtype, np.integer):
        raise ValueError(f"{what}: {image.dtype} pixels are not a normalised crop; send it as a "
                         "raw window (normalised: false) with its pixel size")
    elif not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"{what}: pixels of dtype {image.dtype} are not an image")
    else:
        if not np.all(np.isfinite(image)):
            raise ValueError(f"{what}: contains NaN or infinite values")
        lo, hi = float(image.min()), float(image.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"{what}: values span [{lo:.4g}, {hi:.4g}]; a normalised crop lies "
                             "in [0, 1] with the background at 0.5 (else send a raw window)")
        crop = image.astype(np.float32)
    if crop.shape == (crop_size, crop_size):
        return crop
    if crop.shape[0] != crop.shape[1]:
        raise ValueError(f"{what}: non-square crop of shape {crop.shape}; the model takes "
                         f"{crop_size}x{crop_size}")
    if not resize:
        raise ValueError(f"{what}: crop is {crop.shape[0]}x{crop.shape[1]}, the model takes "
                         f"{crop_size}x{crop_size}")
    out = _sk_resize(crop, (crop_size, crop_size), order=1, anti_aliasing=True,
                     preserve_range=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def centre_cell(
    image: np.ndarray, crop_size: int, *, pixel_size_um: float, field_of_view_um: float
) -> tuple[pd.DataFrame, np.ndarray | None, str]:
    """Segment a single-cell image and cut the cell nearest its centre as ingestion does.

    Returns
    -------
    row : pandas.DataFrame
        That cell's row of :func:`lch.cells.frame_cells` (empty when no cell was found).
    crop : numpy.ndarray or None
        Its crop (``crop_size`` square), None when it was dropped or not found.
    reason : str
        ``""`` for a kept cell, else why there is none (``"no_cell"`` or the drop reason, e.g.
        ``"border"`` for a cell cut by the image edge).
    """
    table, crops = frame_cells(image, crop_size, pixel_size_um=pixel_size_um,
                               field_of_view_um=field_of_view_um)
    if table.empty:
        return table, None, "no_cell"
    centre = (np.asarray(image.shape[:2], dtype=float) - 1) / 2
    distance = np.hypot(table["centroid_y"] - centre[0], table["centroid_x"] - centre[1])
    nearest = int(np.argmin(distance.to_numpy()))
    row = table.iloc[[nearest]]
    reason = str(row["drop_reason"].iloc[0])
    if reason:
        return row, None, reason
    kept_before = int((table["drop_reason"].iloc[:nearest] == "").sum())
    return row, crops[kept_before], ""


def cell_at(
    frame: np.ndarray, y: int, x: int, crop_size: int, *, pixel_size_um: float,
    field_of_view_um: float,
) -> np.ndarray:
    """Cut the crop of the cell at pixel (``y``, ``x``) of a raw frame, as ingestion cuts it.

    Raises
    ------
    ValueError
        A point outside the frame, no cell there, or a cell that cannot be cut (e.g. touching
        the frame's edge); the message says which.
    """
    height, width = np.shape(frame)
    if not (0 <= y < height and 0 <= x < width):
        raise ValueError(f"'x', 'y': ({x}, {y}) lies outside the {width}x{height} frame")
    labels = segment_frame(frame, pixel_size_um=pixel_size_um)
    label = int(labels[y, x])
    if label == 0:
        raise ValueError(f"no cell at x={x}, y={y}: the segmentation finds background there")
    table, crops = frame_cells(frame, crop_size, pixel_size_um=pixel_size_um,
                               field_of_view_um=field_of_view_um, labels=labels)
    kept = table["drop_reason"] == ""
    at = int(np.flatnonzero(table["label"].to_numpy() == label)[0])
    if not kept.iloc[at]:
        reason = table["drop_reason"].iloc[at]
        raise ValueError(f"the cell at x={x}, y={y} cannot be cut ({reason})")
    return crops[int(kept.iloc[:at].sum())]


def model_crop(
    image: np.ndarray,
    crop_size: int,
    *,
    field_of_view_um: float,
    pixel_size_um: float,
    normalised: bool | None = None,
    resize: bool = True,
    what: str = "crop",
) -> tuple[np.ndarray, str]:
    """Make the model's crop from a normalised crop or a raw window; say which it was.

    Parameters
    ----------
    image : numpy.ndarray
        2-D, in its own dtype.
    crop_size, field_of_view_um
        The model's crop side (px) and field of view (µm).
    pixel_size_um : float
        A raw window's pixel size (unused for a normalised crop).
    normalised : bool, optional
        What ``image`` is; None detects it (:func:`looks_normalised`).
    resize : bool
        Resize a normalised square crop of another size (see :func:`normalised_crop`).

    Returns
    -------
    crop : numpy.ndarray of float32, (crop_size, crop_size)
    kind : str
        :data:`NORMALISED` or :data:`RAW`.

    Raises
    ------
    ValueError
        For a crop that is neither (see :func:`normalised_crop`), or a raw window without a
        usable cell at its centre (the message says why).
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"{what}: expected one 2-D greyscale image, got shape {image.shape}")
    if image.dtype.kind not in "biuf":
        raise ValueError(f"{what}: pixels of dtype {image.dtype} are not an image")
    if looks_normalised(image) if normalised is None else normalised:
        return normalised_crop(image, crop_size, resize=resize, what=what), NORMALISED
    _, crop, reason = centre_cell(image, crop_size, pixel_size_um=pixel_size_um,
                                  field_of_view_um=field_of_view_um)
    if crop is None:
        raise ValueError(f"{what}: a raw window without a usable cell at its centre ({reason}); "
                         "send a window centred on one cell, with its pixel_size_um")
    return crop, RAW
