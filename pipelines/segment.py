"""Stage B of ingestion (`lch segment`): Ray Data over the cohort's frames → cells + crops.

Work items are (movie store, frame) pairs from :func:`ray.data.from_items`; a pool of
:class:`FrameSegmenter` actors reads each frame's chunk from the OME-Zarr store and calls
:func:`lch.cells.frame_cells`. No process ever holds a whole movie: actors hold one batch of
frames, the driver one block of cells while it streams them into the cohort's cell store.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import ray
from tqdm.auto import tqdm

from lch.cells import DEFAULT_CROP_SIZE, frame_cells
from lch.cellstore import CellStoreWriter
from lch.cohort_lock import cohort_lock
from lch.conversion import remove_leftovers
from lch.morphology import FEATURE_COLUMNS
from lch.omezarr import open_movie, read_provenance
from lch.paths import (
    Location,
    check_root,
    cohort_dir,
    filesystem,
    is_url,
    lch_home,
    movies_dir,
    storage_options_from_env,
)
from lch.pipelines.runtime import cluster_cpus, init_ray
from lch.pixel_size import DEFAULT_PIXEL_SIZE_UM, check_pixel_size

FRAMES_PER_BATCH = 4
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
    seconds: float = 0.0

    def format(self) -> str:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.cells_dropped.items())) or "none"
        skipped = sum(self.frames_skipped.values())
        lines = [
            f"cohort {self.cohort} segmented: {self.frames} frames in {self.seconds:.1f} s "
            f"({self.frames / max(self.seconds, 1e-9):.1f} frames/s), {self.cells_kept} cells "
            f"kept, dropped: {dropped}",
            f"  frames without cells: {self.frames_without_cells}   frames skipped: {skipped}",
        ]
        skips = sorted(self.frames_skipped.items())
        lines += [f"  SKIPPED {n} frame(s): {why}" for why, n in skips]
        lines += [f"  FAILED {m}: {why}" for m, why in sorted(self.movies_failed.items())]
        return "\n".join(lines)


def _marker(movie: str, frame: int, reason: str, crop_size: int) -> tuple[pd.DataFrame, np.ndarray]:
    row = {c: np.nan for c in FEATURE_COLUMNS} | {"label": FRAME_MARKER, "drop_reason": reason}
    table = pd.DataFrame([row]).assign(movie=movie, frame=frame)
    return table, np.zeros((1, crop_size, crop_size), np.float32)


class FrameSegmenter:
    """Ray Data callable class: a batch of (store, movie, frame) items → one row per cell.

    Stores stay open across batches (the actor's state); ``storage_options`` reach stores on an
    object store (the actor's environment is not the driver's). Every cell of every frame comes
    back, dropped ones with their reason; a frame that yields no cell comes back as one marker row
    (``label == -1``) whose ``drop_reason`` says why, so the driver can count it.
    """

    def __init__(
        self, crop_size: int = DEFAULT_CROP_SIZE, storage_options: dict | None = None
    ) -> None:
        self.crop_size = crop_size
        self.storage_options = storage_options
        self._arrays: dict[str, object] = {}

    def _frame(self, store: str, t: int) -> np.ndarray:
        if store not in self._arrays:
            self._arrays[store] = open_movie(store, self.storage_options)
        return self._arrays[store][t, 0]

    def _cells(
        self, store: str, movie: str, t: int, pixel_size_um: float
    ) -> tuple[pd.DataFrame, np.ndarray]:
        try:
            frame = self._frame(store, t)
        except Exception as exc:  # a corrupt chunk surfaces as any codec/IO error
            reason = f"unreadable frame in {movie}: {type(exc).__name__}: {exc}"
            return _marker(movie, t, reason, self.crop_size)
        try:
            table, crops = frame_cells(frame, self.crop_size, pixel_size_um=pixel_size_um)
        except ValueError as exc:
            return _marker(movie, t, f"invalid frame in {movie}: {exc}", self.crop_size)
        if table.empty:
            return _marker(movie, t, "frame_no_cells", self.crop_size)
        # Dropped cells carry an empty crop so every column keeps one entry per row.
        padded = np.zeros((len(table), self.crop_size, self.crop_size), np.float32)
        padded[(table["drop_reason"] == "").to_numpy()] = crops
        return table.assign(movie=movie, frame=t), padded

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = zip(batch["store"], batch["movie"], batch["frame"], batch["pixel_size_um"],
                    strict=True)
        parts = [self._cells(str(store), str(movie), int(t), float(px))
                 for store, movie, t, px in items]
        table = pd.concat([p[0] for p in parts], ignore_index=True)
        columns = {c: table[c].to_numpy() for c in table.columns}
        columns["drop_reason"] = table["drop_reason"].astype(str).to_numpy()
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


def _movie_items(
    cohort: str, home: Location, summary: SegmentSummary, options: dict
) -> tuple[list, dict]:
    """One work item per frame of every readable stored movie; failures go in the summary."""
    items, meta = [], {}
    for movie, store in _stores(movies_dir(cohort, home), options):
        provenance = read_provenance(store, options)
        try:
            if provenance is None:
                raise ValueError("missing or unreadable OME-Zarr metadata")
            frames = open_movie(store, options).shape[0]
        except Exception as exc:
            summary.movies_failed[movie] = f"{store}: cannot open store ({exc})"
            continue
        try:  # the manifest's, else the paper's microscope
            px = check_pixel_size(provenance.get("pixel_size_um") or DEFAULT_PIXEL_SIZE_UM)
        except ValueError as exc:
            summary.movies_failed[movie] = f"{store}: {exc}"
            continue
        meta[movie] = {c: provenance.get(c) for c in META_COLUMNS} | {
            "movie": movie, "pixel_size_um": px,
        }
        items += [{"store": str(store), "movie": movie, "frame": t, "pixel_size_um": px}
                  for t in range(frames)]
    return items, meta


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
    for reason, n in Counter(reasons[~markers & ~kept]).items():
        summary.cells_dropped[reason] = summary.cells_dropped.get(reason, 0) + n
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
    frames_per_batch: int, options: dict, progress: bool,
) -> None:
    """Segment the frames of ``items`` with Ray Data, streaming the kept cells into ``writer``."""
    init_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # crop indices are reproducible run to run
    ctx.enable_progress_bars = progress
    ds = ray.data.from_items(items, override_num_blocks=-(-len(items) // frames_per_batch))
    ds = ds.map_batches(
        FrameSegmenter,
        fn_constructor_kwargs={"crop_size": crop_size, "storage_options": options},
        batch_size=frames_per_batch,
        compute=ray.data.ActorPoolStrategy(size=min(cluster_cpus(), len(items))),
        num_cpus=1,
        batch_format="numpy",
    )
    bar = tqdm(total=len(items), desc="frames → cells", unit="frame", disable=not progress)
    with bar:
        for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
            kept = _count(block, summary)
            writer.add(_table(block, kept, meta), block["crop"][kept])
            bar.update(len(set(zip(block["movie"], block["frame"], strict=True))))


def segment_cohort(
    cohort: str,
    *,
    home: Location | None = None,
    crop_size: int = DEFAULT_CROP_SIZE,
    frames_per_batch: int = FRAMES_PER_BATCH,
    progress: bool = True,
) -> SegmentSummary:
    """Segment every stored movie of a cohort and replace its ``cells.parquet``/``crops.zarr``.

    The cohort's lock (:func:`lch.cohort_lock.cohort_lock`) is held throughout, and write-aside
    outputs of killed runs are removed first.

    Raises
    ------
    FileNotFoundError
        If the cohort has no stored movies folder.
    lch.cohort_lock.CohortLocked
        If another live run is writing the cohort.
    lch.paths.StorageError
        If the data root is an object store that cannot be reached or has no such bucket.
    """
    home = home or lch_home()
    options = storage_options_from_env(home)
    check_root(home, options)
    fs, movies = filesystem(movies_dir(cohort, home), options)
    if not fs.isdir(movies):
        raise FileNotFoundError(
            f"{cohort_dir(cohort, home)}: no ingested movies for cohort {cohort!r}"
        )
    started = time.perf_counter()
    summary = SegmentSummary(cohort)
    with cohort_lock(cohort_dir(cohort, home), "lch segment", options):
        # Holding the lock, write-aside outputs here are a killed run's.
        remove_leftovers(cohort_dir(cohort, home), options)
        items, meta = _movie_items(cohort, home, summary, options)
        writer = CellStoreWriter(cohort_dir(cohort, home), crop_size, options)
        try:
            if items:
                _stream_cells(items, meta, writer, summary, crop_size, frames_per_batch,
                              options, progress)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
    summary.frames = len(items)
    summary.seconds = time.perf_counter() - started
    return summary
