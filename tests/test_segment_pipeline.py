"""Stage B on a real local Ray: Ray Data segmentation → cells.parquet + crops.zarr."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import zarr

from lch.cells import frame_cells
from lch.cellstore import CELLS_FILE, CROPS_STORE, CellStoreError, open_cells
from lch.omezarr import open_movie
from lch.paths import cohort_dir, movie_store
from lch.pipelines.ingest import convert_cohort
from lch.pipelines.segment import segment_cohort
from lch.synth import PIXEL_SIZE_UM, make_cohort

FEATURES = ["area", "protrusion_count", "protrusion_length", "halo_intensity", "solidity"]


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    return make_cohort(folder, name="seg", patients=2, movies_per_patient=1, frames=4, seed=3)


@pytest.fixture
def ingested(ray_session, lch_home, small_cohort):
    summary = convert_cohort(small_cohort, progress=False)
    assert summary.count("ok") == 2
    return cohort_dir("seg")


def bare_loop(cohort_folder, crop_size=64):
    """The same function called frame by frame in this process, stores read with zarr."""
    tables, crops = [], []
    for store in sorted((cohort_folder / "movies").glob("*.ome.zarr")):
        array = open_movie(store)
        for t in range(array.shape[0]):
            table, c = frame_cells(array[t, 0], crop_size, pixel_size_um=PIXEL_SIZE_UM)
            kept = table["drop_reason"] == ""
            tables.append(table[kept].assign(movie=store.name.split(".")[0], frame=t))
            crops.append(c)
    return pd.concat(tables, ignore_index=True), np.concatenate(crops)


def test_pipeline_matches_the_bare_function_row_for_row(ingested):
    summary = segment_cohort("seg", progress=False)
    table, crops = open_cells(ingested)
    expected, expected_crops = bare_loop(ingested)

    assert summary.frames == 8 and summary.cells_kept == len(expected) > 10
    assert len(table) == crops.shape[0] == len(expected)
    np.testing.assert_array_equal(table["crop_index"], np.arange(len(table)))
    pd.testing.assert_frame_equal(
        table[["movie", "frame", *FEATURES]].reset_index(drop=True),
        expected[["movie", "frame", *FEATURES]].reset_index(drop=True),
        check_dtype=False,
    )
    np.testing.assert_array_equal(crops[:], expected_crops)
    assert crops.dtype == np.float32 and 0.0 <= crops[:].min() and crops[:].max() <= 1.0
    assert set(table["label"]) == {"high", "low"}
    assert (table.groupby("movie")["patient"].nunique() == 1).all()
    assert sum(summary.cells_dropped.values()) == sum(
        (frame_cells(open_movie(s)[t, 0], pixel_size_um=PIXEL_SIZE_UM)[0]["drop_reason"]
         != "").sum()
        for s in sorted((ingested / "movies").glob("*.ome.zarr"))
        for t in range(4)
    )


def test_empty_constant_and_corrupt_frames_are_counted_not_fatal(ingested):
    movie = movie_store("seg", "p00-m00")
    array = zarr.open_array(str(movie), path="0", mode="r+")
    frame = array[0, 0]
    array[1, 0] = np.full_like(frame, 1000)  # constant: nothing to segment
    background = np.median(frame) + np.random.default_rng(0).normal(0, 5, frame.shape)
    array[2, 0] = background.astype(frame.dtype)  # a flat frame with no cells
    broken = movie_store("seg", "p01-m00")
    (broken / "0" / "zarr.json").unlink()  # that movie's array is gone

    summary = segment_cohort("seg", progress=False)

    assert "p01-m00" in summary.movies_failed and str(broken) in summary.movies_failed["p01-m00"]
    assert summary.frames == 4
    assert summary.frames_without_cells == 1
    ((reason, count),) = summary.frames_skipped.items()
    assert count == 1 and "constant" in reason and "p00-m00" in reason
    table, _ = open_cells(ingested)
    assert set(table["frame"]) == {0, 3} and set(table["movie"]) == {"p00-m00"}
    text = summary.format()
    assert "FAILED p01-m00" in text and "frames without cells: 1" in text


def test_rerun_replaces_outputs_whole_and_a_failed_run_keeps_the_old(ingested, monkeypatch):
    segment_cohort("seg", progress=False)
    first, first_crops = open_cells(ingested)
    first_crops = first_crops[:]

    import lch.pipelines.segment as stage

    class FailingWriter(stage.CellStoreWriter):
        def add(self, table, crops):
            super().add(table, crops)
            raise RuntimeError("disk went away")

    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="disk went away"):
        patch.setattr(stage, "CellStoreWriter", FailingWriter)
        segment_cohort("seg", progress=False)
    again, again_crops = open_cells(ingested)
    pd.testing.assert_frame_equal(first, again)
    np.testing.assert_array_equal(first_crops, again_crops[:])
    assert not [p for p in ingested.iterdir() if p.name.startswith(".tmp-")]

    segment_cohort("seg", progress=False, crop_size=48)
    table, crops = open_cells(ingested)
    assert crops.shape[1:] == (48, 48) and len(table) == crops.shape[0]
    assert not [p for p in ingested.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_a_table_and_crops_from_different_runs_are_refused(ingested, tmp_path):
    segment_cohort("seg", progress=False)
    shutil.copytree(ingested / CROPS_STORE, tmp_path / "old-crops.zarr")
    segment_cohort("seg", progress=False)
    shutil.rmtree(ingested / CROPS_STORE)
    shutil.copytree(tmp_path / "old-crops.zarr", ingested / CROPS_STORE)
    with pytest.raises(CellStoreError, match="different segmentation runs"):
        open_cells(ingested)
    (ingested / CELLS_FILE).unlink()
    with pytest.raises(CellStoreError, match="no segmentation outputs"):
        open_cells(ingested)


def test_missing_cohort_is_a_clear_error(lch_home):
    with pytest.raises(FileNotFoundError, match="no ingested movies for cohort 'nope'"):
        segment_cohort("nope", progress=False)


def test_a_killed_runs_outputs_are_removed_by_the_next_and_a_live_run_is_refused(ingested):
    from lch.cohort_lock import CohortLocked, cohort_lock

    segment_cohort("seg", progress=False)
    # What a run killed mid-write leaves beside the committed outputs.
    (ingested / f".tmp-dead-{CELLS_FILE}").write_bytes(b"PAR1 half")
    shutil.copytree(ingested / CROPS_STORE, ingested / f".tmp-dead-{CROPS_STORE}")
    with cohort_lock(ingested, "lch ingest"), pytest.raises(CohortLocked, match="lch ingest"):
        segment_cohort("seg", progress=False)
    assert (ingested / f".tmp-dead-{CELLS_FILE}").exists()  # not touched while refused

    summary = segment_cohort("seg", progress=False)
    assert summary.cells_kept > 10
    assert sorted(p.name for p in ingested.iterdir() if p.name.startswith(".")) == []
    table, crops = open_cells(ingested)
    assert len(table) == crops.shape[0] == summary.cells_kept
