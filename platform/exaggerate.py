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

from lch.classify import HIGH, LOW, binary_labels
from lch.crop_files import load_crop
from lch.morphology import POSITION_COLUMNS, measure_crop

DEFAULT_SIGMAS: tuple[float, ...] = tuple(float(s) for s in range(-4, 5))
_POSITION_COLUMNS = frozenset(POSITION_COLUMNS)
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
    """Move each code by ``s`` SDs along the discriminant direction (the paper's), (C, K, D)."""
    step = model.direction * model.sigma  # one SD along the unit direction
    return codes[:, None, :] + sigmas[None, :, None] * step


def latent_shifts(model: torch.nn.Module, codes: torch.Tensor,
                  sigmas: torch.Tensor) -> torch.Tensor:
    """Move each code by Latent Shift (Cohen et al., MIDL 2021), (C, K, D).

    Each code moves along the gradient of the classifier's logit of its decoded image encoded
    again, ``z + lambda * d f(E(D(z))) / dz``, with ``lambda`` chosen so the shifted code's
    logit moves by as much as the linear method's ``s`` SDs.

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
    """Shift and decode: images (C, K, S, S), P(shifted code), P(re-encoded image) (C, K)."""
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
    """Measure every decoded image with :func:`lch.morphology.measure_crop`.

    They are measured at ``pixel_size_um``, the model's crop pixel size.

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
    """Return the classifier's logit ``z . weight + bias`` of each crop's code (C,)."""
    check_classifier(model)
    return _logits(model, _crop_batch(model, crops, resize=False))


def measure_real_cells(model: torch.nn.Module, crops: Any) -> tuple[pd.DataFrame, np.ndarray]:
    """Measure real (not decoded) crops as the decoded images are, and score them.

    The morphology and :func:`discriminant_scores` are what :func:`lch.trends.trend_report`
    bounds the trends with.

    Returns
    -------
    features : pandas.DataFrame
        :func:`lch.morphology.measure_crop` of each crop (C rows), at the model's crop pixel size.
    scores : numpy.ndarray
        (C,).
    """
    check_classifier(model)
    batch = _crop_batch(model, crops, resize=False)
    return _measure(model, batch), _logits(model, batch)


@torch.no_grad()
def measure_reconstructions(model: torch.nn.Module, crops: Any) -> pd.DataFrame:
    """Measure each crop's reconstruction (its own code decoded) as the crop itself is measured.

    Beside :func:`measure_real_cells` of the same crops it says how faithfully the decoder draws
    each feature (``fidelity`` in :func:`lch.trends.trend_report`): an exaggeration can show a
    feature only as far as the decoder reproduces it.

    Returns
    -------
    pandas.DataFrame
        :func:`lch.morphology.measure_crop` of each reconstruction (C rows).
    """
    batch = _crop_batch(model, crops, resize=False)
    codes = torch.from_numpy(encode_crops(model, batch)).to(_device(model))
    return _measure(model, model.decode(codes).squeeze(1).cpu().numpy())


def _measure(model: torch.nn.Module, images: np.ndarray) -> pd.DataFrame:
    """:func:`lch.morphology.measure_crop` of each image (C, S, S) at the model's pixel size."""
    px = model.config.crop_pixel_size_um
    return pd.DataFrame([measure_crop(image, pixel_size_um=px) for image in images])


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
    """Tell whether each code shifted by each ``s`` leaves the training cells' range, (C, K).

    The range is their 1st-99th percentile along the direction; None when the model's range is
    unknown.
    """
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
    resize: bool = True,
    **options: Any,
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
    resize : bool
        Resize square crops of another size (default) or reject them; see :func:`load_crop`.
    **options
        ``cells`` (one id per crop), ``measure`` and ``method``, as in :func:`exaggerate_codes`.

    Returns
    -------
    Exaggeration
    """
    check_classifier(model)
    batch = _crop_batch(model, crops, resize)
    return exaggerate_codes(model, encode_crops(model, batch), sigmas, **options)


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


# ---------------------------------------------------------------- stored cells


def exaggerate_stored_cells(
    model: torch.nn.Module,
    table: pd.DataFrame,
    crops: Any,
    indices: Sequence[int] | np.ndarray,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    *,
    method: str = "linear",
) -> Exaggeration:
    """Exaggerate (:func:`exaggerate`) the cells ``indices`` (crop indices) of a stored cohort.

    The cohort is as :func:`lch.cellstore.open_cells` opens it (``table``, ``crops``); each cell
    is named by id and label.

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
