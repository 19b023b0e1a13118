"""Reading source movies frame by frame, with the checks ingestion needs.

A movie file is read through bioio: OME-TIFF with ``bioio-ome-tiff``, other TIFFs with
``bioio-tifffile``, Nikon ND2, Zeiss CZI and Leica LIF with the plugins of the ``formats`` extra.
A file may hold several positions (bioio's scenes), channels and frames; a :class:`Selection`
picks one position, one channel and a frame range: what becomes one stored movie. Frames are
read one at a time (bioio's lazy dask arrays, one Y×X plane per chunk), never the whole file.
A TIFF first passes tifffile's own checks of its structure, so a damaged file is named as such.

An open binary file (an HTTP upload held in memory) is a single-position TIFF read with tifffile.

Every error a user can cause raises :class:`MovieError` with the file name in the message.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import tifffile

if TYPE_CHECKING:
    from bioio import BioImage

# Axes tifffile reports for a plain page sequence; all are read as time.
TIME_AXES = {"T", "I", "Q"}
SUPPORTED_KINDS = {"u", "i", "f"}
DEFAULT_MAX_FRAME_PIXELS = 16384 * 16384
"""Largest frame ingestion decodes by default (1 GiB as float32): a file's header can declare far
more pixels than the file holds, and each worker decodes a whole frame at once."""
# What tifffile logs (instead of raising) when a file's page chain or declared shape is broken.
TRUNCATION_SIGNS = ("invalid page offset", "failed to reshape", "corrupted", "truncated")
# One Y×X plane per dask chunk: reading a frame never decodes its neighbours.
PLANE = ["Y", "X"]
# ImageJ's spellings of a micrometre (its pixel size is in 'unit' per pixel).
MICRON_UNITS = {"um", "µm", "micron", "microns", "micrometer"}
# Vendor formats, read by the bioio plugins of the 'formats' extra.
VENDOR_SUFFIXES = {".nd2", ".czi", ".lif"}
# Other image formats a user may name instead of a TIFF, told apart by their first bytes.
IMAGE_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF",
                    b"GIF89a": "GIF"}


class MovieError(ValueError):
    """A movie file that cannot be ingested; the message names the file and the reason."""


class FrameTooLarge(MovieError):
    """A movie whose header declares frames beyond the allowed size (found before decoding)."""


@dataclass(frozen=True)
class Selection:
    """What of a movie file becomes one stored movie (the manifest's fields of the same names).

    ``position`` and ``channel`` are an index or a name; None picks the only one there is.
    ``first_frame`` and ``last_frame`` are 0-based and inclusive; None: to the last frame.
    """

    position: int | str | None = None
    channel: int | str | None = None
    first_frame: int = 0
    last_frame: int | None = None


WHOLE_FILE = Selection()
"""The default selection: the file's only position and channel, every frame."""


@dataclass(frozen=True)
class MovieInfo:
    """Shape and type of a single-channel movie as it will be stored (T, Y, X), and its place.

    The place is where in its file it lies: position, channel and first frame.
    ``pixel_size_um`` and ``frame_interval_s`` are what the file's own metadata says (OME or
    ImageJ), None where it says nothing.
    """

    path: Path
    frames: int
    height: int
    width: int
    dtype: np.dtype
    source_axes: str
    position: int = 0
    position_name: str = ""
    channel: int = 0
    channel_name: str = ""
    first_frame: int = 0
    pixel_size_um: float | None = None
    frame_interval_s: float | None = None


def stored_dtype(dtype: np.dtype) -> np.dtype:
    """Return the dtype a movie is stored with: integers unchanged, floats as float32."""
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
    """Tell the format of a non-TIFF image file from its signature, or None."""
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


def _plain_tiff_info(
    path: str, tif: tifffile.TiffFile, max_frame_pixels: int | None
) -> MovieInfo:
    """Check a plain (non-OME) TIFF is one single-channel time series and describe it."""
    series = tif.series[0]
    shape, axes = tuple(series.shape), series.axes
    if 0 in shape:
        raise MovieError(f"{path}: empty movie (shape {shape})")
    frames, height, width = _movie_axes(path, shape, axes)
    _check_frame_size(path, height, width, max_frame_pixels)
    dtype = _check_dtype(path, series.dtype)
    if len(series.pages) < frames:
        raise MovieError(f"{path}: truncated, {len(series.pages)} of {frames} frames present")
    return MovieInfo(Path(path), frames, height, width, stored_dtype(dtype), axes)


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _check_dtype(path: str, dtype: np.dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind not in SUPPORTED_KINDS or dtype.itemsize > 8:
        raise MovieError(f"{path}: unsupported pixel type {dtype}")
    return dtype


def _check_frame_size(path: str, height: int, width: int, max_frame_pixels: int | None) -> None:
    if max_frame_pixels is not None and height * width > max_frame_pixels:
        raise FrameTooLarge(
            f"{path}: frames of {height}x{width} = {height * width} pixels exceed the limit of "
            f"{max_frame_pixels} pixels"
        )


def _open_image(path: Path, name: str) -> tuple[BioImage, dict]:
    """Open a file's bioio image; also return its ``imagej`` metadata (empty if none).

    A TIFF passes tifffile's structural checks first; a plain (non-OME) TIFF is also checked
    to be one single-channel time series, its page sequence read as time (bioio would read a
    plain page sequence as Z).
    """
    # Imported here: bioio and its OME model take a second to import, and every process that
    # only reads stored movies (Ray Data's segmentation workers) would pay it.
    import bioio_ome_tiff
    import bioio_tifffile
    from bioio import BioImage
    from bioio_base.exceptions import UnsupportedFileFormatError

    if not path.exists():
        raise MovieError(f"{name}: file not found")
    try:
        tiff = _is_tiff(path)
    except OSError as exc:
        raise MovieError(f"{name}: cannot be read ({exc.strerror or exc})") from exc
    if tiff:
        with _open(path, name) as tif:
            series = tif.series[0]
            ome, imagej = tif.is_ome, tif.imagej_metadata or {}
            if not ome:
                _plain_tiff_info(name, tif, None)
        try:
            if ome:
                return BioImage(path, reader=bioio_ome_tiff.Reader, chunk_dims=PLANE), {}
            axes = series.axes
            if "T" not in axes:
                axes = axes.replace("Q", "T").replace("I", "T")
            return BioImage(path, reader=bioio_tifffile.Reader, chunk_dims=PLANE,
                            dim_order=axes), imagej
        except Exception as exc:  # bioio's readers raise many types on files they cannot read
            raise MovieError(f"{name}: not a readable TIFF movie ({type(exc).__name__})") from exc
    kind = _image_format(path)
    if kind:
        raise MovieError(
            f"{name}: a {kind} image, not a TIFF movie; LCH reads OME-TIFF / TIFF (and ND2, "
            "CZI, LIF with the 'formats' extra): save the frame(s) as a TIFF, e.g. with "
            "tifffile.imwrite"
        )
    if path.suffix.lower() not in VENDOR_SUFFIXES:
        raise MovieError(f"{name}: not a readable TIFF file (no valid TIFF header)")
    try:
        return BioImage(path), {}
    except UnsupportedFileFormatError as exc:
        raise MovieError(
            f"{name}: no installed reader supports this file; ND2, CZI and LIF need their "
            "bioio plugins: pip install 'lch[formats]'"
        ) from exc
    except Exception as exc:  # the plugins raise many types on files they cannot read
        raise MovieError(f"{name}: not a readable movie ({type(exc).__name__})") from exc


def _pick(name: str, field: str, wanted: int | str | None, names: list[str]) -> int:
    """Return the index among ``names`` of the ``field`` ("position" or "channel") ``wanted``.

    ``wanted`` is an index or a name.
    """
    listed = ", ".join(f"{i}: {n}" for i, n in enumerate(names))
    if wanted is None:
        if len(names) == 1:
            return 0
        raise MovieError(
            f"{name}: holds {len(names)} {field}s ({listed}); pick one with '{field}'"
        )
    if isinstance(wanted, int):
        if 0 <= wanted < len(names):
            return wanted
        raise MovieError(f"{name}: {field} {wanted} is not there ({field}s: {listed})")
    if wanted in names:
        return names.index(wanted)
    raise MovieError(f"{name}: {field} {wanted!r} is not there ({field}s: {listed})")


def _ome_pixels(image: BioImage):
    """Return the OME ``Pixels`` of the current position; None for a file without OME."""
    try:
        return image.ome_metadata.images[image.current_scene_index].pixels
    except Exception:  # readers without OME metadata raise NotImplementedError and others
        return None


def _quantity(value, unit: str) -> float | None:
    return float(value.to(unit).magnitude) if value is not None else None


def _file_scales(image: BioImage, imagej: dict) -> tuple[float | None, float | None]:
    """Pixel size (µm) and frame interval (s) from the file's OME or ImageJ metadata."""
    pixels = _ome_pixels(image)
    if pixels is not None:
        return (_quantity(pixels.physical_size_x_quantity, "micrometer"),
                _quantity(pixels.time_increment_quantity, "second"))
    if imagej:
        unit = str(imagej.get("unit", "")).lower()
        px = image.physical_pixel_sizes.X if unit in MICRON_UNITS else None
        interval = imagej.get("finterval")
        return px, float(interval) if interval else None
    return None, None


def position_names(path: str | Path) -> list[str]:
    """List the positions (bioio scenes) of a movie file by name, in the file's order.

    The name is the OME image name if it has one.

    Raises
    ------
    MovieError
        The file cannot be opened as a movie.
    """
    image, _ = _open_image(Path(path), str(path))
    return _position_names(image)


def _position_names(image: BioImage) -> list[str]:
    try:
        named = [i.name for i in image.ome_metadata.images]
    except Exception:  # no OME metadata: bioio's scene ids
        named = []
    if len(named) == len(image.scenes) and all(named) and len(set(named)) == len(named):
        return [str(n) for n in named]
    return [str(s) for s in image.scenes]


def _file_info(path: Path, name: str, image: BioImage, imagej: dict, selection: Selection,
               max_frame_pixels: int | None) -> MovieInfo:
    """Select position and channel in ``image`` and describe the frames the selection holds."""
    positions = _position_names(image)
    position = _pick(name, "position", selection.position, positions)
    image.set_scene(position)
    dims = image.dims
    if "S" in dims.order and dims.S > 1:
        raise MovieError(f"{name}: RGB/multi-sample pixels ({dims.S} samples per pixel); "
                         "LCH ingests single-channel label-free movies")
    if dims.Z > 1:
        raise MovieError(f"{name}: a Z-stack ({dims.Z} planes); LCH ingests 2-D time series")
    channels = [str(c) for c in (image.channel_names or [f"{i}" for i in range(dims.C)])]
    channel = _pick(name, "channel", selection.channel, channels)
    if 0 in (dims.T, dims.Y, dims.X):
        raise MovieError(f"{name}: empty movie (T×Y×X {dims.T}×{dims.Y}×{dims.X})")
    last = dims.T - 1 if selection.last_frame is None else selection.last_frame
    if not 0 <= selection.first_frame <= last < dims.T:
        raise MovieError(
            f"{name}: frames {selection.first_frame}..{last} (first_frame, last_frame) are "
            f"not within its {dims.T} frames (0..{dims.T - 1})"
        )
    _check_frame_size(name, dims.Y, dims.X, max_frame_pixels)
    dtype = _check_dtype(name, image.dtype)
    px, interval = _file_scales(image, imagej)
    return MovieInfo(
        path, last - selection.first_frame + 1, dims.Y, dims.X, stored_dtype(dtype), dims.order,
        position=position, position_name=positions[position], channel=channel,
        channel_name=channels[channel], first_frame=selection.first_frame,
        pixel_size_um=px, frame_interval_s=interval,
    )


def read_movie_info(
    source: Source, name: str | None = None, *,
    max_frame_pixels: int | None = DEFAULT_MAX_FRAME_PIXELS,
    selection: Selection = WHOLE_FILE,
) -> MovieInfo:
    """Open a movie and check that it can be ingested, without reading its pixels.

    Parameters
    ----------
    source : path or binary file
        The movie file (read through bioio), or an open TIFF (read with tifffile).
    name : str, optional
        What to call it in messages (default: the path).
    max_frame_pixels : int or None
        Largest frame (height × width) accepted, judged from the header; None: no limit.
    selection : Selection
        The position, channel and frames of a file to read (a binary file: the defaults).

    Raises
    ------
    FrameTooLarge
        Frames declared larger than ``max_frame_pixels``.
    MovieError
        Missing file, no reader for it, damaged, empty, RGB, Z-stack, several channels or
        positions and none picked, a selection that is not in the file, unsupported pixel
        type, or fewer pages than the declared frame count.
    """
    path = _name(source, name)
    if not isinstance(source, str | Path):
        with _open(source, path) as tif:
            return _plain_tiff_info(path, tif, max_frame_pixels)
    image, imagej = _open_image(Path(source), path)
    return _file_info(Path(source), path, image, imagej, selection, max_frame_pixels)


def _check_frame(path: str, index: int, frame: np.ndarray, info: MovieInfo) -> np.ndarray:
    frame = np.asarray(frame).reshape(info.height, info.width)
    if frame.dtype.kind == "f":
        if not np.isfinite(frame).all():
            raise MovieError(f"{path}: frame {index} contains NaN or infinite values")
        frame = frame.astype(info.dtype, copy=False)
    return frame


def _read_plane(path: str, image: BioImage, info: MovieInfo, t: int) -> np.ndarray:
    try:
        plane = image.get_image_dask_data("YX", T=t, C=info.channel, Z=0)
        return plane.compute(scheduler="synchronous")
    except Exception as exc:  # corrupt strips surface as several exception types
        raise MovieError(f"{path}: frame {t} cannot be read ({exc})") from exc


def iter_frames(
    source: Source, name: str | None = None, *,
    max_frame_pixels: int | None = DEFAULT_MAX_FRAME_PIXELS,
    selection: Selection = WHOLE_FILE,
) -> Iterator[np.ndarray]:
    """Yield the selected frames of a movie one at a time (never the whole movie in memory).

    ``source``, ``name``, ``max_frame_pixels`` and ``selection`` are as in
    :func:`read_movie_info`; everything is checked before the first frame is decoded.

    Raises
    ------
    MovieError
        As :func:`read_movie_info`, and for an unreadable (truncated, corrupt) frame or
        NaN/inf in floating-point data.
    """
    path = _name(source, name)
    if not isinstance(source, str | Path):
        with _open(source, path) as tif:
            info = _plain_tiff_info(path, tif, max_frame_pixels)
            for t in range(info.frames):
                try:
                    frame = tif.asarray(key=t, series=0)
                except Exception as exc:  # corrupt strips surface as several exception types
                    raise MovieError(f"{path}: frame {t} cannot be read ({exc})") from exc
                yield _check_frame(path, t, frame, info)
        return
    image, imagej = _open_image(Path(source), path)
    info = _file_info(Path(source), path, image, imagej, selection, max_frame_pixels)
    for t in range(info.first_frame, info.first_frame + info.frames):
        yield _check_frame(path, t, _read_plane(path, image, info, t), info)


def file_sha256(path: str | Path) -> str:
    """Hash a file's bytes with SHA-256 (the content hash stored as provenance)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
