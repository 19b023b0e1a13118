"""Stage B of ingestion (`lch segment`): Ray Data over the cohort's frames → cells + crops.

Work items are (movie store, frame) pairs from :func:`ray.data.from_items`; a pool of
:class:`FrameSegmenter` actors reads each frame's chunk from the OME-Zarr store, gets its labels
(the chosen segmenter's, or those the movie came with: the manifest's ``labels``) and measures
and crops the cells (:func:`lch.cells.frame_cells`). No process ever holds a whole movie:
actors hold one batch of frames, the driver one block of cells while it streams them into the
cohort's cell store.

The labels a segmenter makes are stored with the movie as its NGFF ``labels`` group: the driver
creates the group aside in each store (:func:`lch.conversion.start_labels`), each actor writes
its frames' labels into it (one frame per shard, so parallel writers never share a shard), the
driver fills each group's lower pyramid levels from the frames once all are written
(:func:`lch.omezarr.fill_pyramid`), and commits every group once the cell store is written too
(:func:`lch.conversion.commit_labels`); a failed or killed run leaves the previous labels.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import ray
from tqdm.auto import tqdm

from lch.cells import frame_cells
from lch.cellstore import CellStoreWriter
from lch.cohort_lock import cohort_lock
from lch.conversion import commit_labels, discard_labels, remove_leftovers, start_labels
from lch.crops import DEFAULT_CROP_SIZE, DEFAULT_FIELD_OF_VIEW_UM
from lch.labels import (
    DEFAULT_SEGMENTER,
    GIVEN,
    check_segmenter,
    make_segmenter,
)
from lch.morphology import FEATURE_COLUMNS
from lch.omezarr import (
    LABEL_DTYPE,
    fill_pyramid,
    open_label_writer,
    open_labels,
    open_movie,
    read_provenance,
)
from lch.paths import Location, cohort_dir, is_url, lch_home, movies_dir
from lch.pipelines.runtime import cluster_cpus, init_ray
from lch.pixel_size import DEFAULT_PIXEL_SIZE_UM, check_pixel_size
from lch.storage import check_root, filesystem, storage_options_from_env
from lch.tracking import MIN_TRACK_FRAMES, check_min_track_frames, count_tracks, track_cohort

# A batch is at most FRAMES_PER_BATCH frames of about BATCH_PIXELS in all: small frames travel
# together, a large one alone, so the actors' last batches end within a frame of each other.
FRAMES_PER_BATCH = 4
BATCH_PIXELS = FRAMES_PER_BATCH * 512 * 512
# Cellpose-SAM is a large transformer: fewer actors with more threads each, not one per core.
CELLPOSE_CPUS = 4
META_COLUMNS = ["cohort", "movie", "patient", "cell_line", "label", "pixel_size_um"]
# A row with this cell id is not a cell but the report of a frame that yielded none.
FRAME_MARKER = -1


@dataclass
class SegmentSummary:
    """What the segmentation stage did for one cohort."""

    cohort: str
    frames: int = 0
    frames_without_cells: int = 0
    frames_skipped: dict[str, int] = field(default_factory=dict)
    cells_kept: int = 0
    cells_dropped: dict[str, int] = field(default_factory=dict)
    movies_failed: dict[str, str] = field(default_factory=dict)
    labels_by: dict[str, str] = field(default_factory=dict)
    """Per segmented movie, who outlined its cells: a segmenter's name or ``"manifest"``."""
    cells_per_movie: dict[str, int] = field(default_factory=dict)
    dropped_per_movie: dict[str, dict[str, int]] = field(default_factory=dict)
    tracks: int = 0
    short_tracks: int = 0
    """Tracks seen in fewer frames than the minimum (flagged ``short_track`` in the table)."""
    min_track_frames: int = MIN_TRACK_FRAMES
    seconds: float = 0.0

    @property
    def movies_without_cells(self) -> dict[str, str]:
        """Segmented movies that gave no usable cell (a counted skip), with why."""
        empty = {}
        for movie in sorted(self.labels_by):
            if self.cells_per_movie.get(movie, 0):
                continue
            dropped = self.dropped_per_movie.get(movie, {})
            if dropped:
                reasons = ", ".join(f"{k} {v}" for k, v in sorted(dropped.items()))
                empty[movie] = f"all {sum(dropped.values())} cells found were dropped ({reasons})"
            else:
                empty[movie] = "no cell found in any frame"
        return empty

    def format(self) -> str:
        """Write a human-readable summary: frames, cells, tracks, skips and failures."""
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.cells_dropped.items())) or "none"
        skipped = sum(self.frames_skipped.values())
        empty = self.movies_without_cells
        by = Counter(self.labels_by.values())
        lines = [
            f"cohort {self.cohort} segmented: {self.frames} frames in {self.seconds:.1f} s "
            f"({self.frames / max(self.seconds, 1e-9):.1f} frames/s), {self.cells_kept} cells "
            f"kept, dropped: {dropped}",
            f"  frames without cells: {self.frames_without_cells}   frames skipped: {skipped}"
            f"   movies without usable cells: {len(empty)}",
            f"  tracks: {self.tracks} ({self.short_tracks} shorter than "
            f"{self.min_track_frames} frames, flagged short_track)",
            "  labels stored with each movie, by: "
            + (", ".join(f"{k} {v}" for k, v in sorted(by.items())) or "none"),
        ]
        skips = sorted(self.frames_skipped.items())
        lines += [f"  SKIPPED {n} frame(s): {why}" for why, n in skips]
        lines += [f"  NO CELLS {m}: {why}" for m, why in empty.items()]
        lines += [f"  FAILED {m}: {why}" for m, why in sorted(self.movies_failed.items())]
        return "\n".join(lines)


def batch_frames(frame_pixels: int) -> int:
    """Frames per Ray Data batch for frames of ``frame_pixels`` px each (see BATCH_PIXELS)."""
    return max(1, min(FRAMES_PER_BATCH, BATCH_PIXELS // frame_pixels))


def _marker(movie: str, frame: int, reason: str, crop_size: int) -> tuple[pd.DataFrame, np.ndarray]:
    row = {c: np.nan for c in FEATURE_COLUMNS} | {"label": FRAME_MARKER, "drop_reason": reason}
    table = pd.DataFrame([row]).assign(movie=movie, frame=frame)
    return table, np.zeros((1, crop_size, crop_size), np.float32)


class FrameSegmenter:
    """Ray Data callable class: a batch of (store, movie, frame) items → one row per cell.

    Each item names where its frame's labels come from: ``labels_out``, the aside labels group
    this run writes the segmenter's labels into, or ``""`` for a movie that came with its own
    (read from its store's ``labels`` group). Stores stay open across batches (the actor's
    state) and the segmenter is loaded once per actor; ``storage_options`` reach stores on an
    object store (the actor's environment is not the driver's). Every cell of every frame comes
    back, dropped ones with their reason; a frame that yields no cell comes back as one marker
    row (``label == -1``) whose ``drop_reason`` says why, so the driver can count it.
    """

    def __init__(
        self,
        crop_size: int = DEFAULT_CROP_SIZE,
        storage_options: dict | None = None,
        segmenter: str = DEFAULT_SEGMENTER,
        segmenter_options: dict | None = None,
        field_of_view_um: float = DEFAULT_FIELD_OF_VIEW_UM,
    ) -> None:
        self.crop_size = crop_size
        self.storage_options = storage_options
        self.field_of_view_um = field_of_view_um
        self._segment = make_segmenter(segmenter, segmenter_options or {})
        self._arrays: dict[str, object] = {}

    def _array(self, key: tuple[str, str], opener) -> object:
        if key not in self._arrays:
            self._arrays[key] = opener(key[1], self.storage_options)
        return self._arrays[key]

    def _labels(self, store: str, labels_out: str, frame: np.ndarray, t: int, px: float):
        if not labels_out:  # the movie's own label movie, stored at ingestion
            given = self._array(("given", store), open_labels)
            if given is None:
                raise ValueError(f"{store}: its label movie is missing from the store")
            return given[t, 0]
        labels = self._segment(frame, px)
        # One frame is one whole shard of the aside label array: no other writer touches it.
        self._array(("out", labels_out), open_label_writer)[t, 0] = labels.astype(LABEL_DTYPE)
        return labels

    def _cells(
        self, store: str, movie: str, t: int, pixel_size_um: float, labels_out: str
    ) -> tuple[pd.DataFrame, np.ndarray]:
        try:
            frame = self._array(("movie", store), open_movie)[t, 0]
        except Exception as exc:  # a corrupt chunk surfaces as any codec/IO error
            reason = f"unreadable frame in {movie}: {type(exc).__name__}: {exc}"
            return _marker(movie, t, reason, self.crop_size)
        try:
            labels = self._labels(store, labels_out, frame, t, pixel_size_um)
            table, crops = frame_cells(
                frame, self.crop_size, pixel_size_um=pixel_size_um,
                field_of_view_um=self.field_of_view_um, labels=labels,
            )
        except ValueError as exc:
            return _marker(movie, t, f"invalid frame in {movie}: {exc}", self.crop_size)
        if table.empty:
            return _marker(movie, t, "frame_no_cells", self.crop_size)
        # Dropped cells carry an empty crop so every column keeps one entry per row.
        padded = np.zeros((len(table), self.crop_size, self.crop_size), np.float32)
        padded[(table["drop_reason"] == "").to_numpy()] = crops
        return table.assign(movie=movie, frame=t), padded

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Segment each (store, movie, frame) item of ``batch``; return the rows and crops."""
        items = zip(batch["store"], batch["movie"], batch["frame"], batch["pixel_size_um"],
                    batch["labels_out"], strict=True)
        parts = [self._cells(str(store), str(movie), int(t), float(px), str(out))
                 for store, movie, t, px, out in items]
        table = pd.concat([p[0] for p in parts], ignore_index=True)
        columns = {c: table[c].to_numpy() for c in table.columns}
        columns["drop_reason"] = table["drop_reason"].astype(str).to_numpy()
        # Marker rows hold NaN here: kept as a bool column, Arrow never pickles it and a block
        # joining a batch of markers only never turns it float (which the cell store refuses).
        columns["touches_border"] = table["touches_border"].fillna(False).astype(bool).to_numpy()
        columns["crop"] = np.concatenate([p[1] for p in parts])
        return columns


def _stores(folder: Location, options: dict) -> list[tuple[str, Location]]:
    """``(movie, store)`` for every ``<movie>.ome.zarr`` in ``folder``, hidden ones aside."""
    if is_url(folder):
        fs, root = filesystem(folder, options)
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
        found = [(n, f"{folder}/{n}") for n in names if n.endswith(".ome.zarr")]
    else:
        found = [(p.name, p) for p in folder.glob("*.ome.zarr")]
    return sorted((n.removesuffix(".ome.zarr"), s) for n, s in found if not n.startswith("."))


def _given_labels_problem(store: Location, provenance: dict, frames: int, options: dict) -> str:
    """Why a movie that came with a label movie cannot use it ("" if it can)."""
    labels = open_labels(store, options)
    if labels is not None and labels.shape[0] == frames:
        return ""
    return (f"{store}: the label movie it was ingested with ({provenance.get('labels_path')}) is "
            "missing from the store or incomplete; ingest the movie again")


def _movie_items(
    cohort: str, home: Location, summary: SegmentSummary, options: dict
) -> tuple[list, dict, dict]:
    """One work item per frame of every readable stored movie; failures go in the summary.

    Returns the items, each movie's cell-table metadata, and each movie's store.
    """
    items, meta, stores = [], {}, {}
    for movie, store in _stores(movies_dir(cohort, home), options):
        remove_leftovers(store, options)  # a killed run's aside labels (the lock is held)
        provenance = read_provenance(store, options)
        try:
            if provenance is None:
                raise ValueError("missing or unreadable OME-Zarr metadata")
            frames, _, height, width = open_movie(store, options).shape
        except Exception as exc:
            summary.movies_failed[movie] = f"{store}: cannot open store ({exc})"
            continue
        try:  # the manifest's, else the paper's microscope
            px = check_pixel_size(provenance.get("pixel_size_um") or DEFAULT_PIXEL_SIZE_UM)
        except ValueError as exc:
            summary.movies_failed[movie] = f"{store}: {exc}"
            continue
        given = bool(provenance.get("labels_sha256"))
        if given and (problem := _given_labels_problem(store, provenance, frames, options)):
            summary.movies_failed[movie] = problem
            continue
        meta[movie] = {c: provenance.get(c) for c in META_COLUMNS} | {
            "movie": movie, "pixel_size_um": px, "given_labels": given,
            "frame_interval_s": provenance.get("frame_interval_s"),
            "frame_pixels": height * width,
        }
        stores[movie] = store
        items += [{"store": str(store), "movie": movie, "frame": t, "pixel_size_um": px,
                   "labels_out": ""} for t in range(frames)]
    return items, meta, stores


def _start_labels(
    items: list, meta: dict, stores: dict, segmenter: str, options: dict
) -> dict[str, Location]:
    """Start an aside labels group per movie the segmenter labels; tell the items where."""
    asides = {}
    for movie, store in stores.items():
        if not meta[movie]["given_labels"]:
            asides[movie] = start_labels(store, attributes={"segmenter": segmenter},
                                         storage_options=options)
    for item in items:
        item["labels_out"] = str(asides.get(item["movie"], ""))
    return asides


def _count(block: dict[str, np.ndarray], summary: SegmentSummary) -> np.ndarray:
    """Update the counts from one block of rows; return the mask of kept cells."""
    reasons = block["drop_reason"]
    markers = block["label"] == FRAME_MARKER
    kept = (reasons == "") & ~markers
    summary.cells_kept += int(kept.sum())
    for reason in reasons[markers]:
        if reason == "frame_no_cells":
            summary.frames_without_cells += 1
        else:
            summary.frames_skipped[reason] = summary.frames_skipped.get(reason, 0) + 1
    dropped = ~markers & ~kept
    for reason, n in Counter(reasons[dropped]).items():
        summary.cells_dropped[reason] = summary.cells_dropped.get(reason, 0) + n
    for movie, n in Counter(block["movie"][kept].tolist()).items():
        summary.cells_per_movie[movie] = summary.cells_per_movie.get(movie, 0) + n
    pairs = zip(block["movie"][dropped].tolist(), reasons[dropped].tolist(), strict=True)
    for (movie, reason), n in Counter(pairs).items():
        per_movie = summary.dropped_per_movie.setdefault(movie, {})
        per_movie[reason] = per_movie.get(reason, 0) + n
    return kept


def _table(block: dict[str, np.ndarray], kept: np.ndarray, meta: dict) -> pd.DataFrame:
    table = pd.DataFrame({c: block[c][kept] for c in FEATURE_COLUMNS + ["movie", "frame"]})
    table = table.rename(columns={"label": "cell_id"})
    for column in META_COLUMNS:
        if column != "movie":
            table[column] = [meta[m][column] for m in table["movie"]]
    return table


def _stream_cells(
    items: list, meta: dict, writer: CellStoreWriter, summary: SegmentSummary, crop_size: int,
    frames_per_batch: int, options: dict, progress: bool, segmenter: str,
    segmenter_options: dict, field_of_view_um: float,
) -> None:
    """Segment the frames of ``items`` with Ray Data, streaming the kept cells into ``writer``."""
    init_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # crop indices are reproducible run to run
    ctx.enable_progress_bars = False  # one bar per stage: ours
    cpus = cluster_cpus()
    per_actor = min(CELLPOSE_CPUS, cpus) if segmenter == "cellpose" else 1
    ds = ray.data.from_items(items, override_num_blocks=-(-len(items) // frames_per_batch))
    ds = ds.map_batches(
        FrameSegmenter,
        fn_constructor_kwargs={
            "crop_size": crop_size, "storage_options": options, "segmenter": segmenter,
            "segmenter_options": segmenter_options, "field_of_view_um": field_of_view_um,
        },
        batch_size=frames_per_batch,
        compute=ray.data.ActorPoolStrategy(size=max(1, min(cpus // per_actor, len(items)))),
        num_cpus=per_actor,
        batch_format="numpy",
    )
    bar = tqdm(total=len(items), desc="frames → cells", unit="frame", disable=not progress)
    with bar:
        for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
            kept = _count(block, summary)
            writer.add(_table(block, kept, meta), block["crop"][kept])
            bar.update(len(set(zip(block["movie"], block["frame"], strict=True))))


def _in_tasks(function, jobs, *args) -> list:
    """Run ``function(job, *args)`` for every job as Ray tasks; return the results in order.

    So the movies are linked (or their pyramids filled) on every core.
    """
    remote = ray.remote(num_cpus=1)(function)
    return ray.get([remote.remote(job, *args) for job in jobs])


def _tracks(cells: pd.DataFrame, meta: dict, summary: SegmentSummary) -> pd.DataFrame:
    """Track the cohort's cells; count the tracks in ``summary``."""
    intervals = {m: meta[m]["frame_interval_s"] for m in meta}
    tracks = track_cohort(cells, intervals, min_track_frames=summary.min_track_frames,
                          map_movies=_in_tasks)
    summary.tracks, summary.short_tracks = count_tracks(tracks)
    return tracks


def segment_cohort(
    cohort: str,
    *,
    home: Location | None = None,
    crop_size: int = DEFAULT_CROP_SIZE,
    frames_per_batch: int | None = None,
    progress: bool = True,
    segmenter: str = DEFAULT_SEGMENTER,
    field_of_view_um: float = DEFAULT_FIELD_OF_VIEW_UM,
    min_track_frames: int = MIN_TRACK_FRAMES,
) -> SegmentSummary:
    """Segment every stored movie of a cohort, track its cells and replace its outputs.

    Tracking is :func:`lch.tracking.track_cohort`; tracks in fewer than ``min_track_frames``
    frames are flagged. The outputs replaced are ``cells.parquet``/``crops.zarr`` and each
    movie's ``labels`` group (every pyramid level). Each actor call segments
    ``frames_per_batch`` frames (default: :func:`batch_frames` of the largest frame).

    A movie ingested with its own label movie (the manifest's ``labels``) is measured and
    cropped from those labels; the others are segmented by ``segmenter`` (see
    :data:`lch.labels.SEGMENTERS`), checked before anything is read or written. The cohort's
    lock (:func:`lch.cohort_lock.cohort_lock`) is held throughout, and write-aside outputs of
    killed runs are removed first. The labels groups are committed after the cell store, so a
    run that fails leaves every previous output as it was.

    Raises
    ------
    ValueError
        An unknown segmenter, a field of view that is not a positive number of µm, or a minimum
        track length below 1.
    FileNotFoundError
        If the cohort has no stored movies folder.
    lch.labels.SegmenterUnavailable
        If ``segmenter`` cannot run here (e.g. Cellpose without its weights on disk).
    lch.cohort_lock.CohortLocked
        If another live run is writing the cohort.
    lch.storage.StorageError
        If the data root is an object store that cannot be reached or has no such bucket.
    """
    segmenter_options = check_segmenter(segmenter)
    if not 0 < field_of_view_um < float("inf"):
        raise ValueError(f"field of view {field_of_view_um!r} µm must be a positive number")
    check_min_track_frames(min_track_frames)
    home = home or lch_home()
    options = storage_options_from_env(home)
    check_root(home, options)
    fs, movies = filesystem(movies_dir(cohort, home), options)
    if not fs.isdir(movies):
        raise FileNotFoundError(
            f"{cohort_dir(cohort, home)}: no ingested movies for cohort {cohort!r}"
        )
    started = time.perf_counter()
    summary = SegmentSummary(cohort, min_track_frames=min_track_frames)
    with cohort_lock(cohort_dir(cohort, home), "lch segment", options):
        # Holding the lock, write-aside outputs here are a killed run's.
        remove_leftovers(cohort_dir(cohort, home), options)
        items, meta, stores = _movie_items(cohort, home, summary, options)
        writer = CellStoreWriter(cohort_dir(cohort, home), crop_size, options,
                                 field_of_view_um=field_of_view_um)
        asides: dict[str, Location] = {}
        try:
            asides = _start_labels(items, meta, stores, segmenter, options)
            if items:
                largest = max(m["frame_pixels"] for m in meta.values())
                frames_per_batch = frames_per_batch or batch_frames(largest)
                _stream_cells(items, meta, writer, summary, crop_size, frames_per_batch,
                              options, progress, segmenter, segmenter_options, field_of_view_um)
            # Every frame is written: make the overviews.
            _in_tasks(fill_pyramid, asides.values(), options)
            writer.commit(lambda cells: _tracks(cells, meta, summary))
        except BaseException:
            writer.abort()
            for aside in asides.values():
                discard_labels(aside, options)
            raise
        for movie, aside in asides.items():
            commit_labels(aside, stores[movie], options)
    summary.labels_by = {m: GIVEN if meta[m]["given_labels"] else segmenter for m in meta}
    summary.frames = len(items)
    summary.seconds = time.perf_counter() - started
    return summary
