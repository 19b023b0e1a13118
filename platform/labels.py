"""Label movies: one made elsewhere (checked), and the choice of segmenter.

A manifest entry may name ``labels: path/to/labels.tif``, a label movie made by another tool
(Cellpose, StarDist, ilastik, Fiji): T×Y×X like the movie, integer cell ids, 0 = background.
Ingestion checks it (:func:`check_label_movie`, :func:`iter_label_frames`) and stores it with
the movie as its NGFF ``labels`` group; segmentation then measures and crops those cells
(:func:`lch.cells.frame_cells` with ``labels=``) instead
of running a segmenter. For the other movies the segmenter is chosen per run
(:data:`SEGMENTERS`): LCH's own (:func:`lch.segmentation.segment_frame`) or Cellpose
(:mod:`lch.cellpose_segmenter`, an optional extra that never downloads anything).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from lch.movie_io import MovieError, MovieInfo, iter_frames, read_movie_info
from lch.omezarr import LABEL_DTYPE
from lch.segmentation import segment_frame

SEGMENTERS = ("lch", "cellpose")
"""What ``--segmenter`` accepts; a movie with its own label movie ignores it."""
DEFAULT_SEGMENTER = "lch"
GIVEN = "manifest"
"""The ``segmenter`` recorded for labels that came with the movie (the manifest's ``labels``)."""
# measure_cells numbers regions as int32: larger ids would wrap.
MAX_LABEL = int(np.iinfo(np.int32).max)

Segmenter = Callable[[np.ndarray, float], np.ndarray]
"""``(frame, pixel_size_um) -> labels``: a (Y, X) integer image, 0 = background."""


class SegmenterUnavailable(RuntimeError):
    """The chosen segmenter cannot run here; the message says what to install or provide."""


def _shape_text(info: MovieInfo) -> str:
    frames = f"{info.frames} frame" + ("" if info.frames == 1 else "s")
    return f"{frames} of {info.height}×{info.width}"


def check_label_movie(path: str | Path, movie: MovieInfo) -> MovieInfo:
    """Check a label movie against its movie from the file's header (no pixel decoded).

    Parameters
    ----------
    path : path
        The label TIFF named by the manifest's ``labels``.
    movie : MovieInfo
        The movie it labels (:func:`lch.movie_io.read_movie_info`).

    Returns
    -------
    MovieInfo
        The label movie's own shape and type.

    Raises
    ------
    lch.movie_io.MovieError
        The file cannot be read as a movie, its pixels are not integers, or its frames or
        frame size differ from the movie's; the message names the file and the mismatch.
    """
    info = read_movie_info(path, max_frame_pixels=None)
    if info.dtype.kind == "f":
        raise MovieError(
            f"{path}: floating-point pixels; a label movie holds integer cell ids "
            "(0 = background): save it as an integer TIFF (uint16 or uint32)"
        )
    if info.dtype.kind not in "ui":
        raise MovieError(f"{path}: pixel type {info.dtype}; a label movie holds integer cell ids")
    if (info.frames, info.height, info.width) != (movie.frames, movie.height, movie.width):
        raise MovieError(f"{path}: {_shape_text(info)}, the movie has {_shape_text(movie)}")
    return info


def iter_label_frames(path: str | Path, info: MovieInfo) -> Iterator[np.ndarray]:
    """Yield a checked label movie's frames as :data:`lch.omezarr.LABEL_DTYPE`, checking values.

    Raises
    ------
    lch.movie_io.MovieError
        A frame with negative labels or ids above :data:`MAX_LABEL` (or unreadable).
    """
    read = 0
    for t, frame in enumerate(iter_frames(path, max_frame_pixels=None)):
        read += 1
        low, high = int(frame.min()), int(frame.max())
        if low < 0:
            raise MovieError(
                f"{path}: frame {t} has negative labels (down to {low}); labels are 0 for "
                "background and positive cell ids"
            )
        if high > MAX_LABEL:
            raise MovieError(f"{path}: frame {t} has label {high}, above the largest, {MAX_LABEL}")
        yield frame.astype(LABEL_DTYPE, copy=False)
    if read != info.frames:
        raise MovieError(f"{path}: {read} frames read, {info.frames} declared")


def check_segmenter(name: str) -> dict:
    """Check, before any work, that segmenter ``name`` can run; return its options.

    The options are what :func:`make_segmenter` needs in the worker (e.g. the path of the
    Cellpose weights found here).

    Raises
    ------
    ValueError
        An unknown name.
    SegmenterUnavailable
        Its package or model weights are missing; the message says how to provide them.
    """
    if name == "lch":
        return {}
    if name == "cellpose":
        from lch.cellpose_segmenter import find_weights

        return {"weights": str(find_weights())}
    raise ValueError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}")


def _lch_segmenter(frame: np.ndarray, pixel_size_um: float) -> np.ndarray:
    return segment_frame(frame, pixel_size_um=pixel_size_um)


def make_segmenter(name: str, options: dict) -> Segmenter:
    """Build the segmenter ``name`` with the ``options`` of :func:`check_segmenter`.

    This loads its models.
    """
    if name == "lch":
        return _lch_segmenter
    if name == "cellpose":
        from lch.cellpose_segmenter import CellposeSegmenter

        return CellposeSegmenter(Path(options["weights"]))
    raise ValueError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}")
