"""`lch ingest` of a crop folder: pre-cut single-cell images (IDR idr0109) → cells + crops.

The paper's released data are crops, not movies. Each image's name gives its cell line, track
and frame (:mod:`lch.crop_folder`); Ray Data runs a pool of :class:`CentreCellCutter` actors that
read each image, segment it and cut its centre cell as ingestion cuts cells from movies; the
driver streams the cells into the cohort's cell store and commits it with each row's track. No
movie store is written. Images whose names do not parse are listed and counted, the rest land.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import ray
from tqdm.auto import tqdm

from lch.cellstore import FRAME_CELL_SCHEMA, CellStoreWriter
from lch.cohort_lock import cohort_lock
from lch.conversion import remove_leftovers
from lch.crop_folder import list_crops, read_crop
from lch.crops import DEFAULT_CROP_SIZE, DEFAULT_FIELD_OF_VIEW_UM
from lch.manifest import Manifest, ManifestError
from lch.morphology import FEATURE_COLUMNS
from lch.paths import Location, cohort_dir, lch_home
from lch.pipelines.runtime import cluster_cpus, init_ray
from lch.single_cell import centre_cell
from lch.storage import check_root, storage_options_from_env
from lch.tracking import MIN_TRACK_FRAMES, check_min_track_frames, count_tracks, track_columns

IMAGES_PER_BATCH = 16


@dataclass
class CropIngestSummary:
    """What ingesting a crop folder did."""

    cohort: str
    images: int = 0
    cells: int = 0
    tracks: int = 0
    short_tracks: int = 0
    min_track_frames: int = MIN_TRACK_FRAMES
    skipped: dict[str, int] = field(default_factory=dict)
    """Images without a usable centre cell, by reason."""
    bad_names: list[str] = field(default_factory=list)
    cells_per_line: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def format(self) -> str:
        """Write a human-readable summary: counts, tracks, cells per line, unparsed names."""
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        lines = [
            f"cohort {self.cohort} from crops: {self.images} images in {self.seconds:.1f} s, "
            f"{self.cells} cells kept, skipped: {skipped}",
            f"  tracks: {self.tracks} ({self.short_tracks} shorter than {self.min_track_frames} "
            "frames, flagged short_track)",
            "  cells per line: " + ", ".join(
                f"{line} {n} ({self.labels.get(line, 'unknown')})"
                for line, n in sorted(self.cells_per_line.items())),
        ]
        if self.bad_names:
            lines.append(f"  NOT INGESTED {len(self.bad_names)} file(s) whose names do not parse:")
            lines += [f"    {message}" for message in self.bad_names]
        return "\n".join(lines)


class CentreCellCutter:
    """Ray Data callable class: a batch of crop images → each one's centre cell.

    Each image gives the row and crop of its centre cell or, for an image without one, a row
    whose ``drop_reason`` says why.
    """

    def __init__(self, crop_size: int, pixel_size_um: float, field_of_view_um: float) -> None:
        self.crop_size = crop_size
        self.pixel_size_um = pixel_size_um
        self.field_of_view_um = field_of_view_um

    def _one(self, path: str) -> tuple[dict, np.ndarray]:
        empty = np.zeros((self.crop_size, self.crop_size), np.float32)
        nothing = {c: np.nan for c in FEATURE_COLUMNS}
        try:
            row, crop, reason = centre_cell(
                read_crop(path), self.crop_size, pixel_size_um=self.pixel_size_um,
                field_of_view_um=self.field_of_view_um,
            )
        except (OSError, ValueError) as exc:  # unreadable, constant or not 2-D
            return nothing | {"drop_reason": f"unreadable: {exc}"}, empty
        if crop is None:
            return nothing | {"drop_reason": reason}, empty
        return row[FEATURE_COLUMNS].iloc[0].to_dict() | {"drop_reason": ""}, crop

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Cut the centre cell of each image of ``batch``; return the columns and crops."""
        parts = [self._one(str(path)) for path in batch["path"]]
        table = pd.DataFrame([p[0] for p in parts])
        columns = {c: table[c].to_numpy() for c in table.columns}
        columns["touches_border"] = table["touches_border"].fillna(False).astype(bool).to_numpy()
        columns["drop_reason"] = table["drop_reason"].astype(str).to_numpy()
        columns["index"] = batch["index"]
        columns["crop"] = np.stack([p[1] for p in parts])
        return columns


def _rows(block: dict[str, np.ndarray], kept: np.ndarray, meta: pd.DataFrame) -> pd.DataFrame:
    """Build the kept cells' rows of the cell table, with their images' names' meaning."""
    table = pd.DataFrame({c: block[c][kept] for c in FEATURE_COLUMNS})
    table = table.rename(columns={"label": "cell_id"})
    info = meta.iloc[block["index"][kept]].reset_index(drop=True)
    for column in ("cohort", "movie", "patient", "cell_line", "label", "pixel_size_um", "frame"):
        table[column] = info[column].to_numpy()
    return table[[f.name for f in FRAME_CELL_SCHEMA if f.name != "crop_index"]]


def _image_table(manifest: Manifest, summary: CropIngestSummary) -> pd.DataFrame:
    """One row per crop whose name parses; bad names and unknown label lines are reported."""
    crops = manifest.crops
    parsed, summary.bad_names = list_crops(manifest.crops_path())
    lines = {name.line for _, name in parsed}
    unknown = sorted(set(crops.labels) - lines)
    if unknown:
        raise ManifestError(
            f"{manifest.path}: crops.labels names line(s) {', '.join(unknown)} that no crop in "
            f"{manifest.crops_path()} belongs to (lines found: {', '.join(sorted(lines))})"
        )
    if not parsed:
        raise ManifestError(f"{manifest.path}: no crop in {manifest.crops_path()} has an idr0109 "
                            f"name ({len(summary.bad_names)} image(s) that do not parse)")
    summary.labels = dict(crops.labels)
    return pd.DataFrame({
        "path": [str(p) for p, _ in parsed], "cohort": manifest.cohort,
        "movie": [n.movie for _, n in parsed], "patient": [n.line for _, n in parsed],
        "cell_line": [n.line for _, n in parsed],
        "label": [crops.labels.get(n.line, "unknown") for _, n in parsed],
        "pixel_size_um": crops.pixel_size_um, "frame": [n.frame for _, n in parsed],
        "track": [n.track for _, n in parsed],
    })


def _stream(images: pd.DataFrame, writer: CellStoreWriter, summary: CropIngestSummary,
            crop_size: int, pixel_size_um: float, field_of_view_um: float,
            progress: bool) -> list[str]:
    """Cut every image's centre cell with Ray Data into ``writer``.

    Return each kept row's track, in row order.
    """
    init_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # crop indices are reproducible run to run
    ctx.enable_progress_bars = False  # one bar per stage: ours
    items = [{"path": p, "index": i} for i, p in enumerate(images["path"])]
    ds = ray.data.from_items(items, override_num_blocks=-(-len(items) // IMAGES_PER_BATCH))
    ds = ds.map_batches(
        CentreCellCutter,
        fn_constructor_kwargs={"crop_size": crop_size, "pixel_size_um": pixel_size_um,
                               "field_of_view_um": field_of_view_um},
        batch_size=IMAGES_PER_BATCH,
        compute=ray.data.ActorPoolStrategy(size=max(1, min(cluster_cpus(), len(items)))),
        batch_format="numpy",
    )
    tracks: list[str] = []
    bar = tqdm(total=len(items), desc="crops → cells", unit="image", disable=not progress)
    with bar:
        for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
            kept = block["drop_reason"] == ""
            for reason, n in Counter(block["drop_reason"][~kept].tolist()).items():
                summary.skipped[reason] = summary.skipped.get(reason, 0) + n
            rows = _rows(block, kept, images)
            writer.add(rows, block["crop"][kept])
            for line, n in Counter(rows["cell_line"].tolist()).items():
                summary.cells_per_line[line] = summary.cells_per_line.get(line, 0) + n
            tracks += images["track"].to_numpy()[block["index"][kept]].tolist()
            bar.update(len(block["index"]))
    return tracks


def _track_columns(tracks: list[str], min_track_frames: int,
                   summary: CropIngestSummary) -> pd.DataFrame:
    """Build the kept rows' track columns from their tracks' names; count them in ``summary``."""
    columns = track_columns(pd.factorize(pd.Series(tracks, dtype=object))[0], min_track_frames)
    summary.tracks, summary.short_tracks = count_tracks(columns)
    return columns


def ingest_crops(
    manifest: Manifest,
    *,
    home: Location | None = None,
    crop_size: int = DEFAULT_CROP_SIZE,
    field_of_view_um: float = DEFAULT_FIELD_OF_VIEW_UM,
    min_track_frames: int = MIN_TRACK_FRAMES,
    progress: bool = True,
) -> CropIngestSummary:
    """Build a cohort's ``cells.parquet`` and ``crops.zarr`` from its manifest's crop folder.

    Tracks come from the images' names (one track per date, line, series, first frame,
    position and last frame); patients are the cell lines; labels come from ``crops.labels``.
    The cohort's lock is held throughout and the previous outputs stay until the new ones are
    committed whole.

    Raises
    ------
    lch.manifest.ManifestError
        No parsable crop in the folder, or a label mapping naming a line no crop belongs to.
    lch.cohort_lock.CohortLocked
        If another live run is writing the cohort.
    """
    check_min_track_frames(min_track_frames)
    started = time.perf_counter()
    summary = CropIngestSummary(manifest.cohort, min_track_frames=min_track_frames)
    images = _image_table(manifest, summary)
    home = home or lch_home()
    options = storage_options_from_env(home)
    check_root(home, options)
    folder = cohort_dir(manifest.cohort, home)
    with cohort_lock(folder, "lch ingest (crops)", options):
        remove_leftovers(folder, options)
        writer = CellStoreWriter(folder, crop_size, options, field_of_view_um=field_of_view_um)
        try:
            tracks = _stream(images, writer, summary, crop_size, manifest.crops.pixel_size_um,
                             field_of_view_um, progress)
            writer.commit(lambda cells: _track_columns(tracks, min_track_frames, summary))
        except BaseException:
            writer.abort()
            raise
    summary.images = len(images)
    summary.cells = len(tracks)
    summary.seconds = time.perf_counter() - started
    return summary
