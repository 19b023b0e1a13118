"""From one frame to its cells: segmentation, measurement and crops in one call.

The Ray Data stage of ingestion, the benchmark's bare loop and the Serve classifier all call
:func:`frame_cells`, so a cell is measured and cropped the same way whichever segmenter (LCH's,
Cellpose, a label movie from the manifest) outlined it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lch.crops import DEFAULT_CROP_SIZE, DEFAULT_FIELD_OF_VIEW_UM, cut_crops
from lch.morphology import measure_cells
from lch.pixel_size import DEFAULT_PIXEL_SIZE_UM
from lch.segmentation import segment_frame


def frame_cells(
    frame: np.ndarray,
    crop_size: int = DEFAULT_CROP_SIZE,
    *,
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM,
    field_of_view_um: float = DEFAULT_FIELD_OF_VIEW_UM,
    labels: np.ndarray | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Segment a frame, measure every cell and cut a crop for each usable one.

    Parameters
    ----------
    frame : ndarray, shape (Y, X)
        One raw phase-contrast frame.
    crop_size : int
        Side of the square crops, in pixels.
    pixel_size_um : float
        The frame's pixel size (the segmentation's scales are in µm).
    field_of_view_um : float
        Side of the square each crop shows, in µm (:func:`lch.crops.cut_crops`).
    labels : ndarray of int, shape (Y, X), optional
        The frame's segmentation when made elsewhere (0 = background); default
        :func:`lch.segmentation.segment_frame`.

    Returns
    -------
    table : pandas.DataFrame
        One row per detected cell (:data:`lch.morphology.FEATURE_COLUMNS`) plus ``drop_reason``:
        ``""`` for kept cells, else why no crop was cut ("border", "too_small", "too_large").
    crops : ndarray of float32, shape (K, crop_size, crop_size)
        The crops of the kept rows, in table order, values in [0, 1].

    Raises
    ------
    ValueError
        For a frame that cannot be segmented (constant, NaN/inf, not 2-D), labels of another
        shape, or a pixel size that is not a positive number of at most a few µm.
    """
    if labels is None:
        labels = segment_frame(frame, pixel_size_um=pixel_size_um)
    table = measure_cells(frame, labels, pixel_size_um=pixel_size_um)
    crops, _, drop_reason = cut_crops(frame, labels, table, crop_size, pixel_size_um=pixel_size_um,
                                      field_of_view_um=field_of_view_um)
    return table.assign(drop_reason=drop_reason), crops
