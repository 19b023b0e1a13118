"""The synthetic cohort generator: determinism, file formats and the planted phenotype."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from lch.synth import (
    PIXEL_SIZE_UM,
    PLAIN_PIXEL_SIZE_UM,
    REAL,
    CellParams,
    CellShape,
    fit_sizes,
    make_cohort,
    read_truth,
    render_frame,
)

SMALL = dict(patients=2, movies_per_patient=1, frames=3, size=(128, 128))
# The default look at the plain look's pixel size: the same cells in a quarter of the pixels.
COARSE = dict(pixel_size_um=PLAIN_PIXEL_SIZE_UM, size=(256, 256))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    return make_cohort(out, patients=4, movies_per_patient=2, frames=5, seed=3, **COARSE)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain")
    return make_cohort(out, patients=4, movies_per_patient=2, frames=5, seed=3, look="plain",
                       size=(256, 256))


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("look", ["real", "plain"])
def test_same_seed_gives_same_bytes(tmp_path, look):
    make_cohort(tmp_path / "a", seed=7, look=look, **SMALL)
    make_cohort(tmp_path / "b", seed=7, look=look, **SMALL)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert set(a) == {
        "cohort.yaml",
        "truth.yaml",
        "raw/p00-m00.tif",
        "raw/p01-m00.tif",
        "truth/p00-m00_labels.tif",
        "truth/p01-m00_labels.tif",
    }
    assert a == b


def test_different_seeds_differ(tmp_path):
    make_cohort(tmp_path / "a", seed=1, **SMALL)
    make_cohort(tmp_path / "b", seed=2, **SMALL)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a["raw/p00-m00.tif"] != b["raw/p00-m00.tif"]
    assert a["truth.yaml"] != b["truth.yaml"]


def test_manifest_fields(cohort):
    manifest = yaml.safe_load(cohort.read_text())
    assert {m["pixel_size_um"] for m in manifest["movies"]} == {PLAIN_PIXEL_SIZE_UM}
    assert manifest["cohort"] == "synth"
    assert len(manifest["movies"]) == 8
    for movie in manifest["movies"]:
        assert set(movie) == {
            "id",
            "path",
            "patient",
            "cell_line",
            "label",
            "pixel_size_um",
            "frame_interval_s",
        }
        assert movie["path"] == f"raw/{movie['id']}.tif"
        assert movie["id"].startswith(movie["patient"] + "-m")
        assert movie["cell_line"] == movie["patient"]
        assert movie["label"] in {"high", "low"}
        assert (cohort.parent / movie["path"]).is_file()


def test_movies_shapes_and_dtypes(cohort):
    for movie in read_truth(cohort.parent)["movies"]:
        with tifffile.TiffFile(cohort.parent / "raw" / f"{movie['id']}.tif") as tif:
            assert len(tif.series) == 1
            assert tif.series[0].shape == (5, 256, 256)
            assert tif.series[0].dtype == np.uint16
        labels = tifffile.imread(cohort.parent / movie["labels_path"])
        assert labels.shape == (5, 256, 256) and labels.dtype == np.uint16


def test_default_movies_use_the_papers_pixel_size(tmp_path):
    manifest = make_cohort(tmp_path, patients=1, movies_per_patient=1, frames=1)
    truth = read_truth(tmp_path)
    assert PIXEL_SIZE_UM == 0.325 and truth["pixel_size_um"] == PIXEL_SIZE_UM
    assert yaml.safe_load(manifest.read_text())["movies"][0]["pixel_size_um"] == PIXEL_SIZE_UM
    assert truth["size"] == [512, 512] and truth["image_model"]["look"] == "real"
    assert truth["length_units"] == "µm"
    # Every setting of the look is recorded.
    assert truth["image_model"]["halo_width_um"] == REAL.halo_width_um
    assert truth["image_model"]["arm_half_width_um"] == list(REAL.arm_half_width_um)


def test_cells_per_frame_scale_with_area(tmp_path):
    make_cohort(tmp_path / "a", patients=1, movies_per_patient=1, frames=1, **COARSE)
    make_cohort(tmp_path / "b", patients=1, movies_per_patient=1, frames=1,
                pixel_size_um=PLAIN_PIXEL_SIZE_UM, size=(768, 768))
    small = read_truth(tmp_path / "a")["movies"][0]["n_cells"]
    large = read_truth(tmp_path / "b")["movies"][0]["n_cells"]
    # 9x the area, 9x the cells; fewer than the drawn density (50 in the large frame) fit
    # beside the high line's 20 µm arms.
    assert 3 <= small <= 7 and 27 <= large <= 60 and 6 <= large / small <= 12


def test_plain_look_cells_per_frame(tmp_path):
    make_cohort(tmp_path, patients=1, movies_per_patient=1, frames=1, size=(512, 512),
                look="plain")
    n_cells = read_truth(tmp_path)["movies"][0]["n_cells"]
    assert 32 <= n_cells <= 56


# A 166 µm frame of the real look holds 3-7 cells: its high lines' arms reach 20 µm.
@pytest.mark.parametrize(("look", "n_cells"), [("real", (3, 7)), ("plain", (8, 14))])
def test_truth_matches_rendered_labels(cohort, plain, look, n_cells):
    root = cohort if look == "real" else plain
    truth = read_truth(root)
    for movie in truth["movies"]:
        labels = tifffile.imread(root.parent / movie["labels_path"])
        expected = set(range(1, movie["n_cells"] + 1))
        assert [c["label"] for c in movie["cells"]] == sorted(expected)
        assert n_cells[0] <= movie["n_cells"] <= n_cells[1]
        for frame in labels:
            assert set(np.unique(frame)) - {0} == expected


@pytest.mark.parametrize("look", ["real", "plain"])
def test_labels_follow_the_same_cell(cohort, plain, look):
    root = cohort if look == "real" else plain
    movie = read_truth(root)["movies"][0]
    labels = tifffile.imread(root.parent / movie["labels_path"]).astype(int)
    for cell in movie["cells"]:
        centres = [np.argwhere(frame == cell["label"]).mean(axis=0) for frame in labels]
        steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
        # Cells migrate at most ~2 µm (3 px at 0.65 µm) per frame; arms breathing moves the
        # centroid a little more.
        assert steps.max() < 6


def test_classes_are_balanced_and_alternate(cohort):
    truth = read_truth(cohort)
    assert [p["label"] for p in truth["patients"]] == ["high", "low", "high", "low"]
    assert truth["seed"] == 3 and truth["version"]


@pytest.mark.parametrize(("look", "longer"), [("real", 2.0), ("plain", 2.0)])
def test_truth_plants_more_longer_arms_and_brighter_halos(cohort, plain, look, longer):
    """Arm lengths and radii are µm in the real look, px at 0.65 µm in the plain one."""
    cells = {"high": [], "low": []}
    for movie in read_truth(cohort if look == "real" else plain)["movies"]:
        cells[movie["label"]] += movie["cells"]

    def mean(label: str, key: str) -> float:
        return float(np.mean([c[key] for c in cells[label]]))

    assert mean("high", "n_arms") > mean("low", "n_arms") + 0.7
    long_high = np.mean([x for c in cells["high"] for x in c["arm_lengths"]])
    long_low = np.mean([x for c in cells["low"] for x in c["arm_lengths"]])
    assert long_high > long_low + longer
    assert mean("high", "halo_gain") > 1.15 * mean("low", "halo_gain")
    # Size is a control: within 15 % (1 px of 6.5 in the plain look).
    radius = (mean("high", "radius") + mean("low", "radius")) / 2
    assert abs(mean("high", "radius") - mean("low", "radius")) < 0.15 * radius
    # Single cells overlap: some low cells have more arms than some high cells.
    assert max(c["n_arms"] for c in cells["low"]) >= min(c["n_arms"] for c in cells["high"]) + 2


def test_real_look_matches_size_between_the_classes(tmp_path):
    """Crowded high frames do not keep their larger cells, and pairs share their size means."""
    make_cohort(tmp_path, patients=8, movies_per_patient=3, frames=1, seed=0, **COARSE)
    truth = read_truth(tmp_path)
    means = [p["radius_mean"] for p in truth["patients"]]
    assert means[1::2] == means[::2]
    radii = {"high": [], "low": []}
    for movie in truth["movies"]:
        radii[movie["label"]] += [c["radius"] for c in movie["cells"]]
    # Drawn freely and kept largest-first in crowded frames (generator 2.2): 9.8 against 9.3 µm.
    high, low = np.mean(radii["high"]), np.mean(radii["low"])
    assert abs(high - low) < 0.02 * low
    assert len(radii["high"]) < len(radii["low"])  # the arms crowd the high lines' frames


def test_fit_sizes_gives_each_size_where_it_fits():
    """Two cells crowd each other at one end of a strip, one has room at the other."""
    cell = CellParams(label=1, radius=5.0, darkness=0.0, halo_gain=1.0, wobble=(0.0,),
                      arm_angles=(), arm_lengths=())
    cells = [replace(cell, label=k) for k in (1, 2, 3)]
    centres = np.array([[50.0, 20.0], [50.0, 45.0], [50.0, 150.0]])
    sized = fit_sizes(np.random.default_rng(0), cells, centres, [30.0, 8.0, 8.0], gap=3.0,
                      size=(100, 200))
    assert [c.radius for c in sized] == [8.0, 8.0, 30.0]
    # Too large for any cell: it shrinks to what the roomiest takes beside a neighbour still
    # taken at that size (105 - 61 - 3 - 1; the frame's edge would allow 48).
    sized = fit_sizes(np.random.default_rng(0), cells, centres, [60.0, 8.0, 8.0], gap=3.0,
                      size=(100, 200))
    assert sized[2].radius == pytest.approx(40.0)
    for a, b in ((0, 1), (1, 2), (0, 2)):
        gap = np.hypot(*(centres[a] - centres[b])) - sized[a].reach() - sized[b].reach()
        assert gap >= 3.0 - 1e-6


def test_real_look_draws_bright_cells_on_a_dark_background(cohort):
    movie = read_truth(cohort)["movies"][0]
    frame = tifffile.imread(cohort.parent / "raw" / f"{movie['id']}.tif")[0].astype(float)
    labels = tifffile.imread(cohort.parent / movie["labels_path"])[0]
    background = np.median(frame[labels == 0])
    assert np.median(frame[labels > 0]) > 1.5 * background


def test_render_frame_draws_dark_body_and_bright_halo():
    cell = CellShape(label=3, y=32, x=32, radius=10, halo_gain=0.4)
    frame, labels = render_frame([cell], (64, 64), background=1000.0)
    assert set(np.unique(labels)) == {0, 3}
    assert abs(int((labels == 3).sum()) - np.pi * 100) < 40
    assert frame[32, 32] < 750
    assert frame[32, 32 + 11] > 1100  # just outside the edge: the halo
    assert abs(int(frame[2, 2]) - 1000) <= 1


def test_render_frame_arms_extend_the_mask():
    plain = CellShape(label=1, y=32, x=32, radius=9)
    armed = CellShape(label=1, y=32, x=32, radius=9, arm_angles=(0.0,), arm_lengths=(15.0,))
    _, lab_plain = render_frame([plain], (64, 64))
    _, lab_armed = render_frame([armed], (64, 64))
    assert lab_armed.sum() > lab_plain.sum() + 30
    assert lab_armed[32, 32 + 9 + 14] == 1 and lab_plain[32, 32 + 9 + 14] == 0


def test_render_frame_noise_is_seeded():
    cell = CellShape(label=1, y=20, x=20, radius=8)
    a, _ = render_frame([cell], (40, 40), rng=np.random.default_rng(0))
    b, _ = render_frame([cell], (40, 40), rng=np.random.default_rng(0))
    c, _ = render_frame([cell], (40, 40), rng=np.random.default_rng(1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="name"):
        make_cohort(tmp_path, name="bad/name", **SMALL)
    with pytest.raises(ValueError, match="frames"):
        make_cohort(tmp_path, patients=1, frames=0)
    with pytest.raises(ValueError, match="look"):
        make_cohort(tmp_path, look="fancy", **SMALL)
    with pytest.raises(ValueError, match="plain look"):
        make_cohort(tmp_path, look="plain", pixel_size_um=0.325, **SMALL)
    with pytest.raises(FileNotFoundError):
        read_truth(tmp_path / "nowhere")
