"""TIFF → OME-Zarr conversion of one movie, atomic and idempotent.

The store is written aside (``.tmp-<movie>-<uuid>`` in the same folder) and committed with a
rename, so a reader never sees a half-written movie and a killed run leaves only a hidden folder
that the next run removes. The source's SHA-256 is stored in the provenance: converting the same
file again is a no-op.

On an object store (``dest`` a URL) there is no rename: the store is still written aside, then
copied into place with its group metadata last (:func:`lch.atomic.commit_aside`). That metadata
holds the provenance, so the completeness test of readers and the idempotency test are one and
the same: a store without it (a commit killed half-way) is neither read nor skipped.

A movie may come with its label movie (the manifest's ``labels``): it is checked before the store
is created (:func:`lch.labels.check_label_movie`) and written into the store aside, as its NGFF
``labels`` group, so the movie lands with its labels or not at all. The segmentation stage
writes the labels it makes the same way, one level down (:func:`start_labels`,
:func:`commit_labels`): a ``labels`` group written aside inside the store and renamed into place
(on an object store: copied with its ``zarr.json`` last), so a reader sees the previous labels,
none, or the new ones whole.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lch.atomic import OLD_PREFIX, TMP_PREFIX, aside_location, commit, is_committed
from lch.labels import GIVEN, check_label_movie, iter_label_frames
from lch.movie_io import (
    DEFAULT_MAX_FRAME_PIXELS,
    WHOLE_FILE,
    MovieError,
    MovieInfo,
    Selection,
    file_sha256,
    iter_frames,
    read_movie_info,
)
from lch.omezarr import (
    LABELS_PATH,
    create_labels_group,
    create_movie_store,
    fill_pyramid,
    ngff_metadata,
    open_labels,
    open_movie,
    read_image_metadata,
    read_provenance,
    store_bytes,
    write_frames,
)
from lch.paths import Location, is_url, join
from lch.pixel_size import DEFAULT_PIXEL_SIZE_UM, check_pixel_size
from lch.storage import filesystem


@dataclass(frozen=True)
class ConversionResult:
    """What happened to one movie: ``status`` is "ok", "skipped" (already stored) or "failed"."""

    movie: str
    status: str
    frames: int = 0
    source_bytes: int = 0
    stored_bytes: int = 0
    seconds: float = 0.0
    message: str = ""


def _remove(location: Location, storage_options: dict | None = None) -> None:
    """Delete a store if it is there, best effort (it is only ever a leftover)."""
    if not is_url(location):
        shutil.rmtree(location, ignore_errors=True)
        return
    try:
        fs, path = filesystem(location, storage_options)
        fs.rm(path, recursive=True)
    except Exception:  # cleanup must not hide the error that caused it
        pass


def remove_leftovers(folder: Location, storage_options: dict | None = None) -> list[Location]:
    """Delete hidden stores left by killed runs in ``folder``; return what was removed.

    On an object store, a store whose commit was killed half-way (no group metadata) goes too.
    Call it holding the cohort's lock (:func:`lch.cohort_lock.cohort_lock`): another live run's
    write-aside stores look the same.
    """
    if is_url(folder):
        return _remove_remote_leftovers(folder, storage_options)
    removed = []
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith((TMP_PREFIX, OLD_PREFIX)):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:  # a write-aside table
                    path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _remove_remote_leftovers(folder: str, storage_options: dict | None) -> list[str]:
    fs, root = filesystem(folder, storage_options)
    if not fs.exists(root):
        return []
    removed = []
    for path in fs.ls(root, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        hidden = name.startswith((TMP_PREFIX, OLD_PREFIX))
        if hidden or (name.endswith(".ome.zarr") and not is_committed(fs, path)):
            fs.rm(path, recursive=True)
            removed.append(f"{folder}/{name}")
    return removed


def start_labels(
    store: Location, *, attributes: dict, storage_options: dict | None = None
) -> Location:
    """Create an empty ``labels`` group for a stored movie, aside inside its store.

    Parameters
    ----------
    store : path or URL
        A committed movie store.
    attributes : dict
        Stored under ``lch`` on ``labels/cells`` (which segmenter made the labels).
    storage_options : dict, optional
        fsspec options for a URL ``store``.

    Returns
    -------
    path or URL
        The aside group (``<store>/.tmp-labels-<tag>``): write frames into it with
        :func:`lch.omezarr.open_label_writer`, then :func:`commit_labels` or
        :func:`discard_labels`.
    """
    frames, _, height, width = open_movie(store, storage_options).shape
    group = aside_location(join(store, LABELS_PATH), TMP_PREFIX)
    create_labels_group(
        group, frames=frames, height=height, width=width,
        image_ome=read_image_metadata(store, storage_options), attributes=attributes,
        storage_options=storage_options,
    )
    return group


def commit_labels(aside: Location, store: Location, storage_options: dict | None = None) -> None:
    """Make a finished aside ``labels`` group the store's, replacing the previous one whole."""
    commit(aside, join(store, LABELS_PATH), storage_options)


def discard_labels(aside: Location, storage_options: dict | None = None) -> None:
    """Remove an aside ``labels`` group that will not be committed (best effort)."""
    _remove(aside, storage_options)


def _write_given_labels(
    tmp: Location, labels: Path, info, ome: dict, sha: str, storage_options: dict | None
) -> None:
    """Write a checked label movie into the store being written aside, as its labels group."""
    array = create_labels_group(
        join(tmp, LABELS_PATH), frames=info.frames, height=info.height, width=info.width,
        image_ome=ome, attributes={"segmenter": GIVEN, "source_path": str(labels),
                                   "source_sha256": sha},
        storage_options=storage_options,
    )
    written = write_frames(array, iter_label_frames(labels, info))
    if written != info.frames:
        raise MovieError(f"{labels}: {written} frames read, {info.frames} declared")
    fill_pyramid(join(tmp, LABELS_PATH), storage_options)


def physical_scales(
    info: MovieInfo, pixel_size_um: float | None, frame_interval_s: float | None
) -> dict:
    """Decide a stored movie's pixel size and frame interval, each with where it came from.

    The manifest's value wins, then the file's metadata; a pixel size neither gives is
    :data:`lch.pixel_size.DEFAULT_PIXEL_SIZE_UM`, a frame interval neither gives stays None.

    Raises
    ------
    MovieError
        A pixel size from the file's metadata that cannot be a microscope's (a unit mistake).
    """
    if pixel_size_um is not None:
        px, px_from = pixel_size_um, "manifest"
    elif info.pixel_size_um is not None:
        px, px_from = info.pixel_size_um, "file"
        try:
            check_pixel_size(px)
        except ValueError as exc:
            raise MovieError(
                f"{info.path}: the file's metadata gives a pixel size of {px} µm ({exc}); "
                "give the right one as pixel_size_um in the manifest"
            ) from exc
    else:
        px, px_from = DEFAULT_PIXEL_SIZE_UM, "default"
    if frame_interval_s is not None:
        dt, dt_from = frame_interval_s, "manifest"
    elif info.frame_interval_s:
        dt, dt_from = info.frame_interval_s, "file"
    else:
        dt, dt_from = None, "unknown"
    return {"pixel_size_um": px, "pixel_size_from": px_from,
            "frame_interval_s": dt, "frame_interval_from": dt_from}


def _where_in_file(info: MovieInfo) -> dict:
    return {"position": info.position, "position_name": info.position_name,
            "channel": info.channel, "channel_name": info.channel_name,
            "first_frame": info.first_frame}


def convert_movie(
    source: str | Path,
    dest: Location,
    *,
    movie: str,
    provenance: dict,
    pixel_size_um: float | None = None,
    frame_interval_s: float | None = None,
    storage_options: dict | None = None,
    max_frame_pixels: int | None = DEFAULT_MAX_FRAME_PIXELS,
    labels: str | Path | None = None,
    selection: Selection = WHOLE_FILE,
) -> ConversionResult:
    """Convert one movie (one position and channel of a file) into an OME-Zarr store at ``dest``.

    Parameters
    ----------
    source : path
        The movie file: OME-TIFF, TIFF (T×Y×X or Y×X), or a vendor format bioio reads.
    dest : path or URL
        The ``<movie>.ome.zarr`` folder (or object-store prefix) to create or replace.
    movie : str
        The movie id (used in messages and the NGFF ``name``).
    provenance : dict
        Attributes stored under ``lch`` (patient, cell line, label, ...); the source path, its
        SHA-256, size, shape and the conversion time are added.
    pixel_size_um, frame_interval_s : float, optional
        Physical scale of y/x and t (the manifest's); None: from the file's metadata
        (:func:`physical_scales`). Written to the NGFF coordinate transformations and, with
        where each came from, to the provenance.
    storage_options : dict, optional
        fsspec options for a URL ``dest``; default from the environment.
    max_frame_pixels : int or None
        Largest frame accepted (judged from the file's header, before any pixel is decoded).
    labels : path, optional
        The movie's own label movie (T×Y×X like it, integer ids, 0 = background), stored as the
        store's NGFF ``labels`` group; checked before anything is written.
    selection : Selection
        The position, channel and frames of the file to store.

    Returns
    -------
    ConversionResult
        "skipped" if ``dest`` already holds this exact source (and label movie), "ok" after a
        conversion, or "failed" with a message naming the file (the movie's or the label
        movie's); a failure leaves ``dest`` as it was.
    """
    source = Path(source)
    labels = Path(labels) if labels is not None else None
    dest = str(dest) if is_url(dest) else Path(dest)
    started = time.perf_counter()
    tmp = aside_location(dest, TMP_PREFIX)
    try:
        info = read_movie_info(source, max_frame_pixels=max_frame_pixels, selection=selection)
        scales = physical_scales(info, pixel_size_um, frame_interval_s)
        label_info = check_label_movie(labels, info) if labels is not None else None
        sha = file_sha256(source)
        labels_sha = file_sha256(labels) if labels is not None else None
        existing = read_provenance(dest, storage_options)
        stored_as_now = {"source_sha256": sha, "labels_sha256": labels_sha,
                         "frames": info.frames, **_where_in_file(info), **scales}
        unchanged = existing and all(existing.get(k) == v for k, v in stored_as_now.items())
        if unchanged and (labels is None or open_labels(dest, storage_options) is not None):
            return ConversionResult(
                movie, "skipped", existing.get("frames", info.frames), source.stat().st_size,
                store_bytes(dest, storage_options), time.perf_counter() - started,
                "already stored",
            )
        attrs = {
            **provenance,
            **scales,
            **_where_in_file(info),
            "source_path": str(source),
            "source_sha256": sha,
            "source_bytes": source.stat().st_size,
            "source_axes": info.source_axes,
            "frames": info.frames,
            "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if labels is not None:
            attrs |= {"labels_path": str(labels), "labels_sha256": labels_sha}
        if not is_url(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
        ome = ngff_metadata(movie, pixel_size_um=scales["pixel_size_um"],
                            frame_interval_s=scales["frame_interval_s"])
        array = create_movie_store(
            tmp,
            frames=info.frames,
            height=info.height,
            width=info.width,
            dtype=info.dtype,
            ome=ome,
            provenance=attrs,
            storage_options=storage_options,
        )
        written = write_frames(array, iter_frames(source, max_frame_pixels=max_frame_pixels,
                                                  selection=selection))
        if written != info.frames:
            raise MovieError(f"{source}: {written} frames read, {info.frames} declared")
        fill_pyramid(tmp, storage_options)
        if labels is not None:
            _write_given_labels(tmp, labels, label_info, ome, labels_sha, storage_options)
        commit(tmp, dest, storage_options)
    except (MovieError, OSError) as exc:
        _remove(tmp, storage_options)
        return ConversionResult(
            movie, "failed", seconds=time.perf_counter() - started, message=str(exc)
        )
    except BaseException:
        _remove(tmp, storage_options)
        raise
    return ConversionResult(
        movie, "ok", info.frames, attrs["source_bytes"], store_bytes(dest, storage_options),
        time.perf_counter() - started,
    )
