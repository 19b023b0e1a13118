"""The HTTP contract of the Serve application: limits, request parsing and response models.

Everything a client sends is checked here, in the ingress, before any replica sees it: bodies,
frames, cells and sigmas are bounded (413 / 422 with a message saying which limit), and arrays
must be finite and of the model's crop size. Image sizes are judged from the file's header (TIFF
pages, PNG header, npy header) before anything is decoded, so a small file declaring a huge image
costs milliseconds. The parsers here block: the ingress runs them off its event loop. Nothing
here reads a server-side path.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from lch.classify import MIN_POPULATION, call_of
from lch.exaggerate import SHIFTS
from lch.movie_io import FrameTooLarge, MovieError, iter_frames, read_movie_info
from lch.paths import NAME_PATTERN, is_valid_name
from lch.pixel_size import DEFAULT_PIXEL_SIZE_UM, check_pixel_size
from lch.registry import ALIAS_PATTERN, CHAMPION_ALIAS
from lch.tracking import DEFAULT_FRAME_INTERVAL_S

MAX_BODY_BYTES = 64 << 20
MAX_FRAMES = 20
MAX_FRAME_PIXELS = 2048 * 2048
MAX_CROP_PIXELS = 1024 * 1024
"""Largest uploaded crop (PNG/TIFF); it is resized to the model's crop size."""
MAX_CELLS = 500
MAX_SIGMAS = 25
MAX_ABS_SIGMA = 20.0
DEFAULT_SIGMAS = (-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0)


def _body_schema(**properties: dict) -> dict:
    return {"schema": {"type": "object", "properties": properties}}


_FILE = {"type": "string", "format": "binary"}
_SIGMAS = {"type": "array", "items": {"type": "number"}, "description": "default -4 ... 4"}
_NPY = {"type": "string", "description": "instead of the lists: base64 of an .npy array "
        "(float, uint8 or uint16), much faster to send and parse"}
_NORMALISED = {"type": "boolean", "description": "true: normalised crops (floats in [0, 1], "
               "background 0.5, the model's size); false: raw windows cut from a movie in its "
               "own dtype and range, whose centre cell is cut as ingestion does; left out: "
               "detected (the response says which)"}
_WINDOW_PIXELS = {"type": "number", "description": "a raw window's pixel size in µm "
                  f"(default {DEFAULT_PIXEL_SIZE_UM})"}
_MODEL = {"type": "string", "description": "a registered version ('3') or alias "
          f"('challenger') of the model to answer with; default the {CHAMPION_ALIAS}, "
          "followed as it is promoted"}
_METHOD = {"type": "string", "enum": list(SHIFTS),
           "description": "linear (default, the paper's): along the discriminant direction; "
           "latent-shift: along the gradient of the decoded image's re-encoded logit (Cohen et "
           "al. 2021), scaled to the same logit steps"}
_COHORT = {"type": "string", "pattern": NAME_PATTERN.pattern,
           "description": "instead of images: an ingested cohort, with 'movie'"}
_MOVIE = {"type": "string", "pattern": NAME_PATTERN.pattern,
          "description": "a segmented movie of 'cohort', by its manifest id"}
CLASSIFY_BODY = {"requestBody": {"content": {
    "application/json": _body_schema(
        crops={"type": "array", "description": "normalised crops (N, S, S) or raw windows "
               "(N, H, W)"},
        crops_npy=_NPY, normalised=_NORMALISED, pixel_size_um=_WINDOW_PIXELS,
        cohort=_COHORT, movie=_MOVIE, model=_MODEL,
    ),
    "multipart/form-data": _body_schema(
        file={**_FILE, "description": "TIFF movie or frame"},
        pixel_size_um={"type": "number", "description": "the movie's pixel size in µm "
                       f"(default {DEFAULT_PIXEL_SIZE_UM}, the paper's microscope)"},
        frame_interval_s={"type": "number", "description": "seconds between frames, for "
                          f"tracking (default {DEFAULT_FRAME_INTERVAL_S:g})"},
        model=_MODEL,
    ),
}}}
"""OpenAPI description of the /v1/classify body (parsed by hand to enforce the limits)."""
EXAGGERATE_BODY = {"requestBody": {"content": {
    "application/json": _body_schema(
        crop={"type": "array", "description": "one normalised crop (S, S) or raw window"},
        crop_npy=_NPY, sigmas=_SIGMAS, normalised=_NORMALISED, pixel_size_um=_WINDOW_PIXELS,
        cohort=_COHORT, movie=_MOVIE, model=_MODEL, method=_METHOD,
        track_id={"type": "integer", "description": "with cohort and movie: a tracked cell, "
                  "exaggerated from the mean code of its frames"},
        cell={"type": "integer", "description": "with cohort and movie: one cell in one frame, "
              "its index in /v1/classify's 'cells' for the movie"},
    ),
    "multipart/form-data": _body_schema(
        file={**_FILE, "description": "PNG or TIFF crop or raw window; or, with x and y, a "
              "TIFF frame or movie in which the cell at (x, y) is segmented and picked"},
        sigmas={"type": "string", "description": "comma-separated, default -4 ... 4"},
        normalised=_NORMALISED, pixel_size_um=_WINDOW_PIXELS,
        x={"type": "integer", "description": "the picked cell's column (px)"},
        y={"type": "integer", "description": "the picked cell's row (px)"},
        frame={"type": "integer", "description": "the frame it is picked in (default 0)"},
        model=_MODEL, method=_METHOD,
    ),
}}}
"""OpenAPI description of the /v1/exaggerate body (parsed by hand to enforce the limits)."""


class RequestError(ValueError):
    """A bad request: ``status`` is the HTTP status to answer with (413 or 422)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class Population(BaseModel):
    """The population call: mean P(high) over distinct cells, as in the paper's pooling."""

    p_high: float | None = Field(description="mean P(high) over the cells (null if none)")
    call: str | None = Field(description="'high' or 'low' (null if no cell was found)")
    n_cells: int = Field(description="distinct cells pooled (a movie's tracks, or the crops sent)")
    min_cells: int = MIN_POPULATION
    reaches_minimum: bool = Field(description=f"at least {MIN_POPULATION} cells were pooled")


class Cell(BaseModel):
    """One crop: a sent crop or window, or one cell in one frame of a sent movie."""

    index: int
    p_high: float
    input: str | None = Field(None, description="what was sent: 'normalised' (used as sent) or "
                              "'raw' (its centre cell cut as ingestion does)")
    frame: int | None = None
    centroid_y: float | None = None
    centroid_x: float | None = None
    track_id: int | None = Field(None, description="the tracked cell it belongs to (movies)")


class Track(BaseModel):
    """One tracked cell of a sent movie: P(high) of the mean code of its frames."""

    track_id: int
    frames: int
    p_high: float


class ClassifyResponse(BaseModel):
    """The answer of /v1/classify: per-cell P(high), a movie's tracks and the population call."""

    model_version: str
    cells: list[Cell]
    tracks: list[Track] = Field(description="a movie's tracked cells (empty for crops)")
    population: Population


class Step(BaseModel):
    """One exaggeration step: the cell decoded at ``sigma``, its P(high) and morphology."""

    sigma: float
    p_high: float = Field(description="P(high) of the shifted latent code")
    png_base64: str = Field(description="the decoded image, 8-bit grey PNG, base64")
    morphology: dict[str, float | None]


class ExaggerateResponse(BaseModel):
    """The answer of /v1/exaggerate: one decoded image per sigma, and what was exaggerated."""

    model_version: str
    input: str = Field(description="'normalised' (used as sent), 'raw' (its centre cell cut "
                       "as ingestion does), or the cell picked at x, y of a frame")
    method: str = Field(description="how the code moved: 'linear' or 'latent-shift'")
    steps: list[Step]


class ModelInfo(BaseModel):
    """The answer of /v1/model: the registered version that answers, its crop size and tags."""

    name: str
    alias: str
    version: str
    run_id: str | None = None
    crop_size: int
    latent_dim: int
    tags: dict[str, str] = {}


def population(p_high: np.ndarray) -> Population:
    """Pool the probabilities of distinct cells into the population call."""
    n = int(len(p_high))
    if n == 0:
        return Population(p_high=None, call=None, n_cells=0, reaches_minimum=False)
    mean = float(np.mean(p_high))
    return Population(
        p_high=mean, call=call_of(mean), n_cells=n,
        reaches_minimum=n >= MIN_POPULATION,
    )


def check_body_size(size: int) -> None:
    """Refuse (413) a request body larger than :data:`MAX_BODY_BYTES`."""
    if size > MAX_BODY_BYTES:
        raise RequestError(
            f"request body is {size} bytes; the limit is {MAX_BODY_BYTES} bytes", status=413
        )


def parse_json(body: bytes) -> dict:
    """Parse a JSON body that must be an object; anything else is a 422 :class:`RequestError`."""
    try:
        data = json.loads(body)
    except RecursionError as exc:
        raise RequestError("body is not valid JSON (nested too deeply)") from exc
    except ValueError as exc:  # also an integer of more digits than Python converts
        raise RequestError(f"body is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise RequestError("JSON body must be an object")
    return data


def crops_array(value: Any, field: str, *, max_cells: int = MAX_CELLS) -> np.ndarray:
    """Check a JSON list of crops or raw windows (or one) and return it as (N, H, W).

    The dtype is the one the numbers give (whole numbers stay integers: a raw window's counts);
    shape, count and size are checked. What each one is and how it becomes the model's crop is
    the replica's business (:func:`lch.single_cell.model_crop`).
    """
    if value is None:
        raise RequestError(f"missing field '{field}'")
    try:
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            array = array.astype(np.float64)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise RequestError(f"'{field}' must be numbers in nested lists ({exc})") from exc
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or 0 in array.shape[1:]:
        raise RequestError(f"'{field}' has shape {array.shape}; expected 2-D crops or windows")
    if len(array) == 0:
        raise RequestError(f"'{field}' holds no crop")
    if len(array) > max_cells:
        raise RequestError(f"'{field}' holds {len(array)} crops; the limit is {max_cells}", 413)
    if array.shape[1] * array.shape[2] > MAX_CROP_PIXELS:
        raise RequestError(f"'{field}': {array.shape[1]}x{array.shape[2]} images; the limit is "
                           f"{MAX_CROP_PIXELS} pixels each", 413)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise RequestError(f"'{field}' contains NaN or infinite values")
    return array


def _npy_array(encoded: Any, field: str, max_values: int) -> np.ndarray:
    """Decode a base64 ``.npy``, its header checked (format, dtype, size) before it is read."""
    try:
        raw = base64.b64decode(encoded, validate=True)
        buffer = io.BytesIO(raw)
        version = np.lib.format.read_magic(buffer)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"npy format version {version} is not supported")
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, _, dtype = header(buffer)
    except (ValueError, TypeError, binascii.Error, EOFError) as exc:
        raise RequestError(f"'{field}' is not a base64-encoded .npy array ({exc})") from exc
    if dtype.hasobject:
        raise RequestError(f"'{field}' holds Python objects; send float or uint8 pixels")
    if dtype not in (np.uint8, np.uint16) and dtype.kind != "f":
        raise RequestError(f"'{field}' must hold float, uint8 or uint16 pixels, not {dtype}")
    if int(np.prod(shape, dtype=np.float64)) > max_values:
        raise RequestError(f"'{field}' declares shape {shape}; the limit is {max_values} values",
                           413)
    try:
        value = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, EOFError) as exc:
        raise RequestError(f"'{field}' is not a complete .npy array ({exc})") from exc
    return value


def request_crops(data: dict, field: str, *, max_cells: int = MAX_CELLS) -> np.ndarray:
    """Return the crops or raw windows of a JSON body.

    They come as ``<field>``, nested lists, or ``<field>_npy``, a base64 ``.npy`` array (read
    without pickle) that spares both sides parsing thousands of numbers.
    """
    encoded = data.get(f"{field}_npy")
    if encoded is None:
        return crops_array(data.get(field), field, max_cells=max_cells)
    value = _npy_array(encoded, f"{field}_npy", max_cells * MAX_CROP_PIXELS)
    return crops_array(value, f"{field}_npy", max_cells=max_cells)


def exaggeration_method(value: Any) -> str:
    """Check the ``method`` field of /v1/exaggerate: "linear" (default) or "latent-shift"."""
    if value is None or value == "":
        return "linear"
    if value not in SHIFTS:
        raise RequestError(f"'method' must be one of {', '.join(SHIFTS)}, not {value!r}")
    return value


def model_reference(value: Any) -> str | None:
    """Check the ``model`` field: a version or alias; None for the followed champion."""
    if value is None or value == "" or value == CHAMPION_ALIAS:
        return None
    if not isinstance(value, str | int) or isinstance(value, bool) \
            or not ALIAS_PATTERN.match(str(value)):
        raise RequestError(f"'model' must be a version number or an alias name, not {value!r}")
    return str(value)


def _name(data: dict, field: str) -> str:
    value = data.get(field)
    if value is None:
        raise RequestError(f"missing field '{field}'")
    if not isinstance(value, str) or not is_valid_name(value):
        raise RequestError(f"'{field}' must be a name ({NAME_PATTERN.pattern}, no '..'), "
                           f"not {value!r}")
    return value


def stored_movie(data: dict) -> tuple[str, str] | None:
    """Return ``cohort`` and ``movie`` of a request about an ingested movie.

    None when it sends images. They are names, never paths, so nothing outside the data root
    can be named.
    """
    if data.get("cohort") is None and data.get("movie") is None:
        return None
    return _name(data, "cohort"), _name(data, "movie")


def _index(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise RequestError(f"'{field}' must be a whole number, not {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise RequestError(f"'{field}' must be a whole number, not {value!r}") from None
    if number < 0:
        raise RequestError(f"'{field}' must not be negative, got {number}")
    return number


def stored_cell(data: dict) -> tuple[str, int]:
    """Which cell of a stored movie to exaggerate: ``("track_id", t)`` or ``("cell", i)``."""
    given = [f for f in ("track_id", "cell") if data.get(f) is not None]
    if len(given) != 1:
        raise RequestError("name the cell of the movie by exactly one of 'track_id' (a tracked "
                           "cell) and 'cell' (one cell in one frame)")
    return given[0], _index(data[given[0]], given[0])


def normalised_flag(value: Any) -> bool | None:
    """Parse the ``normalised`` field.

    True (a normalised crop), false (a raw window) or absent/null, None: detect
    (:func:`lch.single_cell.looks_normalised`).
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise RequestError(f"'normalised' must be true or false (or left out to detect), not {value!r}")


def sigmas_list(value: Any) -> list[float]:
    """Parse the exaggeration steps: finite numbers, at most :data:`MAX_SIGMAS`, each bounded."""
    if value is None:
        return list(DEFAULT_SIGMAS)
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    if not isinstance(value, list | tuple):
        raise RequestError(f"'sigmas' must be a list of numbers, not {type(value).__name__}")
    try:
        sigmas = [float(v) for v in value]
    except (TypeError, ValueError, OverflowError) as exc:
        raise RequestError(f"'sigmas' must be a list of numbers ({exc})") from exc
    if not sigmas:
        raise RequestError("'sigmas' is empty")
    if len(sigmas) > MAX_SIGMAS:
        raise RequestError(f"{len(sigmas)} sigmas; the limit is {MAX_SIGMAS}", 413)
    if not all(np.isfinite(s) and abs(s) <= MAX_ABS_SIGMA for s in sigmas):
        raise RequestError(f"every sigma must be finite and within ±{MAX_ABS_SIGMA}")
    return sigmas


def pixel_size(value: Any) -> float:
    """Parse ``pixel_size_um``: default :data:`DEFAULT_PIXEL_SIZE_UM`, else checked."""
    if value is None or value == "":
        return DEFAULT_PIXEL_SIZE_UM
    try:
        return check_pixel_size(value)
    except ValueError as exc:
        raise RequestError(f"'pixel_size_um': {exc}") from exc


def frame_interval(value: Any) -> float:
    """Parse the ``frame_interval_s`` form field.

    Default :data:`DEFAULT_FRAME_INTERVAL_S`, else a positive number of seconds.
    """
    if value is None or value == "":
        return DEFAULT_FRAME_INTERVAL_S
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise RequestError(f"'frame_interval_s': {value!r} is not a positive number of seconds")
    return seconds


def picked_point(fields: dict) -> tuple[int, int, int] | None:
    """Return ``frame``, ``y``, ``x`` of a cell picked in an uploaded movie.

    None when neither ``x`` nor ``y`` is given: the upload is a single crop.
    """
    if fields.get("x") in (None, "") and fields.get("y") in (None, ""):
        return None
    point = []
    for name, default in (("frame", 0), ("y", None), ("x", None)):
        value = fields.get(name)
        if value in (None, ""):
            if default is None:
                raise RequestError(f"'{name}' is missing: a cell is picked by both 'x' and 'y'")
            value = default
        try:
            number = int(str(value))
        except ValueError:
            raise RequestError(f"'{name}' must be a whole number of pixels/frames, not "
                               f"{value!r}") from None
        if number < 0:
            raise RequestError(f"'{name}' must not be negative, got {number}")
        point.append(number)
    return point[0], point[1], point[2]


def tiff_frames(data: bytes, filename: str, max_pixels: int = MAX_FRAME_PIXELS) -> np.ndarray:
    """Read an uploaded TIFF movie or frame as (T, Y, X), with the ingestion checks and limits.

    The frame count and size are checked from the pages' headers before any frame is decoded.
    """
    try:
        info = read_movie_info(io.BytesIO(data), filename, max_frame_pixels=max_pixels)
        if info.frames > MAX_FRAMES:
            raise RequestError(
                f"{filename}: {info.frames} frames; the limit is {MAX_FRAMES} frames", 413
            )
        frames = list(iter_frames(io.BytesIO(data), filename, max_frame_pixels=max_pixels))
    except FrameTooLarge as exc:
        raise RequestError(str(exc), 413) from exc
    except MovieError as exc:
        raise RequestError(str(exc)) from exc
    return np.stack(frames)


def image_crop(data: bytes, filename: str) -> np.ndarray:
    """Read an uploaded PNG or TIFF single-cell crop or raw window as a 2-D array.

    It keeps the dtype it was stored with. At most :data:`MAX_CROP_PIXELS`, judged from the
    header.
    """
    from PIL import Image, UnidentifiedImageError

    if data[:4] in (b"II*\x00", b"MM\x00*"):
        frames = tiff_frames(data, filename, MAX_CROP_PIXELS)
        if len(frames) != 1:
            raise RequestError(f"{filename}: expected one crop, got {len(frames)} frames")
        return frames[0]
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
            if width * height > MAX_CROP_PIXELS:
                raise RequestError(
                    f"{filename}: a {width}x{height} image; a crop may have at most "
                    f"{MAX_CROP_PIXELS} pixels", 413,
                )
            if image.mode not in ("L", "I;16", "I", "F"):
                raise RequestError(f"{filename}: a crop must be a grey image, not {image.mode}")
            return np.asarray(image)
    except RequestError:
        raise
    except Image.DecompressionBombError as exc:
        raise RequestError(f"{filename}: image too large ({exc})", 413) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RequestError(f"{filename}: not a PNG or TIFF image ({exc})") from exc
