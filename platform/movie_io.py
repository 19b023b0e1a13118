"""Reading source movies (TIFF / OME-TIFF) frame by frame, with the checks ingestion needs.

Every error a user can cause raises :class:`MovieError` with the file name in the message.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import tifffile

# Axes tifffile reports for a plain page sequence; all are read as time.
TIME_AXES = {"T", "I", "Q"}
SUPPORTED_KINDS = {"u", "i", "f"}
DEFAULT_MAX_FRAME_PIXELS = 16384 * 16384
"""Largest frame ingestion decodes by default (1 GiB as float32): a file's header can declare far
more pixels than the file holds, and each worker decodes a whole frame at once."""
# What tifffile logs (instead of raising) when a file's page chain or declared shape is broken.
TRUNCATION_SIGNS = ("invalid page offset", "failed to reshape", "corrupted", "truncated")
# Other image formats a user may name instead of a TIFF, told apart by their first bytes.
IMAGE_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF",
                    b"GIF89a": "GIF"}


class MovieError(ValueError):
    """A movie file that cannot be ingested; the message names the file and the reason."""


class FrameTooLarge(MovieError):
    """A movie whose header declares frames beyond the allowed size (found before decoding)."""


@dataclass(frozen=True)
class MovieInfo:
    """Shape and type of a single-channel movie, as it will be stored (T, Y, X)."""

    path: Path
    frames: int
    height: int
    width: int
    dtype: np.dtype
    source_axes: str


def stored_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a movie is stored with: integers unchanged, floats as float32."""
    return np.dtype(np.float32) if dtype.kind == "f" else dtype


def _movie_axes(path: Path, shape: tuple[int, ...], axes: str) -> tuple[int, int, int]:
    """Check the series is a single-channel 2-D time series; return (frames, height, width)."""
    if axes.endswith("S") and shape[-1] > 1:
        raise MovieError(
            f"{path}: RGB/multi-sample pixels (axes {axes!r}, shape {shape}); "
            "LCH ingests single-channel label-free movies"
        )
    if axes.endswith("S"):
        axes, shape = axes[:-1], shape[:-1]
    if len(axes) < 2 or axes[-2:] != "YX":
        raise MovieError(f"{path}: unsupported axes {axes!r} (shape {shape}); expected ...YX")
    extra = {ax: n for ax, n in zip(axes[:-2], shape[:-2], strict=True) if n != 1}
    if len(extra) > 1:
        raise MovieError(
            f"{path}: {len(extra) + 2}-D data (axes {axes!r}, shape {shape}); "
            "expected one time axis and Y, X"
        )
    if "S" in extra or "C" in extra:
        n = extra.get("S", extra.get("C"))
        raise MovieError(
            f"{path}: has {n} channels/samples (axes {axes!r}, shape {shape}); "
            "LCH ingests single-channel label-free movies (not RGB or multi-channel)"
        )
    if not extra:
        return 1, shape[-2], shape[-1]
    (axis, n), = extra.items()
    if axis not in TIME_AXES:
        raise MovieError(
            f"{path}: the non-spatial axis is {axis!r} (axes {axes!r}, shape {shape}); "
            "expected a time series (T)"
        )
    return n, shape[-2], shape[-1]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


Source = str | Path | BinaryIO
"""A movie: a file path, or an open binary file (e.g. an HTTP upload in memory)."""


def _image_format(source: Source) -> str | None:
    """The format of a non-TIFF image file from its signature, or None."""
    try:
        if isinstance(source, str | Path):
            with open(source, "rb") as f:
                head = f.read(8)
        else:
            position = source.tell()
            source.seek(0)  # tifffile has read past the start by now
            head = source.read(8)
            source.seek(position)
    except (OSError, ValueError):
        return None
    return next((kind for sig, kind in IMAGE_SIGNATURES.items() if head.startswith(sig)), None)


def _name(source: Source, name: str | None) -> str:
    return name or str(source if isinstance(source, str | Path) else getattr(source, "name", "?"))


@contextmanager
def _open(source: Source, path: str) -> Iterator[tifffile.TiffFile]:
    """Open a TIFF, turning what tifffile only logs about a damaged file into a MovieError.

    A truncated multi-page TIFF still opens: tifffile logs the broken page chain and quietly
    returns the pages it could reach, which would ingest a shorter movie without a word.
    ``path`` is the name used in messages.
    """
    if isinstance(source, str | Path) and not Path(source).exists():
        raise MovieError(f"{path}: file not found")
    collect = _Collect()
    logger = logging.getLogger("tifffile")
    logger.addHandler(collect)
    try:
        tif = tifffile.TiffFile(source)
        series = tif.series  # reading the series walks every page
    except tifffile.TiffFileError as exc:
        kind = _image_format(source)
        if kind:
            raise MovieError(
                f"{path}: a {kind} image, not a TIFF movie; LCH reads TIFF / OME-TIFF "
                "(T×Y×X, one channel): save the frame(s) as a TIFF, e.g. with tifffile.imwrite"
            ) from exc
        # Its message quotes the file's first bytes: never echo those (any file could be named).
        raise MovieError(f"{path}: not a readable TIFF file (no valid TIFF header)") from exc
    except Exception as exc:  # tifffile raises several types for damaged TIFFs
        raise MovieError(f"{path}: not a readable TIFF file ({type(exc).__name__})") from exc
    finally:
        logger.removeHandler(collect)
    with tif:
        damaged = [m for m in collect.messages if any(k in m for k in TRUNCATION_SIGNS)]
        if damaged:
            raise MovieError(f"{path}: truncated or corrupt TIFF ({damaged[0]})")
        if not series:
            raise MovieError(f"{path}: the TIFF holds no image data")
        yield tif


def _info(path: str, tif: tifffile.TiffFile, max_frame_pixels: int | None) -> MovieInfo:
    series = tif.series[0]
    shape, axes = tuple(series.shape), series.axes
    if 0 in shape:
        raise MovieError(f"{path}: empty movie (shape {shape})")
    frames, height, width = _movie_axes(path, shape, axes)
    if max_frame_pixels is not None and height * width > max_frame_pixels:
        raise FrameTooLarge(
            f"{path}: frames of {height}x{width} = {height * width} pixels exceed the limit of "
            f"{max_frame_pixels} pixels"
        )
    dtype = np.dtype(series.dtype)
    if dtype.kind not in SUPPORTED_KINDS or dtype.itemsize > 8:
        raise MovieError(f"{path}: unsupported pixel type {dtype}")
    if len(series.pages) < frames:
        raise MovieError(f"{path}: truncated, {len(series.pages)} of {frames} frames present")
    return MovieInfo(Path(path), frames, height, width, stored_dtype(dtype), axes)


def read_movie_info(
    source: Source, name: str | None = None, *,
    max_frame_pixels: int | None = DEFAULT_MAX_FRAME_PIXELS,
) -> MovieInfo:
    """Open a movie and check that it can be ingested, without reading its pixels.

    Parameters
    ----------
    source : path or binary file
        The TIFF / OME-TIFF.
    name : str, optional
        What to call it in messages (default: the path).
    max_frame_pixels : int or None
        Largest frame (height × width) accepted, judged from the header; None: no limit.

    Raises
    ------
    FrameTooLarge
        Frames declared larger than ``max_frame_pixels``.
    MovieError
        Missing file, not a TIFF, empty, RGB/multi-channel, more than 3-D, Z-stack,
        unsupported pixel type, or fewer pages than the declared frame count.
    """
    path = _name(source, name)
    with _open(source, path) as tif:
        return _info(path, tif, max_frame_pixels)


def _check_frame(path: str, index: int, frame: np.ndarray, info: MovieInfo) -> np.ndarray:
    frame = np.asarray(frame).reshape(info.height, info.width)
    if frame.dtype.kind == "f":
        if not np.isfinite(frame).all():
            raise MovieError(f"{path}: frame {index} contains NaN or infinite values")
        frame = frame.astype(info.dtype, copy=False)
    return frame


def iter_frames(
    source: Source, name: str | None = None, *,
    max_frame_pixels: int | None = DEFAULT_MAX_FRAME_PIXELS,
) -> Iterator[np.ndarray]:
    """Yield the frames of a movie one at a time (never the whole movie in memory).

    ``source``, ``name`` and ``max_frame_pixels`` are as in :func:`read_movie_info`; the size is
    checked before the first frame is decoded.

    Raises
    ------
    MovieError
        As :func:`read_movie_info`, and for an unreadable (truncated, corrupt) frame or
        NaN/inf in floating-point data.
    """
    path = _name(source, name)
    with _open(source, path) as tif:
        info = _info(path, tif, max_frame_pixels)
        for t in range(info.frames):
            try:
                frame = tif.asarray(key=t, series=0)
            except Exception as exc:  # corrupt strips surface as several exception types
                raise MovieError(f"{path}: frame {t} cannot be read ({exc})") from exc
            yield _check_frame(path, t, frame, info)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (the content hash stored as provenance)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
