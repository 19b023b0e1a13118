"""OME-Zarr (NGFF 0.5 on Zarr v3) movie stores: layout, metadata, writing and opening.

Layout of one movie store (``<movie>.ome.zarr``)::

    zarr.json               ome: NGFF 0.5 multiscales (axes t, c, y, x), one dataset per level;
                            lch: provenance
    0                       (T, 1, Y, X) the movie at full resolution
    1, 2, ...               (T, 1, Y/2**k, X/2**k) the lower levels (:func:`level_shapes`)
    labels/zarr.json        ome: {version: 0.5, labels: [cells]}       (once segmented)
    labels/cells/zarr.json  ome: multiscales (as the image's) + image-label (source ../../)
    labels/cells/0, 1, ...  (T, 1, Y/2**k, X/2**k) uint32, 0 = background, cell ids per frame

Each level halves y and x (rounding down) until both are at most :data:`COARSEST_LEVEL_SIZE`,
so napari and ome-zarr-py can show an overview without reading full frames; a 512² movie has
level ``0`` only. Level k's ``scale`` in y and x is the pixel size × 2**k. The lower levels are
made from the level above once it is written (:func:`fill_pyramid`): the 2×2 block mean for
intensities, every second pixel for labels (ids stay ids). Stores written before pyramids
have level ``0`` only and read as before: every reader here reads level ``0``.

The label array's level ``0`` has the frames' chunks but one frame per shard: segmentation
workers write their frames in parallel, and two writers of one shard would overwrite each other's
chunks. The lower levels are written by one process, shard by shard, so they pack frames as the
image's do.

Chunks are one frame (1, 1, Y, X) because every reader (segmentation, viewers) reads a frame at a
time; frames over 1024² are tiled so one chunk stays a few MiB. Chunks are packed into shards of
several frames (~32 MiB uncompressed): one file per shard instead of one per frame keeps the file
count of a 1,000-frame movie in the tens, which matters on object stores, while each frame is still
read alone through the shard index. Compression is Blosc-LZ4 with bit-shuffle: on noisy 16-bit
phase-contrast frames (512², measured with bench/ingest.py's cohort) it reaches a ratio of 1.73
against 1.81 for Blosc-zstd level 5, at a quarter of the CPU time to write and 4× the read speed
(every frame is read again by segmentation): the shot noise in the low bits is incompressible, so
a heavier codec buys little.

Every function takes a local path or a URL (with fsspec ``storage_options``, default from the
environment: :func:`lch.storage.storage_options_from_env`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from lch.paths import Location, is_url
from lch.storage import filesystem, zarr_store

if TYPE_CHECKING:
    import dask.array as da

NGFF_VERSION = "0.5"
ARRAY_PATH = "0"
AXES = ("t", "c", "y", "x")
TILE = 1024
SHARD_BYTES = 32 << 20
COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
LABELS_PATH = "labels"
LABEL_NAME = "cells"
LABEL_DTYPE = np.dtype(np.uint32)
# Background transparent; napari and ome-zarr-py colour the cell ids themselves.
LABEL_COLORS = [{"label-value": 0, "rgba": [0, 0, 0, 0]}]
COARSEST_LEVEL_SIZE = 512
"""The pyramid halves y and x until both are at most this many pixels."""
# Each thread holds about one target shard (plus its source pieces): memory stays a few shards.
PYRAMID_THREADS = 2


def chunk_shape(height: int, width: int) -> tuple[int, int, int, int]:
    """One frame per chunk, tiled at 1024×1024 when the frame is larger than that."""
    if height * width <= TILE * TILE:
        return (1, 1, height, width)
    return (1, 1, min(height, TILE), min(width, TILE))


def shard_shape(frames: int, height: int, width: int, itemsize: int) -> tuple[int, ...]:
    """Whole frames (rounded up to whole tiles) × as many frames as fit in ~32 MiB."""
    _, _, cy, cx = chunk_shape(height, width)
    sy, sx = math.ceil(height / cy) * cy, math.ceil(width / cx) * cx
    per_shard = max(1, min(frames, SHARD_BYTES // (sy * sx * itemsize)))
    return (per_shard, 1, sy, sx)


def level_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """Return the (y, x) size of each pyramid level of a ``height`` × ``width`` movie.

    Level 0 is the full size; each next level halves y and x (rounding down) until both are at
    most :data:`COARSEST_LEVEL_SIZE` (or a side would drop to nothing). A movie of 512² or less
    has one level; 2048² has 2048², 1024² and 512².
    """
    shapes = [(height, width)]
    while max(shapes[-1]) > COARSEST_LEVEL_SIZE and min(shapes[-1]) >= 2:
        y, x = shapes[-1]
        shapes.append((y // 2, x // 2))
    return shapes


def with_levels(ome: dict, height: int, width: int) -> dict:
    """Describe every pyramid level of a ``height`` × ``width`` movie in its ``ome`` attribute.

    Return a copy of ``ome`` whose ``multiscales[0].datasets`` list every level. Level ``k``
    has path ``"k"`` and level 0's ``scale`` with y and x multiplied by 2**k (t and c
    unchanged); any datasets ``ome`` had are replaced.
    """
    (image,) = ome["multiscales"]
    t, c, y, x = image["datasets"][0]["coordinateTransformations"][0]["scale"]
    datasets = [
        {
            "path": str(level),
            "coordinateTransformations": [
                {"type": "scale", "scale": [t, c, y * 2**level, x * 2**level]}
            ],
        }
        for level in range(len(level_shapes(height, width)))
    ]
    return {**ome, "multiscales": [{**image, "datasets": datasets}]}


def ngff_metadata(
    name: str, *, pixel_size_um: float | None, frame_interval_s: float | None
) -> dict:
    """Build the ``ome`` group attribute of NGFF 0.5 for a (t, c, y, x) image, listing level 0.

    :func:`create_movie_store` and :func:`create_labels_group` add the lower levels
    (:func:`with_levels`).

    Parameters
    ----------
    name : str
        The image's NGFF ``name`` (the movie id).
    pixel_size_um, frame_interval_s : float or None
        Level 0's scale of y/x (µm) and t (s); None for 1.0 without a unit.
    """
    time_axis = {"name": "t", "type": "time"}
    if frame_interval_s:
        time_axis["unit"] = "second"
    space = [{"name": ax, "type": "space"} for ax in ("y", "x")]
    if pixel_size_um:
        for axis in space:
            axis["unit"] = "micrometer"
    scale = [frame_interval_s or 1.0, 1.0, pixel_size_um or 1.0, pixel_size_um or 1.0]
    return {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": [time_axis, {"name": "c", "type": "channel"}, *space],
                "datasets": [
                    {
                        "path": ARRAY_PATH,
                        "coordinateTransformations": [{"type": "scale", "scale": scale}],
                    }
                ],
            }
        ],
    }


def create_movie_store(
    path: Location,
    *,
    frames: int,
    height: int,
    width: int,
    dtype: np.dtype,
    ome: dict,
    provenance: dict,
    storage_options: dict | None = None,
) -> zarr.Array:
    """Create an empty movie store at ``path`` (which must not exist) and return its level 0.

    Every level of :func:`level_shapes` is created, empty, and listed in the stored ``ome``
    (``ome`` with :func:`with_levels` applied). Write the frames into the returned array
    (:func:`write_frames`), then the lower levels with :func:`fill_pyramid`.
    """
    group = zarr.open_group(zarr_store(path, storage_options), mode="w-", zarr_format=3)
    group.attrs.update({"ome": with_levels(ome, height, width), "lch": provenance})
    itemsize = np.dtype(dtype).itemsize
    arrays = [
        _create_level(group, level, (frames, 1, y, x), shard_shape(frames, y, x, itemsize), dtype)
        for level, (y, x) in enumerate(level_shapes(height, width))
    ]
    return arrays[0]


def _create_level(
    group: zarr.Group, level: int, shape: tuple[int, ...], shards: tuple[int, ...], dtype
) -> zarr.Array:
    return group.create_array(
        str(level),
        shape=shape,
        chunks=chunk_shape(*shape[2:]),
        shards=shards,
        dtype=dtype,
        compressors=COMPRESSOR,
        fill_value=0,
        dimension_names=AXES,
    )


def write_frames(array: zarr.Array, frames: Iterable[np.ndarray]) -> int:
    """Write frames in order, one whole shard at a time; return the number written.

    Only one shard of frames is held in memory, so memory does not grow with the movie.
    """
    per_shard = array.shards[0]
    buffer = np.empty((per_shard, 1, *array.shape[2:]), dtype=array.dtype)
    start = filled = 0
    for frame in frames:
        buffer[filled, 0] = frame
        filled += 1
        if filled == per_shard:
            array[start : start + filled] = buffer
            start, filled = start + filled, 0
    if filled:
        array[start : start + filled] = buffer[:filled]
    return start + filled


def labels_group_metadata() -> dict:
    """Build the ``labels`` group's ``ome`` attribute: NGFF 0.5, one label image, ``cells``."""
    return {"version": NGFF_VERSION, "labels": [LABEL_NAME]}


def label_image_metadata(image_ome: dict) -> dict:
    """Build the ``ome`` attribute of ``labels/cells``.

    It has the image's axes and scales, and ``image-label`` pointing back at the image
    (``../../``).
    """
    (image,) = image_ome["multiscales"]
    return {
        "version": NGFF_VERSION,
        "multiscales": [{**image, "name": LABEL_NAME}],
        "image-label": {"colors": LABEL_COLORS, "source": {"image": "../../"}},
    }


def label_shard_shape(height: int, width: int) -> tuple[int, int, int, int]:
    """One whole frame (rounded up to whole tiles) per shard: parallel writers never share one."""
    _, _, cy, cx = chunk_shape(height, width)
    return (1, 1, math.ceil(height / cy) * cy, math.ceil(width / cx) * cx)


def create_labels_group(
    path: Location,
    *,
    frames: int,
    height: int,
    width: int,
    image_ome: dict,
    attributes: dict,
    storage_options: dict | None = None,
) -> zarr.Array:
    """Create a complete, empty ``labels`` group at ``path``; return its label array's level 0.

    ``path`` must not exist. Level 0 is ``cells/0``, all background until written.
    ``path`` is where the group is written aside; it becomes ``<store>/labels`` when committed
    (:func:`lch.conversion.commit_labels`). ``attributes`` go under ``lch`` on ``cells``. Every
    level of :func:`level_shapes` is created, as the image's (``image_ome`` with
    :func:`with_levels` applied); level 0 has one frame per shard (:func:`label_shard_shape`),
    the lower levels, filled from it by :func:`fill_pyramid`, the image's shard rules.
    """
    root = zarr.open_group(zarr_store(path, storage_options), mode="w-", zarr_format=3)
    root.attrs.update({"ome": labels_group_metadata()})
    image = root.create_group(LABEL_NAME)
    image_ome = with_levels(image_ome, height, width)
    image.attrs.update({"ome": label_image_metadata(image_ome), "lch": attributes})
    itemsize = LABEL_DTYPE.itemsize
    arrays = [
        _create_level(
            image, level, (frames, 1, y, x),
            label_shard_shape(y, x) if level == 0 else shard_shape(frames, y, x, itemsize),
            LABEL_DTYPE,
        )
        for level, (y, x) in enumerate(level_shapes(height, width))
    ]
    return arrays[0]


def _mean_2x2(block: np.ndarray) -> np.ndarray:
    """Average each 2×2 pixel block of an even-sized (..., Y, X) block."""
    # float32 is exact for up to 16-bit pixels (four of them sum below 2**24) and twice as fast.
    b = block.astype(np.float32 if block.dtype.itemsize <= 2 else np.float64)
    return (b[..., ::2, ::2] + b[..., 1::2, ::2] + b[..., ::2, 1::2] + b[..., 1::2, 1::2]) / 4


def _downsample(level: da.Array, labels: bool) -> da.Array:
    """Build the next pyramid level of a (T, 1, Y, X) dask array: (T, 1, Y // 2, X // 2)."""
    y, x = (n // 2 for n in level.shape[2:])
    if labels:
        # Nearest neighbour, not a mean: a mean of two cell ids is a third cell's id.
        return level[:, :, : 2 * y : 2, : 2 * x : 2]
    even = level[:, :, : 2 * y, : 2 * x]  # every block stays even: the chunks are even sized
    chunks = (*even.chunks[:2], *(tuple(n // 2 for n in c) for c in even.chunks[2:]))
    mean = even.map_blocks(_mean_2x2, chunks=chunks,
                           dtype=np.float32 if level.dtype.itemsize <= 2 else np.float64)
    if np.issubdtype(level.dtype, np.integer):
        mean = np.rint(mean)  # a NumPy ufunc on a dask array stays lazy
    return mean.astype(level.dtype)


def _fill_image(image: zarr.Group) -> int:
    """Fill levels 1.. of one NGFF image group from the level above; return how many."""
    # Imported here: dask takes ~0.4 s to import, and most processes reading movies never
    # build a pyramid.
    import dask.array as da

    multiscales = image.attrs["ome"]["multiscales"][0]
    paths = [dataset["path"] for dataset in multiscales["datasets"]]
    labels = "image-label" in image.attrs["ome"]
    for above, path in pairwise(paths):
        target = image[path]
        source = _downsample(da.from_zarr(image[above]), labels)
        if source.shape != target.shape:
            raise ValueError(
                f"level {path} is {target.shape}, level {above} halves to {source.shape}"
            )
        blocks = tuple(min(s, n) for s, n in zip(target.shards or target.chunks, target.shape,
                                                 strict=True))
        # One dask block per target shard: a shard written by two tasks would lose chunks.
        da.store(source.rechunk(blocks), target, lock=False, scheduler="threads",
                 num_workers=PYRAMID_THREADS)
    return len(paths) - 1


def fill_pyramid(path: Location, storage_options: dict | None = None) -> int:
    """Write the lower pyramid levels of a movie store's image or a ``labels`` group's images.

    Every level is computed from level 0.

    Parameters
    ----------
    path : path or URL
        A movie store (or one being written aside) whose level ``0`` is written: its image's
        levels ``1``, ``2``, ... are filled, each the 2×2 block mean of the level above, rounded
        to the stored dtype; the store's ``labels`` group is left alone. Or a ``labels`` group
        (:func:`create_labels_group`, committed or aside): each of its label images' levels is
        filled with every second pixel of the level above, so cell ids stay ids.
    storage_options : dict, optional
        fsspec options for a URL ``path``.

    Returns
    -------
    int
        The number of levels written; 0 for a store with one level.

    Notes
    -----
    Each level is a dask graph from the level above, rechunked to the target's shards and
    stored shard by shard with at most :data:`PYRAMID_THREADS` threads: no two tasks write one
    shard, and memory stays a few shards whatever the movie's length.
    """
    root = zarr.open_group(zarr_store(path, storage_options), mode="r+")
    ome = root.attrs["ome"]
    if "labels" in ome:
        return sum(_fill_image(root[name]) for name in ome["labels"])
    return _fill_image(root)


def open_label_writer(path: Location, storage_options: dict | None = None) -> zarr.Array:
    """Open the label array (level 0) of a ``labels`` group being written, for writing frames.

    The group is one :func:`create_labels_group` made.
    """
    return zarr.open_array(
        zarr_store(path, storage_options), path=f"{LABEL_NAME}/{ARRAY_PATH}", mode="r+"
    )


def open_labels(path: Location, storage_options: dict | None = None) -> zarr.Array | None:
    """Open a movie store's committed label movie, level 0 (T, 1, Y, X), read-only.

    None if it has none.

    A ``labels`` group without its ``zarr.json`` (a commit to an object store killed half-way)
    counts as none.
    """
    store = zarr_store(path, storage_options, read_only=True)
    try:
        group = zarr.open_group(store, path=LABELS_PATH, mode="r")
        if LABEL_NAME not in group.attrs.get("ome", {}).get("labels", []):
            return None
        return zarr.open_array(store, path=f"{LABELS_PATH}/{LABEL_NAME}/{ARRAY_PATH}", mode="r")
    except (FileNotFoundError, KeyError, zarr.errors.BaseZarrError):
        return None


def label_attributes(path: Location, storage_options: dict | None = None) -> dict | None:
    """Read the ``lch`` attributes of a store's committed label image (who made it), or None."""
    store = zarr_store(path, storage_options, read_only=True)
    try:
        group = zarr.open_group(store, path=f"{LABELS_PATH}/{LABEL_NAME}", mode="r")
    except (FileNotFoundError, KeyError, zarr.errors.BaseZarrError):
        return None
    return dict(group.attrs.get("lch", {}))


def read_image_metadata(path: Location, storage_options: dict | None = None) -> dict:
    """Read the ``ome`` attribute of a movie store's image group."""
    group = zarr.open_group(zarr_store(path, storage_options, read_only=True), mode="r")
    return dict(group.attrs["ome"])


def open_movie(path: Location, storage_options: dict | None = None) -> zarr.Array:
    """Open a stored movie's full-resolution level (``0``, (T, 1, Y, X)) read-only."""
    store = zarr_store(path, storage_options, read_only=True)
    return zarr.open_array(store, path=ARRAY_PATH, mode="r")


def read_provenance(path: Location, storage_options: dict | None = None) -> dict | None:
    """Read a movie store's ``lch`` provenance attributes; None if absent or unreadable.

    This is the completeness test of a store: the group metadata holding them is what a commit
    writes last (:func:`lch.atomic.commit_aside`).
    """
    try:
        group = zarr.open_group(zarr_store(path, storage_options, read_only=True), mode="r")
        provenance = dict(group.attrs.get("lch", {}))
        group[ARRAY_PATH]  # a store whose array is missing is incomplete
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.BaseZarrError):
        return None
    return provenance or None


def store_bytes(path: Location, storage_options: dict | None = None) -> int:
    """Bytes stored under a store folder (or prefix)."""
    if not is_url(path):
        return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    fs, root = filesystem(path, storage_options)
    return int(fs.du(root, total=True))
