"""A cohort's cell outputs: ``cells.parquet`` (one row per cell) and ``crops.zarr`` (N, S, S).

Row ``i`` of the table is crop ``i``. Both are written aside while the segmentation streams in and
committed by rename at the end, so a re-run replaces them whole. Both carry the same run id
(Parquet key-value metadata and the Zarr attributes): :func:`open_cells` refuses a pair from two
different runs, so a reader can never mix old rows with new crops.

The cohort folder may be an object-store URL. There, the crops are committed by an ordered copy
with their metadata last (:func:`lch.atomic.commit_aside`) and the table by a copy of one object,
which replaces it whole: in between, :func:`open_cells` sees new crops with old rows and refuses
them by their run ids, exactly the check that guards local readers.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import BloscCodec

from lch.atomic import commit
from lch.crops import DEFAULT_FIELD_OF_VIEW_UM
from lch.paths import Location, is_url, join
from lch.storage import filesystem, zarr_store

CELLS_FILE = "cells.parquet"
CROPS_STORE = "crops.zarr"
RUN_KEY = "lch_segmentation_run"
FIELD_OF_VIEW_KEY = "field_of_view_um"
# 256 crops of 64² float32 = 4 MiB: whole chunks for sequential epochs, small enough that a
# random mini-batch does not drag in much more than it needs.
CROP_CHUNK_ROWS = 256

_F, _I = pa.float64(), pa.int64()
CELL_SCHEMA = pa.schema(
    [
        ("cohort", pa.string()),
        ("movie", pa.string()),
        ("patient", pa.string()),
        ("cell_line", pa.string()),
        ("label", pa.string()),
        ("pixel_size_um", _F),
        ("frame", pa.int32()),
        ("cell_id", pa.int32()),
        ("track_id", _I),
        ("track_frames", pa.int32()),
        ("short_track", pa.bool_()),
        ("centroid_y", _F),
        ("centroid_x", _F),
        ("bbox_min_row", _I),
        ("bbox_min_col", _I),
        ("bbox_max_row", _I),
        ("bbox_max_col", _I),
        ("area", _F),
        ("body_area", _F),
        ("perimeter", _F),
        ("eccentricity", _F),
        ("solidity", _F),
        ("protrusion_count", _I),
        ("protrusion_length", _F),
        ("protrusion_reach", _F),
        ("mean_intensity", _F),
        ("background", _F),
        ("body_contrast", _F),
        ("halo_intensity", _F),
        ("touches_border", pa.bool_()),
        ("crop_index", _I),
    ]
)
"""The columns of ``cells.parquet``: provenance, position and track, then the morphology
features."""
TRACK_FIELDS = ("track_id", "track_frames", "short_track")
# What the segmentation streams in, frame by frame; the track columns are added at commit.
FRAME_CELL_SCHEMA = pa.schema([f for f in CELL_SCHEMA if f.name not in TRACK_FIELDS])


class CellStoreError(ValueError):
    """Missing or inconsistent cell outputs; the message names the cohort folder."""


class CellStoreWriter:
    """Stream cell rows and their crops to hidden files, then commit both at once.

    Parameters
    ----------
    folder : Path or str
        The cohort folder (``cohorts/<cohort>``), local or a URL.
    crop_size : int
        Side of the square crops.
    storage_options : dict, optional
        fsspec options for a URL ``folder``; default from the environment.
    field_of_view_um : float
        What the crops show, in µm (recorded as the crops' ``field_of_view_um`` attribute).
    """

    def __init__(
        self,
        folder: Location,
        crop_size: int,
        storage_options: dict | None = None,
        *,
        field_of_view_um: float = DEFAULT_FIELD_OF_VIEW_UM,
    ) -> None:
        self.folder = folder if is_url(folder) else Path(folder)
        self._options = storage_options
        self._fs, _ = filesystem(self.folder, storage_options)
        if not is_url(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
        self.run_id = uuid.uuid4().hex
        self._tmp_cells = join(self.folder, f".tmp-{self.run_id}-{CELLS_FILE}")
        self._tmp_crops = join(self.folder, f".tmp-{self.run_id}-{CROPS_STORE}")
        self._crops = zarr.create_array(
            zarr_store(self._tmp_crops, storage_options),
            shape=(0, crop_size, crop_size),
            chunks=(CROP_CHUNK_ROWS, crop_size, crop_size),
            dtype="float32",
            compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
            dimension_names=("cell", "y", "x"),
            attributes={RUN_KEY: self.run_id, FIELD_OF_VIEW_KEY: float(field_of_view_um)},
            zarr_format=3,
        )
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._schema = CELL_SCHEMA.with_metadata({RUN_KEY: self.run_id})
        self._tmp_rows = join(self.folder, f".tmp-{self.run_id}-rows.parquet")
        self._writer = pq.ParquetWriter(
            self._path(self._tmp_rows), FRAME_CELL_SCHEMA, filesystem=self._arrow_fs()
        )
        self.rows = 0

    def _path(self, location: Location) -> str:
        """``location`` as a path within :attr:`_fs`."""
        return filesystem(location, self._options)[1]

    def _arrow_fs(self):
        """Return the file system for pyarrow: None (its own) locally, else the fsspec one."""
        return self._fs if is_url(self.folder) else None

    def add(self, table: pd.DataFrame, crops: np.ndarray) -> None:
        """Append rows and their crops, same length and order.

        The rows have the columns of :data:`FRAME_CELL_SCHEMA` but ``crop_index``, which is
        assigned here.
        """
        if len(table) != len(crops):
            raise ValueError(f"{len(table)} rows but {len(crops)} crops")
        if not len(table):
            return
        table = table.assign(crop_index=np.arange(self.rows, self.rows + len(table)))
        self._writer.write_table(
            pa.Table.from_pandas(table, schema=FRAME_CELL_SCHEMA, preserve_index=False)
        )
        self._pending.append(np.asarray(crops, dtype=np.float32))
        self._pending_rows += len(crops)
        self.rows += len(table)
        # Append whole chunks only: a partial chunk would be rewritten by every later append.
        if self._pending_rows >= CROP_CHUNK_ROWS:
            self._flush(whole_chunks=True)

    def _flush(self, whole_chunks: bool) -> None:
        if not self._pending:
            return
        block = np.concatenate(self._pending)
        cut = len(block) - len(block) % CROP_CHUNK_ROWS if whole_chunks else len(block)
        if cut:
            self._crops.append(block[:cut], axis=0)
        self._pending = [block[cut:]] if cut < len(block) else []
        self._pending_rows = len(block) - cut

    def commit(self, tracks: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
        """Finish both files and move them into place (replacing the previous outputs).

        ``tracks`` gets the whole table of rows and returns its track columns
        (:data:`TRACK_FIELDS`), row for row.
        """
        self._flush(whole_chunks=False)
        self._writer.close()
        self._write_with_tracks(tracks)
        commit(self._tmp_crops, join(self.folder, CROPS_STORE), self._options)
        commit(self._tmp_cells, join(self.folder, CELLS_FILE), self._options)

    def _write_with_tracks(self, tracks: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
        fs = self._arrow_fs()
        rows = pq.read_table(self._path(self._tmp_rows), filesystem=fs).to_pandas()
        columns = tracks(rows)
        if list(columns.columns) != list(TRACK_FIELDS) or len(columns) != len(rows):
            raise ValueError(f"tracks gave {list(columns.columns)} for {len(columns)} rows; "
                             f"expected {list(TRACK_FIELDS)} for {len(rows)}")
        table = pd.concat([rows, columns.set_index(rows.index)], axis=1)
        pq.write_table(pa.Table.from_pandas(table, schema=self._schema, preserve_index=False),
                       self._path(self._tmp_cells), filesystem=fs)
        self._remove(self._tmp_rows)

    def _remove(self, location: Location) -> None:
        if is_url(self.folder):
            self._fs.rm(self._path(location), recursive=True)
        else:
            Path(location).unlink(missing_ok=True)

    def abort(self) -> None:
        """Remove what was written; the previous outputs stay as they were."""
        self._writer.close()
        if is_url(self.folder):
            for location in (self._tmp_crops, self._tmp_rows, self._tmp_cells):
                try:
                    self._fs.rm(self._path(location), recursive=True)
                except Exception:  # cleanup must not hide the error that caused it
                    pass
            return
        shutil.rmtree(self._tmp_crops, ignore_errors=True)
        self._tmp_rows.unlink(missing_ok=True)
        self._tmp_cells.unlink(missing_ok=True)


def open_cells(
    folder: Location, storage_options: dict | None = None
) -> tuple[pd.DataFrame, zarr.Array]:
    """Open a cohort's cell table and crops, checking they come from the same run.

    Parameters
    ----------
    folder : Path or str
        The cohort folder, local or a URL.
    storage_options : dict, optional
        fsspec options for a URL ``folder``; default from the environment.

    Raises
    ------
    CellStoreError
        If either is missing, or they were written by different runs.
    """
    folder = folder if is_url(folder) else Path(folder)
    fs, root = filesystem(folder, storage_options)
    cells = f"{root}/{CELLS_FILE}"
    # The crops' metadata is written last when they are committed: without it there are none.
    if not fs.exists(cells) or not fs.exists(f"{root}/{CROPS_STORE}/zarr.json"):
        raise CellStoreError(f"{folder}: no segmentation outputs (run `lch segment` first)")
    table = pq.read_table(cells, filesystem=fs if is_url(folder) else None)
    store = zarr_store(join(folder, CROPS_STORE), storage_options, read_only=True)
    crops = zarr.open_array(store, mode="r")
    run = (table.schema.metadata or {}).get(RUN_KEY.encode(), b"").decode()
    if run != crops.attrs.get(RUN_KEY) or len(table) != crops.shape[0]:
        raise CellStoreError(
            f"{folder}: {CELLS_FILE} and {CROPS_STORE} come from different segmentation runs; "
            "run `lch segment` again"
        )
    return table.to_pandas(), crops


class UnknownMovie(LookupError):
    """A movie the cohort's cell store does not hold."""


def movie_cells(
    folder: Location, movie: str, storage_options: dict | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """One stored movie's cells, in frame order, and their crops (read from the store).

    Raises
    ------
    CellStoreError
        No (consistent) segmentation outputs in ``folder``.
    UnknownMovie
        ``folder`` holds no cell of ``movie``.
    """
    table, crops = open_cells(folder, storage_options)
    rows = table[table["movie"] == movie].sort_values(["frame", "cell_id"], kind="stable")
    if rows.empty:
        held = sorted(table["movie"].unique())
        shown = ", ".join(held[:10]) + (", ..." if len(held) > 10 else "")
        raise UnknownMovie(f"no segmented movie {movie!r} ({len(held)} movies: {shown})")
    pixels = crops.get_orthogonal_selection((rows["crop_index"].to_numpy(), slice(None),
                                             slice(None)))
    return rows.reset_index(drop=True), np.asarray(pixels, dtype=np.float32)
