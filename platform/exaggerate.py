"""Massive exaggeration: decode cell descriptors pushed along the discriminant direction.

Zaritsky et al. (Cell Systems 2021) make the classifier's decision visible by moving a cell's
latent code ``z`` along the unit discriminant direction ``w`` of the linear classifier, far
beyond the natural range of the training cells, and decoding each shifted code::

    z_s = z + s * sigma * w        for s in, e.g., -4 ... +4

where ``sigma`` is the SD of the training cells' projections on ``w`` (``LCHModel.sigma``). The
decoded images are then measured with :func:`lch.morphology.measure_crop`, the same function
that measures real segmented cells, so "what changes" is reported in the same morphometrics
(protrusion count/length, halo intensity, area, solidity, ...).

Two probabilities are reported for each step:

- ``probability``: the classifier applied to the shifted code ``z_s`` itself. It equals
  ``sigmoid(w . z + b + s * sigma * |w|)``, so it rises monotonically with ``s`` by
  construction; it says how far along the decision axis the code was moved.
- ``probability_reencoded``: the classifier applied to ``encode(decode(z_s))``. This is the
  informative one: it rises with ``s`` only if the decoder really drew what the classifier
  reads as "high" (the encoder is deterministic in eval mode, so this costs one extra forward).

Everything runs in eval mode without gradients: no sampling anywhere, so the result is a
deterministic function of the model and the input crops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

from lch.classify import HIGH, LOW, binary_labels
from lch.crops import DEFAULT_FIELD_OF_VIEW_UM
from lch.morphology import POSITION_COLUMNS, measure_crop
from lch.pixel_size import DEFAULT_PIXEL_SIZE_UM
from lch.single_cell import model_crop
from lch.trends import plot_trends, spearman_table

DEFAULT_SIGMAS: tuple[float, ...] = tuple(float(s) for s in range(-4, 5))
# Cells in a cohort report (half high, half low). Pooled rho of the demo model over 6 random
# draws of cells: halo SD 0.15 with 8 cells, 0.04 with 32 (reach 0.06 / 0.02), ~2 s on CPU.
REPORT_CELLS = 32
_POSITION_COLUMNS = frozenset(POSITION_COLUMNS)
_IMAGE_SUFFIXES = frozenset({".png", ".tif", ".tiff"})
# Directional tolerance of the unit direction buffer (float32 round-off).
_UNIT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Exaggeration:
    """Decoded exaggerations of a set of cells.

    Attributes
    ----------
    cells : list of str
        One id per cell (row of the montage).
    sigmas : numpy.ndarray of float, shape (K,)
        The shifts ``s``, in SDs of the training cells' projections on the direction.
    codes : numpy.ndarray of float32, shape (C, D)
        The unshifted latent codes.
    images : numpy.ndarray of float32, shape (C, K, S, S)
        Decoded image of each cell at each ``s``, values in [0, 1].
    probability : numpy.ndarray of float, shape (C, K)
        P(high) of the shifted code itself (monotonic in ``s`` by construction).
    probability_reencoded : numpy.ndarray of float, shape (C, K)
        P(high) of the decoded image, encoded again.
    table : pandas.DataFrame
        One row per (cell, s): ``cell``, ``sigma``, ``probability``,
        ``probability_reencoded`` and the morphology of the decoded image
        (:func:`lch.morphology.measure_crop`, without the position columns).
        Empty of features (only the first four columns) when morphology was not measured.
    beyond_range : numpy.ndarray of bool, shape (C, K), or None
        Whether the shifted code lies beyond the training cells' natural range along the
        direction (:attr:`lch.model.LCHModel.natural_range`); None when the model does not
        know its range.
    method : str
        How the codes were moved (a key of :data:`SHIFTS`).
    """

    cells: list[str]
    sigmas: np.ndarray
    codes: np.ndarray
    images: np.ndarray
    probability: np.ndarray
    probability_reencoded: np.ndarray
    table: pd.DataFrame
    beyond_range: np.ndarray | None = None
    method: str = "linear"


# ---------------------------------------------------------------- model checks


def check_classifier(model: torch.nn.Module) -> None:
    """Refuse a model that cannot be exaggerated: no classifier or no latent statistics.

    Parameters
    ----------
    model : torch.nn.Module
        Expected: an :class:`lch.model.LCHModel` whose classifier was set
        (``LCHModel.from_aae`` / ``set_classifier``).

    Raises
    ------
    ValueError
        The model lacks ``encode``/``decode``/``classify_latent`` or the ``weight``,
        ``direction``, ``sigma`` buffers; or the classifier was never set (zero or non-finite
        weight, a direction that is not a unit vector, ``sigma`` not finite and positive).
    """
    needed = ("encode", "decode", "classify_latent", "weight", "direction", "sigma")
    missing = [name for name in needed if not hasattr(model, name)]
    if missing:
        raise ValueError(
            f"model has no classifier to exaggerate along (missing {', '.join(missing)}); "
            "expected an LCHModel built with LCHModel.from_aae(aae, weight, bias, codes)"
        )
    weight = model.weight.detach().double()
    direction = model.direction.detach().double()
    sigma = float(model.sigma)
    if not torch.isfinite(weight).all() or not torch.any(weight != 0):
        raise ValueError(
            "model has no classifier: its weight is zero or not finite "
            "(set one with LCHModel.set_classifier or LCHModel.from_aae)"
        )
    norm = float(torch.linalg.vector_norm(direction))
    if not torch.isfinite(direction).all() or abs(norm - 1.0) > _UNIT_TOLERANCE:
        raise ValueError(
            f"model has no discriminant direction: |direction| = {norm:.4g}, expected 1 "
            "(set the classifier with LCHModel.set_classifier)"
        )
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(
            f"model has no latent statistics: sigma = {sigma!r}, expected a positive SD of the "
            "training cells' projections (set the classifier with training codes)"
        )


# ---------------------------------------------------------------- input crops


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


def _crop_batch(model: torch.nn.Module, crops: Any, resize: bool) -> np.ndarray:
    """(C, S, S) float32 from one crop, a (C, S, S) array, or a sequence of crops/paths."""
    size = int(model.config.crop_size)
    if isinstance(crops, np.ndarray | torch.Tensor) and np.ndim(crops) == 3:
        items = list(crops)
    elif isinstance(crops, np.ndarray | torch.Tensor | str | Path):
        items = [crops]
    elif isinstance(crops, Sequence):
        items = list(crops)
    else:
        raise ValueError(
            "crops must be a crop, a (C, S, S) array or a list of crops/paths, got "
            f"{type(crops).__name__}"
        )
    if not items:
        raise ValueError("no crops to exaggerate")
    fov = model.config.field_of_view_um
    return np.stack([load_crop(item, size, resize=resize, field_of_view_um=fov)
                     for item in items])


def _check_sigmas(sigmas: Sequence[float]) -> np.ndarray:
    s = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError(f"sigmas must be a non-empty list of finite numbers, got {sigmas!r}")
    return s


# ---------------------------------------------------------------- exaggeration


def _device(model: torch.nn.Module) -> torch.device:
    return model.direction.device


@torch.no_grad()
def encode_crops(model: torch.nn.Module, crops: np.ndarray) -> np.ndarray:
    """Latent codes (C, D) of crops (C, S, S), in eval mode."""
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))[:, None]
    return model.encode(x.to(_device(model))).cpu().numpy()


def linear_shifts(model: torch.nn.Module, codes: torch.Tensor,
                  sigmas: torch.Tensor) -> torch.Tensor:
    """The paper's shifts: each code moved by ``s`` SDs along the discriminant direction,
    (C, K, D)."""
    step = model.direction * model.sigma  # one SD along the unit direction
    return codes[:, None, :] + sigmas[None, :, None] * step


def latent_shifts(model: torch.nn.Module, codes: torch.Tensor,
                  sigmas: torch.Tensor) -> torch.Tensor:
    """Latent Shift (Cohen et al., MIDL 2021): each code moved along the gradient of the
    classifier's logit of its decoded image encoded again, ``z + lambda * d f(E(D(z))) / dz``,
    with ``lambda`` chosen so the shifted code's logit moves by as much as the linear method's
    ``s`` SDs; (C, K, D).

    Raises
    ------
    ValueError
        If a cell's gradient does not raise the classifier's logit (it cannot be scaled to the
        linear method's steps).
    """
    z = codes.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logit = model.encode(model.decode(z)) @ model.weight + model.bias
        (gradient,) = torch.autograd.grad(logit.sum(), z)
    rise = gradient @ model.weight  # how much a unit step along the gradient moves the logit
    norm = torch.linalg.vector_norm(model.weight)
    refused = rise <= 1e-12 * norm
    if bool(refused.any()):
        cells = torch.nonzero(refused).flatten().tolist()
        raise ValueError(f"cells {cells}: the gradient of the re-encoded logit does not raise "
                         "the classifier's logit; Latent Shift cannot follow the linear steps")
    target = sigmas * model.sigma * norm  # the linear method's logit moves
    lam = target[None, :] / rise[:, None]  # (C, K)
    return codes[:, None, :] + lam[:, :, None] * gradient[:, None, :]


SHIFTS = {"linear": linear_shifts, "latent-shift": latent_shifts}
"""Exaggeration methods by name: how a code is moved for each ``s``."""
METHOD_TITLES = {
    "linear": "linear: along the discriminant direction (Zaritsky et al. 2021)",
    "latent-shift": "latent-shift: along the re-encoded logit's gradient (Cohen et al. 2021)",
}
"""What a montage says of the method that drew it."""


@torch.no_grad()
def _shift_decode(
    model: torch.nn.Module, codes: np.ndarray, sigmas: np.ndarray, method: str = "linear"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decoded images (C, K, S, S), P(shifted code) and P(re-encoded image), each (C, K)."""
    model.eval()
    device = _device(model)
    z = torch.as_tensor(codes, dtype=torch.float32, device=device)  # (C, D)
    s = torch.as_tensor(sigmas, dtype=torch.float32, device=device)
    shifted = SHIFTS[method](model, z, s)  # (C, K, D)
    flat = shifted.reshape(-1, z.shape[1])
    images = model.decode(flat)  # (C*K, 1, S, S)
    p_shift = model.classify_latent(flat)
    p_again = model.classify_latent(model.encode(images))
    c, k = shifted.shape[:2]
    side = images.shape[-1]
    return (
        images.reshape(c, k, side, side).cpu().numpy(),
        p_shift.reshape(c, k).double().cpu().numpy(),
        p_again.reshape(c, k).double().cpu().numpy(),
    )


def morphology_table(
    images: np.ndarray,
    sigmas: np.ndarray,
    cells: Sequence[str],
    probability: np.ndarray,
    probability_reencoded: np.ndarray,
    pixel_size_um: float,
) -> pd.DataFrame:
    """Measure every decoded image with :func:`lch.morphology.measure_crop` (at
    ``pixel_size_um``, the model's crop pixel size).

    Returns
    -------
    pandas.DataFrame
        One row per (cell, s), cell-major: ``cell``, ``sigma``, ``probability``,
        ``probability_reencoded``, then the morphometrics (position columns dropped; all NaN
        where the decoded image holds no object).
    """
    rows = []
    for i, cell in enumerate(cells):
        for j, s in enumerate(sigmas):
            features = measure_crop(images[i, j], pixel_size_um=pixel_size_um)
            row = {
                "cell": cell,
                "sigma": float(s),
                "probability": float(probability[i, j]),
                "probability_reencoded": float(probability_reencoded[i, j]),
            }
            row.update({k: v for k, v in features.items() if k not in _POSITION_COLUMNS})
            rows.append(row)
    return pd.DataFrame(rows)


@torch.no_grad()
def _logits(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    weight = model.weight.double().cpu().numpy()
    return encode_crops(model, batch).astype(np.float64) @ weight + float(model.bias)


def discriminant_scores(model: torch.nn.Module, crops: Any) -> np.ndarray:
    """The classifier's logit ``z . weight + bias`` of each crop's code (C,)."""
    check_classifier(model)
    return _logits(model, _crop_batch(model, crops, resize=False))


def measure_real_cells(model: torch.nn.Module, crops: Any) -> tuple[pd.DataFrame, np.ndarray]:
    """Morphology of real (not decoded) crops, measured as the decoded images are, and their
    :func:`discriminant_scores`: what :func:`lch.trends.trend_report` bounds the trends with.

    Returns
    -------
    features : pandas.DataFrame
        :func:`lch.morphology.measure_crop` of each crop (C rows), at the model's crop pixel size.
    scores : numpy.ndarray
        (C,).
    """
    check_classifier(model)
    batch = _crop_batch(model, crops, resize=False)
    px = model.config.crop_pixel_size_um
    features = pd.DataFrame([measure_crop(crop, pixel_size_um=px) for crop in batch])
    return features, _logits(model, batch)


def exaggerate_codes(
    model: torch.nn.Module,
    codes: np.ndarray,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    *,
    cells: Sequence[str] | None = None,
    measure: bool = True,
    method: str = "linear",
) -> Exaggeration:
    """Exaggerate latent codes directly (the core of :func:`exaggerate`).

    Parameters
    ----------
    model : lch.model.LCHModel
        With its classifier set (see :func:`check_classifier`).
    codes : numpy.ndarray, shape (C, D) or (D,)
        Latent codes.
    sigmas : sequence of float
        Shifts ``s``: each code moves by ``s * model.sigma`` along ``model.direction``.
    cells : sequence of str, optional
        One id per code; default ``"0"``, ``"1"``, ...
    measure : bool
        Measure each decoded image (the slow part: about 5 ms per image); ``False`` leaves the
        table with the probabilities only.
    method : {"linear", "latent-shift"}
        :func:`linear_shifts` (the paper's) or :func:`latent_shifts`; both move each code's
        logit by the same amount for the same ``s``.

    Returns
    -------
    Exaggeration
    """
    check_classifier(model)
    if method not in SHIFTS:
        raise ValueError(f"method {method!r}: expected one of {', '.join(SHIFTS)}")
    s = _check_sigmas(sigmas)
    z = np.atleast_2d(np.asarray(codes, dtype=np.float32))
    dim = int(model.direction.numel())
    if z.ndim != 2 or z.shape[1] != dim or not np.all(np.isfinite(z)):
        raise ValueError(f"codes must be finite, shaped (C, {dim}); got {np.shape(codes)}")
    ids = [str(i) for i in range(len(z))] if cells is None else [str(c) for c in cells]
    if len(ids) != len(z):
        raise ValueError(f"{len(ids)} cell ids for {len(z)} codes")
    images, p_shift, p_again = _shift_decode(model, z, s, method)
    if measure:
        table = morphology_table(
            images, s, ids, p_shift, p_again, model.config.crop_pixel_size_um
        )
    else:
        table = pd.DataFrame(
            {
                "cell": np.repeat(ids, len(s)),
                "sigma": np.tile(s, len(ids)),
                "probability": p_shift.reshape(-1),
                "probability_reencoded": p_again.reshape(-1),
            }
        )
    return Exaggeration(ids, s, z, images, p_shift, p_again, table,
                        beyond_natural_range(model, z, s), method)


def beyond_natural_range(model: torch.nn.Module, codes: np.ndarray,
                         sigmas: np.ndarray) -> np.ndarray | None:
    """(C, K): whether each code shifted by each ``s`` lies outside the training cells'
    1st-99th percentile along the direction; None when the model's range is unknown."""
    low, high = (float(v) for v in model.natural_range.cpu())
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    direction = model.direction.double().cpu().numpy()
    centre = float(model.latent_mean.double().cpu().numpy() @ direction)
    start = (np.asarray(codes, dtype=np.float64) @ direction - centre) / float(model.sigma)
    position = start[:, None] + np.asarray(sigmas, dtype=np.float64)[None, :]
    return (position < low) | (position > high)


def exaggerate(
    model: torch.nn.Module,
    crops: Any,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    *,
    cells: Sequence[str] | None = None,
    resize: bool = True,
    measure: bool = True,
    method: str = "linear",
) -> Exaggeration:
    """Encode crops, move each code along the discriminant direction and decode every step.

    Parameters
    ----------
    model : lch.model.LCHModel
        With its classifier set; a model without one raises ``ValueError``.
    crops : array, path, or sequence of them
        One crop (a 2-D array, or a PNG/TIFF path), a (C, S, S) array, or a list of crops and
        paths; each goes through :func:`load_crop` (see there for sizes and intensity scale).
    sigmas : sequence of float
        Shifts ``s`` in SDs of the training cells' projections (default -4 ... +4).
    cells : sequence of str, optional
        One id per crop (default ``"0"``, ``"1"``, ...).
    resize : bool
        Resize square crops of another size (default) or reject them; see :func:`load_crop`.
    measure : bool
        Measure the decoded images' morphology.
    method : {"linear", "latent-shift"}
        How codes move (:data:`SHIFTS`).

    Returns
    -------
    Exaggeration
    """
    check_classifier(model)
    batch = _crop_batch(model, crops, resize)
    return exaggerate_codes(model, encode_crops(model, batch), sigmas, cells=cells,
                            measure=measure, method=method)


def class_mean_codes(codes: np.ndarray, labels: Sequence | np.ndarray) -> dict[str, np.ndarray]:
    """Mean latent code of each class: ``{"high": (D,), "low": (D,)}`` (unknowns ignored).

    Raises
    ------
    ValueError
        Codes and labels differ in length, or a class has no cells.
    """
    z = np.asarray(codes, dtype=np.float64)
    y = binary_labels(labels)
    if z.ndim != 2 or len(z) != len(y):
        raise ValueError(f"codes must be (N, D) with N = {len(y)} labels, got {z.shape}")
    means = {}
    for code, name in ((HIGH, "high"), (LOW, "low")):
        if not np.any(y == code):
            raise ValueError(f"no {name!r} cells among the labels: cannot form the class mean")
        means[name] = z[y == code].mean(axis=0)
    return means


def exaggerate_class_means(
    model: torch.nn.Module,
    codes: np.ndarray,
    labels: Sequence | np.ndarray,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    *,
    measure: bool = True,
) -> Exaggeration:
    """Exaggerate the mean code of each class; rows are ``"mean_high"`` and ``"mean_low"``.

    Parameters
    ----------
    model : lch.model.LCHModel
        With its classifier set.
    codes : numpy.ndarray, shape (N, D)
        Latent codes of labelled cells (e.g. the training cells).
    labels : array-like
        Their labels (see :func:`lch.classify.binary_labels`).
    sigmas, measure
        As in :func:`exaggerate_codes`.
    """
    means = class_mean_codes(codes, labels)
    stacked = np.stack([means["high"], means["low"]])
    return exaggerate_codes(
        model, stacked, sigmas, cells=["mean_high", "mean_low"], measure=measure
    )


# ---------------------------------------------------------------- montage

_TILE_SCALE = 2
_GAP = 2
_TITLE = 14
_HEADER = 2 * _TITLE  # the method's title, then each column's s
_CAPTION = 12
_MIN_ROW_LABEL = 64


_BEYOND = (255, 140, 0)  # the frame of a tile past the training cells' natural range


def _probability_colour(p: float) -> tuple[int, int, int]:
    """Blue (P = 0, low) through grey to red (P = 1, high): the caption strip's colour bar."""
    p = min(max(p, 0.0), 1.0) if math.isfinite(p) else 0.5
    low, high, mid = np.array([40, 90, 200]), np.array([200, 50, 40]), np.array([120, 120, 120])
    colour = mid + (high - mid) * (2 * p - 1) if p >= 0.5 else mid + (low - mid) * (1 - 2 * p)
    return tuple(int(c) for c in colour)


def _tile(image: np.ndarray, scale: int) -> Image.Image:
    pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    tile = Image.fromarray(pixels, mode="L")
    return tile.resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST)


def montage(result: Exaggeration, *, scale: int = _TILE_SCALE) -> Image.Image:
    """A grid of the decoded images: rows = cells, columns = s.

    The first line names the method (:data:`METHOD_TITLES`); the header above each column gives
    its ``s``; the strip under each tile gives that image's
    P(high) (of the shifted code), coloured from blue (0, low) through grey to red (1, high).
    The row's cell id is on the left. Tiles whose code lies beyond anything the training cells
    reach along the direction (:attr:`Exaggeration.beyond_range`) are framed in orange, and
    "past range" in orange above the ids says so: those images are extrapolations.

    Parameters
    ----------
    result : Exaggeration
    scale : int
        Integer magnification of each decoded image (nearest neighbour).

    Returns
    -------
    PIL.Image.Image
        RGB image of width ``label + K * (S * scale + gap)`` (the label column fits the longest
        cell id; wider if the title needs it) and height
        ``header + C * (S * scale + caption + gap)``.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    n_cells, n_sigmas, side = result.images.shape[:3]
    tile = side * scale
    font = ImageFont.load_default()
    longest = max((font.getlength(cell) for cell in result.cells), default=0.0)
    label = max(_MIN_ROW_LABEL, math.ceil(longest) + 6)
    title = METHOD_TITLES[result.method]
    width = max(label + n_sigmas * (tile + _GAP), math.ceil(font.getlength(title)) + 4)
    height = _HEADER + n_cells * (tile + _CAPTION + _GAP)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 1), title, fill=(0, 0, 0), font=font)
    for j, s in enumerate(result.sigmas):
        x = label + j * (tile + _GAP)
        draw.text((x + 2, _TITLE + 1), f"s={s:+g}", fill=(0, 0, 0), font=font)
    if result.beyond_range is not None and result.beyond_range.any():
        draw.text((2, _TITLE + 1), "past range", fill=_BEYOND, font=font)  # the frames' legend
    for i, cell in enumerate(result.cells):
        y = _HEADER + i * (tile + _CAPTION + _GAP)
        draw.text((2, y + tile // 2 - 5), cell, fill=(0, 0, 0), font=font)
        for j in range(n_sigmas):
            x = label + j * (tile + _GAP)
            canvas.paste(_tile(result.images[i, j], scale).convert("RGB"), (x, y))
            if result.beyond_range is not None and result.beyond_range[i, j]:
                draw.rectangle((x, y, x + tile - 1, y + tile - 1), outline=_BEYOND, width=2)
            p = float(result.probability[i, j])
            draw.rectangle(
                (x, y + tile, x + tile - 1, y + tile + _CAPTION - 1), fill=_probability_colour(p)
            )
            draw.text((x + 2, y + tile), f"P={p:.2f}", fill=(255, 255, 255), font=font)
    return canvas


def save_montage(result: Exaggeration, path: str | Path, *, scale: int = _TILE_SCALE) -> Path:
    """Write :func:`montage` as a PNG (parent folders created) and return its path."""
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"montage path {str(out)!r} must end in .png")
    out.parent.mkdir(parents=True, exist_ok=True)
    montage(result, scale=scale).save(out, format="PNG")
    return out


# ---------------------------------------------------------------- cohort report


def pick_cells(
    table: pd.DataFrame, n: int, seed: int = 0, *, column: str = "crop_index"
) -> np.ndarray:
    """The ``column`` values (default: crop indices) of ``n`` rows drawn at random, half from
    "high" and half from "low" lines where both exist (deterministic for ``seed``)."""
    rng = np.random.default_rng(seed)
    labels = binary_labels(table["label"].to_numpy())
    groups = [np.flatnonzero(labels == c) for c in (LOW, HIGH)]
    groups = [g for g in groups if len(g)] or [np.arange(len(table))]
    share = [n // len(groups) + (i < n % len(groups)) for i in range(len(groups))]
    picked = [rng.choice(g, size=min(k, len(g)), replace=False) for g, k in zip(groups, share,
                                                                                strict=True)]
    rows = np.sort(np.concatenate(picked))
    return table[column].to_numpy()[rows]


def exaggerate_stored_cells(
    model: torch.nn.Module,
    table: pd.DataFrame,
    crops: Any,
    indices: Sequence[int] | np.ndarray,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    *,
    method: str = "linear",
) -> Exaggeration:
    """:func:`exaggerate` the cells ``indices`` (crop indices) of a stored cohort, as opened by
    :func:`lch.cellstore.open_cells` (``table``, ``crops``); each is named by id and label.

    Raises
    ------
    ValueError
        If an index lies outside the stored crops.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) and (indices.min() < 0 or indices.max() >= crops.shape[0]):
        raise ValueError(f"cell ids must lie in 0..{crops.shape[0] - 1}")
    sources = crops.get_orthogonal_selection((indices, slice(None), slice(None)))
    names = [f"cell {i} ({table['label'].iloc[i]})" for i in indices]
    return exaggerate(model, sources, sigmas, cells=names, method=method)


def write_report(result: Exaggeration, out_dir: str | Path) -> dict[str, Path]:
    """Write the montage (PNG), the morphology table and the Spearman trends (CSV), and the
    trend figure (PNG, :func:`lch.trends.plot_trends`) to ``out_dir``; return their paths by
    kind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "montage": save_montage(result, out / "exaggeration_montage.png"),
        "table": out / "exaggeration_morphology.csv",
        "trends": out / "exaggeration_spearman.csv",
        "figure": out / "exaggeration_trends.png",
    }
    result.table.to_csv(paths["table"], index=False)
    spearman_table(result.table).to_csv(paths["trends"], index=False)
    plot_trends(result.table).savefig(paths["figure"], dpi=120)
    return paths
