"""Single-cell crops from files or arrays, brought to a model's input format.

A crop is a normalised crop as :mod:`lch.crops` makes it (floats in [0, 1], or 8-bit with the
background at 128) or a raw window cut from a movie, whose centre cell is then cut as ingestion
does (:func:`lch.single_cell.model_crop`). Files are PNG or TIFF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lch.crops import DEFAULT_FIELD_OF_VIEW_UM
from lch.pixel_size import DEFAULT_PIXEL_SIZE_UM
from lch.single_cell import model_crop

_IMAGE_SUFFIXES = frozenset({".png", ".tif", ".tiff"})


def _read_image(path: Path) -> np.ndarray:
    """Pixels of a PNG or TIFF file as an array (RGB/RGBA/palette PNGs go to greyscale)."""
    if not path.is_file():
        raise ValueError(f"crop file {str(path)!r} does not exist")
    if path.suffix.lower() not in _IMAGE_SUFFIXES:
        raise ValueError(f"crop file {str(path)!r}: expected a .png, .tif or .tiff image")
    try:
        if path.suffix.lower() == ".png":
            with Image.open(path) as img:
                if img.mode in ("RGB", "RGBA", "P", "LA"):
                    img = img.convert("L")
                return np.asarray(img)
        import tifffile

        return tifffile.imread(path)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"crop file {str(path)!r} is not a readable image: {exc}") from exc


def load_crop(
    source: np.ndarray | torch.Tensor | str | Path,
    crop_size: int,
    *,
    resize: bool = True,
    field_of_view_um: float = DEFAULT_FIELD_OF_VIEW_UM,
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM,
    normalised: bool | None = None,
) -> np.ndarray:
    """Read one single-cell image and bring it to the model's input format.

    Parameters
    ----------
    source : numpy.ndarray, torch.Tensor, str or pathlib.Path
        A 2-D array (singleton axes, e.g. (1, S, S), are squeezed), or the path of a PNG or
        TIFF file holding one greyscale image: a normalised crop (floats in [0, 1], or 8-bit
        with the background at 128, as :mod:`lch.crops` makes them) or a raw window cut from a
        movie in its own dtype and range, whose centre cell is then cut as ingestion does
        (:func:`lch.single_cell.model_crop`).
    crop_size : int
        The model's crop side ``S``.
    resize : bool
        What to do with a normalised square crop of another size: ``True`` (default) resizes it
        to ``S x S``, which also rescales the cell, so morphometrics are then in the model's
        pixels; ``False`` rejects it. A non-square normalised crop is always rejected.
    field_of_view_um, pixel_size_um : float
        The model's field of view and a raw window's pixel size.
    normalised : bool, optional
        What the image is; None detects it (:func:`lch.single_cell.looks_normalised`).

    Returns
    -------
    numpy.ndarray of float32, shape (S, S), values in [0, 1]

    Raises
    ------
    ValueError
        Unreadable or missing file, not 2-D, empty, NaN/inf, a normalised crop out of range or
        of the wrong shape, or a raw window without a usable cell at its centre.
    """
    if isinstance(source, str | Path):
        what = f"crop file {str(source)!r}"
        arr = _read_image(Path(source))
    elif isinstance(source, np.ndarray | torch.Tensor):
        what = "crop"
        arr = source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else source
    else:
        raise ValueError(
            f"crop must be a 2-D array or the path of a PNG/TIFF file, got {type(source).__name__}"
        )
    arr = np.asarray(arr)
    squeezed = arr.squeeze() if arr.ndim > 2 else arr
    return model_crop(squeezed, crop_size, field_of_view_um=field_of_view_um,
                      pixel_size_um=pixel_size_um, normalised=normalised, resize=resize,
                      what=what)[0]
