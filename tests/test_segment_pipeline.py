"""Stage B on a real local Ray: Ray Data segmentation → cells.parquet + crops.zarr."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
import zarr

from lch.cells import frame_cells
from lch.cellstore import CELLS_FILE, CROPS_STORE, CellStoreError, open_cells
from lch.omezarr import label_attributes, open_labels, open_movie
from lch.paths import cohort_dir, movie_store
from lch.pipelines.ingest import convert_cohort
from lch.pipelines.segment import batch_frames, segment_cohort
from lch.segmentation import segment_frame
from lch.synth import PIXEL_SIZE_UM, make_cohort

from helpers import bare_cells

FEATURES = ["area", "protrusion_count", "protrusion_length", "halo_intensity", "solidity"]

pytestmark = pytest.mark.slow  # Ray Data pipelines end to end


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    # 512 px at 0.325 µm (166 µm): two synthetic cells per frame; 256 px frames hold one.
    folder = tmp_path_factory.mktemp("synth")
    return make_cohort(folder, name="seg", patients=2, movies_per_patient=1, frames=4, seed=3,
                       size=(512, 512))


@pytest.fixture(scope="module")
def first_run(ray_session, small_cohort, tmp_path_factory):
    """The cohort ingested and segmented once (tracks of 4+ frames kept): its home, summary."""
    home = tmp_path_factory.mktemp("seg-home") / "lch-home"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LCH_HOME", str(home))
        assert convert_cohort(small_cohort, progress=False).count("ok") == 2
        summary = segment_cohort("seg", progress=False, min_track_frames=4)
    return home, summary


@pytest.fixture
def segmented(first_run, lch_home):
    """A copy of the first run's data root for one test to change: its cohort folder."""
    shutil.copytree(first_run[0], lch_home)
    return cohort_dir("seg")


@pytest.fixture
def ingested(segmented):
    """The copy with its segmentation outputs removed: movies only, as ingestion left them."""
    (segmented / CELLS_FILE).unlink()
    shutil.rmtree(segmented / CROPS_STORE)
    for store in (segmented / "movies").glob("*.ome.zarr"):
        shutil.rmtree(store / "labels")
    return segmented


def ome_zarr_labels(store) -> np.ndarray:
    """The label movie ome-zarr-py finds from the movie's image, (T, 1, Y, X)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    (node,) = [n for n in Reader(parse_url(str(store)))() if n.load(Label)]
    return np.asarray(node.data[0])


def hidden(store) -> list[str]:
    return sorted(p.name for p in store.iterdir() if p.name.startswith("."))


def bare_loop(cohort_folder, crop_size=64):
    """The same function called frame by frame in this process, stores read with zarr."""
    found = sorted((cohort_folder / "movies").glob("*.ome.zarr"))
    stores = {store.name.split(".")[0]: store for store in found}
    return bare_cells(stores, crop_size, pixel_size_um=PIXEL_SIZE_UM)


def test_pipeline_matches_the_bare_function_row_for_row(first_run):
    home, summary = first_run
    ingested = cohort_dir("seg", home)
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
    # Each movie now carries its segmentation as NGFF labels, as ome-zarr-py reads them.
    assert summary.labels_by == {"p00-m00": "lch", "p01-m00": "lch"}
    for store in sorted((ingested / "movies").glob("*.ome.zarr")):
        movie = open_movie(store)
        expected_labels = [segment_frame(movie[t, 0], pixel_size_um=PIXEL_SIZE_UM)
                           for t in range(4)]
        np.testing.assert_array_equal(ome_zarr_labels(store)[:, 0], np.stack(expected_labels))
        assert label_attributes(store) == {"segmenter": "lch"} and hidden(store) == []


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


def test_rerun_replaces_outputs_whole_and_a_failed_run_keeps_the_old(segmented, monkeypatch):
    ingested = segmented
    first, first_crops = open_cells(ingested)
    first_crops = first_crops[:]
    store = movie_store("seg", "p00-m00")
    first_labels = open_labels(store)[:]
    stamp = (store / "labels" / "zarr.json").stat().st_mtime_ns

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
    # The failed run's labels were written aside and discarded: the old ones stay, untouched.
    assert (store / "labels" / "zarr.json").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(open_labels(store)[:], first_labels)
    assert hidden(store) == []

    segment_cohort("seg", progress=False, crop_size=48)
    table, crops = open_cells(ingested)
    assert crops.shape[1:] == (48, 48) and len(table) == crops.shape[0]
    assert not [p for p in ingested.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    assert (store / "labels" / "zarr.json").stat().st_mtime_ns != stamp  # replaced whole
    np.testing.assert_array_equal(open_labels(store)[:], first_labels)
    assert hidden(store) == []


def test_a_table_and_crops_from_different_runs_are_refused(segmented, tmp_path):
    ingested = segmented
    shutil.copytree(ingested / CROPS_STORE, tmp_path / "old-crops.zarr")
    segment_cohort("seg", progress=False)
    shutil.rmtree(ingested / CROPS_STORE)
    shutil.copytree(tmp_path / "old-crops.zarr", ingested / CROPS_STORE)
    with pytest.raises(CellStoreError, match="different segmentation runs"):
        open_cells(ingested)
    (ingested / CELLS_FILE).unlink()
    with pytest.raises(CellStoreError, match="no segmentation outputs"):
        open_cells(ingested)


def test_batches_hold_several_small_frames_or_one_large_one():
    # The synthetic cohorts' 256-512 px frames go four to a batch, as before the rule.
    sizes = [256, 512, 700, 1024, 2048, 4096]
    assert [batch_frames(n * n) for n in sizes] == [4, 4, 2, 1, 1, 1]


def test_missing_cohort_is_a_clear_error(lch_home):
    with pytest.raises(FileNotFoundError, match="no ingested movies for cohort 'nope'"):
        segment_cohort("nope", progress=False)


def test_a_killed_runs_outputs_are_removed_by_the_next_and_a_live_run_is_refused(segmented):
    from lch.cohort_lock import CohortLocked, cohort_lock

    ingested = segmented
    # What a run killed mid-write leaves beside the committed outputs.
    (ingested / f".tmp-dead-{CELLS_FILE}").write_bytes(b"PAR1 half")
    shutil.copytree(ingested / CROPS_STORE, ingested / f".tmp-dead-{CROPS_STORE}")
    store = movie_store("seg", "p00-m00")
    shutil.copytree(store / "labels", store / ".tmp-labels-dead")  # its labels, written aside
    with cohort_lock(ingested, "lch ingest"), pytest.raises(CohortLocked, match="lch ingest"):
        segment_cohort("seg", progress=False)
    assert (ingested / f".tmp-dead-{CELLS_FILE}").exists()  # not touched while refused
    assert hidden(store) == [".tmp-labels-dead"]

    summary = segment_cohort("seg", progress=False)
    assert summary.cells_kept > 10
    assert sorted(p.name for p in ingested.iterdir() if p.name.startswith(".")) == []
    assert hidden(store) == []
    table, crops = open_cells(ingested)
    assert len(table) == crops.shape[0] == summary.cells_kept


def edge_labels(frames: int, height: int, width: int) -> np.ndarray:
    """Two big cells per frame, each touching the frame's edge."""
    labels = np.zeros((frames, height, width), np.uint16)
    labels[:, 0:30, 10:40] = 4
    labels[:, 50:80, width - 30 :] = 9
    return labels


def test_given_label_movies_are_used_as_they_are_and_all_border_cells_are_a_counted_skip(
    ray_session, lch_home, small_cohort, tmp_path
):
    folder = small_cohort.parent
    manifest = yaml.safe_load(small_cohort.read_text())
    own = manifest["movies"][0]
    truth = tifffile.imread(folder / "truth" / f"{own['id']}_labels.tif").astype(np.uint32) * 5
    # Ids LCH's segmenter would not give; minisblack: 4 pages are frames, not 4 samples.
    tifffile.imwrite(tmp_path / "own_labels.tif", truth, photometric="minisblack")
    own["labels"] = str(tmp_path / "own_labels.tif")
    edge = dict(manifest["movies"][1], id="edge", labels=str(tmp_path / "edge.tif"))
    tifffile.imwrite(tmp_path / "edge.tif", edge_labels(*truth.shape), photometric="minisblack")
    manifest["movies"].append(edge)
    path = tmp_path / "cohort.yaml"
    path.write_text(yaml.safe_dump({**manifest, "cohort": "byo"}))
    path = shutil.copy(path, folder / "byo.yaml")  # movie paths are relative to the manifest

    assert convert_cohort(path, progress=False).count("ok") == 3
    summary = segment_cohort("byo", progress=False)

    assert summary.labels_by == {own["id"]: "manifest", "edge": "manifest", "p01-m00": "lch"}
    assert not summary.movies_failed
    store = movie_store("byo", own["id"])
    np.testing.assert_array_equal(ome_zarr_labels(store)[:, 0], truth)
    assert label_attributes(store)["segmenter"] == "manifest"
    table, _ = open_cells(cohort_dir("byo"))
    rows = table[table["movie"] == own["id"]]
    movie = open_movie(store)
    for t in range(truth.shape[0]):
        expected, _ = frame_cells(movie[t, 0], pixel_size_um=PIXEL_SIZE_UM, labels=truth[t])
        expected = expected[expected["drop_reason"] == ""]
        got = rows[rows["frame"] == t]
        assert len(got) == len(expected) > 0
        np.testing.assert_array_equal(got["cell_id"], expected["label"])
        assert set(got["cell_id"]) <= set(np.unique(truth[t])[1:])
        np.testing.assert_array_equal(got["area"], [(truth[t] == i).sum() for i in got["cell_id"]])

    frames = truth.shape[0]
    assert summary.movies_without_cells == {
        "edge": f"all {2 * frames} cells found were dropped (border {2 * frames})"
    }
    assert "edge" not in set(table["movie"])
    text = summary.format()
    assert f"NO CELLS edge: all {2 * frames} cells" in text
    assert "movies without usable cells: 1" in text and "by: lch 1, manifest 2" in text


def test_cells_are_tracked_within_each_movie(first_run):
    home, summary = first_run
    table, _ = open_cells(cohort_dir("seg", home))
    by_track = table.groupby("track_id")
    assert (by_track["movie"].nunique() == 1).all()  # unique within the cohort
    assert (by_track["frame"].apply(lambda f: f.is_unique)).all()  # one row per frame
    np.testing.assert_array_equal(table["track_frames"], by_track["frame"].transform("size"))
    np.testing.assert_array_equal(table["short_track"], table["track_frames"] < 4)
    # The generator's cells stay in the field for all 4 frames: about one track per cell.
    per_movie = table.groupby("movie")["track_id"].nunique()
    cells_per_frame = table.groupby(["movie", "frame"]).size().groupby("movie").median()
    assert (per_movie <= cells_per_frame + 1).all()
    assert summary.tracks == table["track_id"].nunique()
    assert summary.short_tracks == table.loc[table["short_track"], "track_id"].nunique()
    assert "tracks:" in summary.format()


def test_a_minimum_track_length_below_one_is_refused(ingested):
    with pytest.raises(ValueError, match="min_track_frames"):
        segment_cohort("seg", progress=False, min_track_frames=0)
