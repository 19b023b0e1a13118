"""The real phase-contrast crops of tests/data (idr0109) and their reference masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).parent / "data"
REAL = DATA / "real"
MASKS = DATA / "real_masks"
PIXEL_SIZE_UM = 0.325  # the paper's microscope, as the crops' README says


def real_images() -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """``(name, image, reference)`` for every real crop, in file order; the reference is None for
    the crops without one (see tests/data/real_masks/README.md)."""
    out = []
    for path in sorted(REAL.glob("*.png")):
        mask = MASKS / path.name
        reference = np.asarray(Image.open(mask)) if mask.exists() else None
        out.append((path.stem, np.asarray(Image.open(path)), reference))
    return out
