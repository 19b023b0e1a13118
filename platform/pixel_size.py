"""The physical scale of images: a pixel's side in µm, its default and its check."""

from __future__ import annotations

import math

DEFAULT_PIXEL_SIZE_UM = 0.325
"""The paper's microscope (Zaritsky et al. 2021, idr0109); a movie's own size overrides it."""
MAX_PIXEL_SIZE_UM = 5.0
"""Larger pixels cannot show a 10-30 µm cell's shape: such a value is a unit mistake."""


def check_pixel_size(pixel_size_um: float) -> float:
    """Check a pixel size in µm and return it as a float.

    It must be a positive finite number no larger than :data:`MAX_PIXEL_SIZE_UM` (a cell must
    span pixels).
    """
    try:
        px = float(pixel_size_um)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"pixel size {pixel_size_um!r} µm is not a number") from exc
    if not math.isfinite(px) or px <= 0 or px > MAX_PIXEL_SIZE_UM:
        raise ValueError(
            f"pixel size {pixel_size_um!r} µm must be positive and at most {MAX_PIXEL_SIZE_UM} µm"
        )
    return px


def um_to_px(length_um: float, pixel_size_um: float) -> int:
    """Convert a length in µm to a whole number of px, at least one."""
    return max(1, round(length_um / pixel_size_um))
