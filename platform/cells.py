"""From one frame to its cells: segmentation, measurement and crops in one call.

The Ray Data stage of ingestion, the benchmark's bare loop and the Serve classifier all call
:func:`frame_cells`, so a cell is found and measured the same way wherever it comes from.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lch.crops import cut_crops
from lch.morphology import measure_cells
from lch.segmentation import segment_frame

DEFAULT_CROP_SIZE = 64


def frame_cells(
    frame: np.ndarray, crop_size: int = DEFAULT_CROP_SIZE
) -> tuple[pd.DataFrame, np.ndarray]:
    """Segment a frame, measure every cell and cut a crop for each usable one.

    Parameters
    ----------
    frame : ndarray, shape (Y, X)
        One raw phase-contrast frame.
    crop_size : int
        Side of the square crops, in pixels.

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
        For a frame that cannot be segmented (constant, NaN/inf, not 2-D).
    """
    labels = segment_frame(frame)
    table = measure_cells(frame, labels)
    crops, _, drop_reason = cut_crops(frame, labels, table, crop_size)
    return table.assign(drop_reason=drop_reason), crops
