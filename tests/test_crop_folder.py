"""The paper's released crops as a cohort: names parsed, centre cells cut, tracks from the names,
and the whole loop (ingest, train, classify, exaggerate) on the real cells of tests/data/real."""

from __future__ import annotations

import contextlib
import io
import shutil

import numpy as np
import pytest
import torch
import yaml

from lch.cellstore import open_cells
from lch.crop_folder import list_crops, parse_crop_name, read_crop
from lch.crops import DEFAULT_CROP_SIZE, DEFAULT_FIELD_OF_VIEW_UM
from lch.exaggerate import DEFAULT_SIGMAS, exaggerate
from lch.exaggeration_report import save_montage
from lch.manifest import ManifestError, load_manifest
from lch.paths import cohort_dir
from lch.pipelines.cli import main
from lch.pipelines.train import TrainSettings, train
from lch.registry import REGISTERED_MODEL, load_lch_model
from lch.single_cell import centre_cell

from helpers import TINY_TRAINING
from real_cells import PIXEL_SIZE_UM, REAL

# The study's labelled PDX lines present among the crops (tests/data/real/README.md).
LABELS = {"m405": "high", "m634": "high", "m610": "low", "m597": "low", "m528": "low"}
NAME = "150312_m610_s19_t60_x1999_y675_t184_t7Ready_f00080.png"


def test_a_name_says_line_track_and_frame():
    name = parse_crop_name(NAME)
    assert (name.line, name.series, name.start, name.x, name.y, name.end, name.frame) == (
        "m610", 19, 60, 1999, 675, 184, 80)
    assert name.movie == "150312_m610_s19"
    assert name.track == "150312_m610_s19_t60_x1999_y675_t184"
    assert parse_crop_name("170726_M405c3_s07_t60_x793_y1670_t240_t7Ready_f00012.tif").line == \
        "m405c3"
    for bad in ("cell.png", "150312_m610_s19_t60_x1999_y675_t184_f00080.png",
                "150312_m610_s19_t60_x1999_y675_t184_t7Ready_f00080_copy.png"):
        with pytest.raises(ValueError, match=r"not named <date>_<line>_s<series>"):
            parse_crop_name(bad)


def test_the_centre_cell_is_cut_as_from_a_movie():
    image = read_crop(REAL / NAME)
    row, crop, reason = centre_cell(image, DEFAULT_CROP_SIZE, pixel_size_um=PIXEL_SIZE_UM,
                                    field_of_view_um=DEFAULT_FIELD_OF_VIEW_UM)
    assert reason == "" and crop.shape == (DEFAULT_CROP_SIZE, DEFAULT_CROP_SIZE)
    # The centre cell, not a neighbour: its centroid lies near the image centre.
    assert np.hypot(row["centroid_y"].iloc[0] - 127.5, row["centroid_x"].iloc[0] - 127.5) < 40
    flat = np.full((64, 64), 7, np.uint8)
    with pytest.raises(ValueError, match="constant"):
        centre_cell(flat, 64, pixel_size_um=PIXEL_SIZE_UM, field_of_view_um=20.8)


def _crop_cohort(folder, labels=LABELS, extra_files=()):
    images = folder / "crops"
    shutil.copytree(REAL, images)
    for name in extra_files:
        shutil.copy(REAL / NAME, images / name)
    path = folder / "cohort.yaml"
    path.write_text(yaml.safe_dump({"cohort": "openlch", "crops": {
        "folder": "crops", "pixel_size_um": PIXEL_SIZE_UM, "labels": labels}}))
    return path


def test_manifest_errors_name_the_field(tmp_path):
    path = tmp_path / "cohort.yaml"
    path.write_text(yaml.safe_dump({"cohort": "c", "crops": {"folder": "nowhere"}}))
    with pytest.raises(ManifestError, match="crops.folder 'nowhere' is not a folder"):
        load_manifest(path)
    path.write_text(yaml.safe_dump({"cohort": "c", "crops": {"folder": ".", "labels":
                                                             {"m405": "metastatic"}}}))
    with pytest.raises(ManifestError, match=r"crops\.labels\.m405"):
        load_manifest(path)
    path.write_text(yaml.safe_dump({"cohort": "c", "crops": {"folder": "."}, "movies": []}))
    with pytest.raises(ManifestError, match="either 'movies' or 'crops'"):
        load_manifest(path)


@pytest.fixture(scope="module")
def ingested(ray_session, tmp_path_factory):
    """The real crops, and one file not named as IDR names them, through `lch ingest` once
    (32-px crops, so the loop's tiny model trains fast): the data root, exit code and output."""
    folder = tmp_path_factory.mktemp("crop-folder")
    manifest = _crop_cohort(folder, extra_files=["not-an-idr-name.png"])
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LCH_HOME", str(folder / "home"))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main(["ingest", str(manifest), "--quiet", "--crop-size", "32"])
        yield folder / "home", code, printed.getvalue()


@pytest.mark.slow
def test_the_real_crops_become_a_cohort_of_tracked_cells(ingested, tmp_path, capsys):
    home, code, out = ingested
    assert code == 1  # one file not ingested
    assert "NOT INGESTED 1 file(s)" in out and "not-an-idr-name.png: not named" in out
    table, crops = open_cells(cohort_dir("openlch", home))
    parsed, _ = list_crops(REAL)
    assert len(parsed) == 62
    # Nearly every image gives its centre cell (a spread cell reaching past its 83 µm crop
    # touches the edge and is a counted skip, as in tests/test_real_ingest.py).
    assert 55 <= len(table) <= 62 and crops.shape == (len(table), 32, 32)
    assert f"{len(table)} cells kept" in out
    # Two frames of one tracked cell: one track; every other image is a track of its own.
    two_frames = table[table["movie"] == "150312_m610_s19"]
    assert sorted(two_frames["frame"]) == [80, 120] and two_frames["track_id"].nunique() == 1
    assert two_frames["track_frames"].tolist() == [2, 2]
    # Two tracks filmed in one field of view (161225_m634_s03) stay two cells.
    assert table.loc[table["movie"] == "161225_m634_s03", "track_id"].nunique() == 2
    pairs = table.groupby("track_id")["movie"].agg(["nunique", "size"])
    assert (pairs["nunique"] == 1).all() and set(pairs["size"]) <= {1, 2}
    assert sorted(table["track_id"].unique()) == list(range(table["track_id"].nunique()))
    labelled = table.drop_duplicates("cell_line").set_index("cell_line")["label"]
    assert labelled["m405"] == "high" and labelled["m597"] == "low"
    assert labelled["m116"] == "unknown" and (table["patient"] == table["cell_line"]).all()
    assert table["pixel_size_um"].eq(PIXEL_SIZE_UM).all()
    assert crops.attrs["field_of_view_um"] == DEFAULT_FIELD_OF_VIEW_UM

    bad = _crop_cohort(tmp_path / "bad", labels={**LABELS, "m481": "high"})
    assert main(["ingest", str(bad), "--quiet"]) == 2
    assert "names line(s) m481 that no crop in" in capsys.readouterr().err


@pytest.mark.slow
def test_the_loop_runs_on_real_cells(ingested):
    """Train a tiny model on the ingested real cells, classify and exaggerate them: the pipeline
    runs and the decoded images are measured (nothing is asserted about what the model
    learned)."""
    home, _, _ = ingested
    trained = train(TrainSettings(cohorts=("openlch",), **TINY_TRAINING))
    model = load_lch_model(f"models:/{REGISTERED_MODEL}/{trained.model_version}")
    table, crops = open_cells(cohort_dir("openlch", home))
    assert trained.evaluation.cells["heldout"].any()
    with torch.no_grad():
        p = model(torch.from_numpy(np.asarray(crops[:8]))[:, None]).numpy()
    assert p.shape == (8,) and np.isfinite(p).all()
    result = exaggerate(model, np.asarray(crops[:4]))
    assert result.images.shape == (4, len(DEFAULT_SIGMAS), 32, 32)
    # Every decoded image went through the morphology (a 2-epoch model may draw no cell: NaN).
    assert len(result.table) == 4 * len(DEFAULT_SIGMAS)
    assert {"area", "protrusion_reach", "halo_intensity"} <= set(result.table.columns)
    save_montage(result, home / "real_exaggeration.png")
    assert (home / "real_exaggeration.png").stat().st_size > 1000
