"""A cohort's cell outputs: ``cells.parquet`` (one row per cell) and ``crops.zarr`` (N, S, S).

Row ``i`` of the table is crop ``i``. Both are written aside while the segmentation streams in and
committed by rename at the end, so a re-run replaces them whole. Both carry the same run id
(Parquet key-value metadata and the Zarr attributes): :func:`open_cells` refuses a pair from two
different runs, so a reader can never mix old rows with new crops.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import BloscCodec

CELLS_FILE = "cells.parquet"
CROPS_STORE = "crops.zarr"
RUN_KEY = "lch_segmentation_run"
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
        ("frame", pa.int32()),
        ("cell_id", pa.int32()),
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
        ("mean_intensity", _F),
        ("background", _F),
        ("body_contrast", _F),
        ("halo_intensity", _F),
        ("touches_border", pa.bool_()),
        ("crop_index", _I),
    ]
)
"""The columns of ``cells.parquet``: provenance, position, then the morphology features."""


class CellStoreError(ValueError):
    """Missing or inconsistent cell outputs; the message names the cohort folder."""


class CellStoreWriter:
    """Stream cell rows and their crops to hidden files, then commit both at once.

    Parameters
    ----------
    folder : Path
        The cohort folder (``cohorts/<cohort>``).
    crop_size : int
        Side of the square crops.
    """

    def __init__(self, folder: Path, crop_size: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.run_id = uuid.uuid4().hex
        self._tmp_cells = self.folder / f".tmp-{self.run_id}-{CELLS_FILE}"
        self._tmp_crops = self.folder / f".tmp-{self.run_id}-{CROPS_STORE}"
        self._crops = zarr.create_array(
            str(self._tmp_crops),
            shape=(0, crop_size, crop_size),
            chunks=(CROP_CHUNK_ROWS, crop_size, crop_size),
            dtype="float32",
            compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
            dimension_names=("cell", "y", "x"),
            attributes={RUN_KEY: self.run_id},
            zarr_format=3,
        )
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._schema = CELL_SCHEMA.with_metadata({RUN_KEY: self.run_id})
        self._writer = pq.ParquetWriter(self._tmp_cells, self._schema)
        self.rows = 0

    def add(self, table: pd.DataFrame, crops: np.ndarray) -> None:
        """Append rows (the columns of :data:`CELL_SCHEMA` but ``crop_index``, which is
        assigned here) and their crops, same length and order."""
        if len(table) != len(crops):
            raise ValueError(f"{len(table)} rows but {len(crops)} crops")
        if not len(table):
            return
        table = table.assign(crop_index=np.arange(self.rows, self.rows + len(table)))
        self._writer.write_table(
            pa.Table.from_pandas(table, schema=self._schema, preserve_index=False)
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

    def commit(self) -> None:
        """Finish both files and move them into place (replacing the previous outputs)."""
        self._flush(whole_chunks=False)
        self._writer.close()
        _replace(self._tmp_crops, self.folder / CROPS_STORE)
        _replace(self._tmp_cells, self.folder / CELLS_FILE)

    def abort(self) -> None:
        """Remove what was written; the previous outputs stay as they were."""
        self._writer.close()
        shutil.rmtree(self._tmp_crops, ignore_errors=True)
        self._tmp_cells.unlink(missing_ok=True)


def _replace(new: Path, target: Path) -> None:
    if target.is_dir():
        old = target.with_name(f".old-{uuid.uuid4().hex[:8]}-{target.name}")
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def open_cells(folder: str | Path) -> tuple[pd.DataFrame, zarr.Array]:
    """Open a cohort's cell table and crops, checking they come from the same run.

    Raises
    ------
    CellStoreError
        If either is missing, or they were written by different runs.
    """
    folder = Path(folder)
    cells, crops_path = folder / CELLS_FILE, folder / CROPS_STORE
    if not cells.exists() or not crops_path.exists():
        raise CellStoreError(f"{folder}: no segmentation outputs (run `lch segment` first)")
    table = pq.read_table(cells)
    crops = zarr.open_array(str(crops_path), mode="r")
    run = (table.schema.metadata or {}).get(RUN_KEY.encode(), b"").decode()
    if run != crops.attrs.get(RUN_KEY) or len(table) != crops.shape[0]:
        raise CellStoreError(
            f"{folder}: {CELLS_FILE} and {CROPS_STORE} come from different segmentation runs; "
            "run `lch segment` again"
        )
    return table.to_pandas(), crops
