"""The synthetic cohort generator: determinism, file formats and the planted phenotype."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from lch.synth import CellShape, make_cohort, read_truth, render_frame

SMALL = dict(patients=2, movies_per_patient=1, frames=3, size=(128, 128))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    return make_cohort(out, patients=4, movies_per_patient=2, frames=5, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_same_bytes(tmp_path):
    make_cohort(tmp_path / "a", seed=7, **SMALL)
    make_cohort(tmp_path / "b", seed=7, **SMALL)
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


def test_cells_per_frame_scale_with_area(tmp_path):
    make_cohort(tmp_path, patients=1, movies_per_patient=1, frames=1, size=(512, 512))
    n_cells = read_truth(tmp_path)["movies"][0]["n_cells"]
    assert 32 <= n_cells <= 56


def test_truth_matches_rendered_labels(cohort):
    truth = read_truth(cohort)
    for movie in truth["movies"]:
        labels = tifffile.imread(cohort.parent / movie["labels_path"])
        expected = set(range(1, movie["n_cells"] + 1))
        assert [c["label"] for c in movie["cells"]] == sorted(expected)
        assert 8 <= movie["n_cells"] <= 14
        for frame in labels:
            assert set(np.unique(frame)) - {0} == expected


def test_labels_follow_the_same_cell(cohort):
    movie = read_truth(cohort)["movies"][0]
    labels = tifffile.imread(cohort.parent / movie["labels_path"]).astype(int)
    for cell in movie["cells"]:
        centres = [np.argwhere(frame == cell["label"]).mean(axis=0) for frame in labels]
        steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
        # Cells migrate at most ~3 px per frame; arms breathing moves the centroid a little more.
        assert steps.max() < 6


def test_classes_are_balanced_and_alternate(cohort):
    truth = read_truth(cohort)
    assert [p["label"] for p in truth["patients"]] == ["high", "low", "high", "low"]
    assert truth["seed"] == 3 and truth["version"]


def test_truth_plants_more_longer_arms_and_brighter_halos(cohort):
    cells = {"high": [], "low": []}
    for movie in read_truth(cohort)["movies"]:
        cells[movie["label"]] += movie["cells"]

    def mean(label: str, key: str) -> float:
        return float(np.mean([c[key] for c in cells[label]]))

    assert mean("high", "n_arms") > mean("low", "n_arms") + 0.7
    long_high = np.mean([x for c in cells["high"] for x in c["arm_lengths"]])
    long_low = np.mean([x for c in cells["low"] for x in c["arm_lengths"]])
    assert long_high > long_low + 2.0
    assert mean("high", "halo_gain") > 1.15 * mean("low", "halo_gain")
    assert abs(mean("high", "radius") - mean("low", "radius")) < 1.0
    # Single cells overlap: some low cells have more arms than some high cells.
    assert max(c["n_arms"] for c in cells["low"]) >= min(c["n_arms"] for c in cells["high"]) + 2


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
    with pytest.raises(FileNotFoundError):
        read_truth(tmp_path / "nowhere")
