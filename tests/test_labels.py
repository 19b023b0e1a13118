"""Label movies without Ray: checks of a label movie made elsewhere, the NGFF labels group read
by ome-zarr-py, its atomic commit, cells from labels, and the Cellpose segmenter's preconditions."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr

from lch.cells import frame_cells
from lch.conversion import commit_labels, convert_movie, start_labels
from lch.labels import SegmenterUnavailable, check_segmenter
from lch.omezarr import (
    LABEL_DTYPE,
    label_attributes,
    open_label_writer,
    open_labels,
    open_movie,
)
from lch.pipelines.cli import main as lch_main
from lch.synth import PLAIN_PIXEL_SIZE_UM, make_cohort

from movies import entry, random_movie, write_manifest, write_tiff
from real_cells import PIXEL_SIZE_UM as REAL_PIXEL_SIZE_UM
from real_cells import real_images

PROVENANCE = {"cohort": "c1", "movie": "m1", "patient": "p1", "label": "high"}


def convert(source, dest, **kwargs):
    return convert_movie(source, dest, movie="m1", provenance=PROVENANCE, **kwargs)


def label_movie(frames: int = 4, height: int = 48, width: int = 40, seed: int = 0) -> np.ndarray:
    """Blocks of ids 1..6 per frame, some ids left out so gaps in the numbering stay."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((frames, height, width), np.uint16)
    for t in range(frames):
        for k, (y, x) in enumerate([(4, 4), (4, 24), (26, 4), (26, 24)]):
            labels[t, y : y + 14, x : x + 12] = rng.choice([0, 3 + k, 200 + k])
    return labels


def ome_zarr_labels(store):
    """The label image node ome-zarr-py finds from the image, and its data as NumPy."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = [n for n in Reader(parse_url(str(store)))() if n.load(Label)]
    return nodes, [np.asarray(n.data[0]) for n in nodes]


@pytest.fixture
def movie_and_labels(tmp_path):
    data = random_movie(frames=4, height=48, width=40)
    labels = label_movie()
    return (write_tiff(tmp_path / "m1.tif", data), write_tiff(tmp_path / "labels.tif", labels),
            data, labels)


def test_given_label_movie_is_stored_as_an_ngff_labels_group(tmp_path, movie_and_labels):
    source, labels_file, data, labels = movie_and_labels
    dest = tmp_path / "movies" / "m1.ome.zarr"

    result = convert(source, dest, pixel_size_um=0.65, frame_interval_s=30.0, labels=labels_file)

    assert result.status == "ok", result.message
    np.testing.assert_array_equal(open_movie(dest)[:, 0], data)  # the image reads as before
    stored = open_labels(dest)
    assert stored.dtype == LABEL_DTYPE and stored.shape == (4, 1, 48, 40)
    assert stored.chunks == open_movie(dest).chunks and stored.shards == (1, 1, 48, 40)
    np.testing.assert_array_equal(stored[:, 0], labels)
    assert label_attributes(dest)["segmenter"] == "manifest"
    assert label_attributes(dest)["source_path"] == str(labels_file)

    nodes, arrays = ome_zarr_labels(dest)
    assert len(nodes) == 1 and nodes[0].metadata["name"] == "cells"
    assert [a["name"] for a in nodes[0].metadata["axes"]] == ["t", "c", "y", "x"]
    np.testing.assert_array_equal(arrays[0][:, 0], labels)
    group = zarr.open_group(str(dest / "labels"), mode="r")
    assert group.attrs["ome"] == {"version": "0.5", "labels": ["cells"]}
    cells = zarr.open_group(str(dest / "labels" / "cells"), mode="r").attrs["ome"]
    assert cells["image-label"]["source"] == {"image": "../../"}
    scale = cells["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [30.0, 1.0, 0.65, 0.65]


def test_ome_zarr_models_validates_the_image_with_its_labels(tmp_path, movie_and_labels):
    from ome_zarr_models import open_ome_zarr

    source, labels_file, _, _ = movie_and_labels
    dest = tmp_path / "m1.ome.zarr"
    assert convert(source, dest, labels=labels_file).status == "ok"
    labels = open_ome_zarr(zarr.open_group(str(dest / "labels"), mode="r"))
    assert labels.attributes.ome.labels == ["cells"]
    image_label = open_ome_zarr(zarr.open_group(str(dest / "labels" / "cells"), mode="r"))
    assert image_label.attributes.ome.image_label.source.image == "../../"


def write_bad(kind: str, path, shape=(4, 48, 40)):
    frames, height, width = shape
    if kind == "frames":
        write_tiff(path, label_movie(frames=3))
    elif kind == "size":
        write_tiff(path, label_movie(height=32, width=40))
    elif kind == "float":
        write_tiff(path, label_movie().astype(np.float32))
    elif kind == "negative":
        labels = label_movie().astype(np.int16)
        labels[2, 0, 0] = -1
        write_tiff(path, labels)
    elif kind == "png":
        from PIL import Image

        Image.fromarray(label_movie()[0].astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("frames", "3 frames of 48×40, the movie has 4 frames of 48×40"),
        ("size", "4 frames of 32×40, the movie has 4 frames of 48×40"),
        ("float", "floating-point pixels; a label movie holds integer cell ids"),
        ("negative", "frame 2 has negative labels (down to -1)"),
        ("png", "a PNG image, not a TIFF movie"),
        ("missing", "file not found"),
    ],
)
def test_a_bad_label_movie_fails_naming_the_file_and_keeps_the_stored_movie(
    tmp_path, movie_and_labels, kind, words
):
    source, labels_file, data, labels = movie_and_labels
    dest = tmp_path / "movies" / "m1.ome.zarr"
    assert convert(source, dest, labels=labels_file).status == "ok"
    stamp = (dest / "zarr.json").stat().st_mtime_ns
    bad = tmp_path / ("bad.png" if kind == "png" else "bad.tif")
    if kind != "missing":
        write_bad(kind, bad)

    result = convert(source, dest, labels=bad)

    assert result.status == "failed"
    assert str(bad) in result.message and words in result.message, result.message
    assert (dest / "zarr.json").stat().st_mtime_ns == stamp  # nothing stored was touched
    np.testing.assert_array_equal(open_labels(dest)[:, 0], labels)
    assert sorted(p.name for p in (tmp_path / "movies").iterdir()) == ["m1.ome.zarr"]


def test_a_changed_or_dropped_label_movie_reconverts_and_the_same_one_is_skipped(
    tmp_path, movie_and_labels
):
    source, labels_file, _, labels = movie_and_labels
    dest = tmp_path / "m1.ome.zarr"
    assert convert(source, dest, labels=labels_file).status == "ok"
    assert convert(source, dest, labels=labels_file).status == "skipped"

    changed = label_movie(seed=5)
    write_tiff(labels_file, changed)
    assert convert(source, dest, labels=labels_file).status == "ok"
    np.testing.assert_array_equal(open_labels(dest)[:, 0], changed)

    assert convert(source, dest).status == "ok"  # no labels any more: LCH will segment it
    assert open_labels(dest) is None and not (dest / "labels").exists()


def test_a_png_frame_given_as_the_movie_is_named(tmp_path):
    from PIL import Image

    frame = tmp_path / "frame.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(frame)
    result = convert(frame, tmp_path / "m1.ome.zarr")
    assert result.status == "failed"
    assert result.message.startswith(f"{frame}: a PNG image, not a TIFF movie")


KILL_BEFORE_COMMIT = """
import os, sys
import numpy as np
from lch.conversion import start_labels
from lch.omezarr import open_label_writer

aside = start_labels(sys.argv[1], attributes={"segmenter": "lch"})
writer = open_label_writer(aside)
writer[0, 0] = np.full(writer.shape[2:], 9, np.uint32)
os._exit(9)  # killed after writing a frame, before the commit
"""


def test_labels_are_committed_whole_a_killed_write_leaves_the_old_and_a_rerun_replaces(
    tmp_path, movie_and_labels
):
    source, labels_file, _, labels = movie_and_labels
    dest = tmp_path / "m1.ome.zarr"
    assert convert(source, dest, labels=labels_file).status == "ok"

    proc = subprocess.run([sys.executable, "-c", KILL_BEFORE_COMMIT, str(dest)])
    assert proc.returncode == 9
    np.testing.assert_array_equal(open_labels(dest)[:, 0], labels)  # the old labels, whole
    (leftover,) = [p for p in dest.iterdir() if p.name.startswith(".")]
    assert leftover.name.startswith(".tmp-labels-")
    _, arrays = ome_zarr_labels(dest)
    np.testing.assert_array_equal(arrays[0][:, 0], labels)  # readers never look aside

    aside = start_labels(dest, attributes={"segmenter": "lch"})
    assert open_labels(dest) is not None  # still the old ones while the new are written
    new = np.arange(4 * 48 * 40, dtype=np.uint32).reshape(4, 1, 48, 40) % 7
    writer = open_label_writer(aside)
    for t in range(4):
        writer[t, 0] = new[t, 0]
    commit_labels(aside, dest)
    np.testing.assert_array_equal(open_labels(dest)[:], new)
    assert label_attributes(dest) == {"segmenter": "lch"}
    # Only the killed run's leftover remains (the next segmentation run removes it).
    assert [p.name for p in dest.iterdir() if p.name.startswith(".")] == [leftover.name]


def test_frame_cells_measures_and_crops_given_labels_as_they_are():
    name, frame, reference = next(r for r in real_images() if r[2] is not None)
    given = np.asarray(reference, np.int32) * 3  # the hand-checked mask, with other ids
    table, crops = frame_cells(frame, 64, pixel_size_um=REAL_PIXEL_SIZE_UM, labels=given)
    ids = np.unique(given)[1:]
    np.testing.assert_array_equal(table["label"], ids)  # the given ids, as they are
    np.testing.assert_array_equal(table["area"], [(given == i).sum() for i in ids])
    assert len(crops) == (table["drop_reason"] == "").sum() > 0, name
    with pytest.raises(ValueError, match=r"labels \(255, 256\)"):
        frame_cells(frame, 64, pixel_size_um=REAL_PIXEL_SIZE_UM, labels=given[:-1])


def cellpose_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("cellpose") is not None


@pytest.mark.skipif(cellpose_installed(), reason="checks the message when cellpose is missing")
def test_cellpose_without_its_package_stops_saying_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.delenv("CELLPOSE_LOCAL_MODELS_PATH", raising=False)
    with pytest.raises(SegmenterUnavailable) as info:
        check_segmenter("cellpose")
    message = str(info.value)
    assert "the cellpose package is not installed" in message
    assert "CELLPOSE_LOCAL_MODELS_PATH is not set" in message
    assert "pip install -e '.[cellpose]'" in message and "never downloads" in message

    (tmp_path / "cpsam_v2").write_bytes(b"weights")  # weights alone are not enough
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    with pytest.raises(SegmenterUnavailable, match="package is not installed") as info:
        check_segmenter("cellpose")
    assert "holds none" not in str(info.value)


def test_cellpose_without_weights_names_the_folder_and_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    (tmp_path / "cpsam_v2").write_bytes(b"")  # an empty file is no weights
    with pytest.raises(SegmenterUnavailable) as info:
        check_segmenter("cellpose")
    message = str(info.value)
    assert f"CELLPOSE_LOCAL_MODELS_PATH={tmp_path} holds none of the weight files" in message
    assert "cpsam_v2, cpsam" in message
    assert ("not installed" in message) != cellpose_installed()


def test_cli_stops_before_any_work_without_cellpose_weights(
    lch_home, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "no-weights"))
    write_tiff(tmp_path / "a.tif", random_movie(frames=2))
    manifest = write_manifest(tmp_path, "cp", [entry("a", "a.tif")])

    assert lch_main(["ingest", str(manifest), "--quiet", "--segmenter", "cellpose"]) == 2
    err = capsys.readouterr().err
    assert "--segmenter cellpose cannot run" in err and "CELLPOSE_LOCAL_MODELS_PATH" in err
    assert not lch_home.exists()  # nothing converted, no cohort folder, no lock

    assert lch_main(["segment", "cp", "--quiet", "--segmenter", "cellpose"]) == 2
    assert "--segmenter cellpose cannot run" in capsys.readouterr().err
    assert not lch_home.exists()


def test_cellpose_segments_a_frame_from_weights_on_disk(tmp_path):
    pytest.importorskip("cellpose")
    try:
        weights = check_segmenter("cellpose")["weights"]
    except SegmenterUnavailable as exc:
        pytest.skip(str(exc))
    from lch.labels import make_segmenter

    manifest = make_cohort(tmp_path, name="c", patients=1, movies_per_patient=1, frames=1,
                           size=(128, 128), seed=2, look="plain")
    frame = tifffile.imread(manifest.parent / "raw" / "p00-m00.tif")
    labels = make_segmenter("cellpose", {"weights": weights})(frame, PLAIN_PIXEL_SIZE_UM)
    truth = tifffile.imread(manifest.parent / "truth" / "p00-m00_labels.tif")
    assert labels.shape == frame.shape and labels.min() == 0
    assert 0 < labels.max() <= 3 * truth.max()  # found cells, not one per pixel
