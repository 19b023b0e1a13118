"""TIFF → OME-Zarr conversion of one movie (no Ray): round trip, layout, readers, atomicity."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import zarr

from lch.conversion import convert_movie, remove_leftovers
from lch.movie_io import file_sha256
from lch.omezarr import chunk_shape, open_movie, read_provenance, shard_shape

from movies import random_movie, write_tiff

PROVENANCE = {"cohort": "c1", "movie": "m1", "patient": "p1", "label": "high"}


def convert(source, dest, **kwargs):
    return convert_movie(source, dest, movie="m1", provenance=PROVENANCE, **kwargs)


def test_source_hash_is_the_sha256_of_the_whole_file(tmp_path):
    data = np.random.default_rng(0).bytes(9 << 20)  # more than one read block
    path = tmp_path / "movie.tif"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # the last byte changed
    assert file_sha256(path) != hashlib.sha256(data).hexdigest()


def test_round_trip_is_exact_with_ngff_metadata_and_provenance(tmp_path):
    data = random_movie(frames=7, height=50, width=34)
    source = write_tiff(tmp_path / "m1.tif", data)
    dest = tmp_path / "movies" / "m1.ome.zarr"

    result = convert(source, dest, pixel_size_um=0.65, frame_interval_s=30.0)

    assert result.status == "ok" and result.frames == 7
    array = open_movie(dest)
    assert array.shape == (7, 1, 50, 34) and array.dtype == np.uint16
    np.testing.assert_array_equal(array[:, 0], data)
    assert array.chunks == (1, 1, 50, 34)
    assert array.metadata.dimension_names == ("t", "c", "y", "x")
    group = zarr.open_group(str(dest), mode="r")
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    (multiscale,) = ome["multiscales"]
    assert [a["name"] for a in multiscale["axes"]] == ["t", "c", "y", "x"]
    assert multiscale["axes"][2]["unit"] == "micrometer"
    scale = multiscale["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [30.0, 1.0, 0.65, 0.65]
    provenance = read_provenance(dest)
    assert provenance["patient"] == "p1" and provenance["frames"] == 7
    assert provenance["source_path"] == str(source)
    assert len(provenance["source_sha256"]) == 64


def test_real_clients_read_the_store_unchanged(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    da = pytest.importorskip("dask.array")
    data = random_movie(frames=5, height=32, width=32, seed=3)
    dest = tmp_path / "m1.ome.zarr"
    convert(write_tiff(tmp_path / "m1.tif", data), dest, pixel_size_um=0.5)

    np.testing.assert_array_equal(da.from_zarr(str(dest), component="0").compute()[:, 0], data)
    nodes = list(Reader(parse_url(str(dest)))())
    image = nodes[0]
    assert [a["name"] for a in image.metadata["axes"]] == ["t", "c", "y", "x"]
    np.testing.assert_array_equal(np.asarray(image.data[0])[:, 0], data)


def test_a_store_with_labels_reads_as_before(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    da = pytest.importorskip("dask.array")
    data = random_movie(frames=3, height=32, width=32, seed=4)
    labels = (data > 30_000).astype(np.uint16)
    dest = tmp_path / "m1.ome.zarr"
    source = write_tiff(tmp_path / "m1.tif", data)
    label_file = write_tiff(tmp_path / "l.tif", labels)
    assert convert(source, dest, labels=label_file).status == "ok"

    np.testing.assert_array_equal(open_movie(dest)[:, 0], data)
    np.testing.assert_array_equal(da.from_zarr(str(dest), component="0").compute()[:, 0], data)
    image, *others = list(Reader(parse_url(str(dest)))())
    np.testing.assert_array_equal(np.asarray(image.data[0])[:, 0], data)
    assert [n.metadata["name"] for n in others if "image-label" in n.zarr.root_attrs] == ["cells"]
    assert read_provenance(dest)["labels_path"] == str(label_file)


def test_ome_zarr_models_validates_ngff_05(tmp_path):
    from ome_zarr_models import open_ome_zarr

    dest = tmp_path / "m1.ome.zarr"
    convert(write_tiff(tmp_path / "m1.tif", random_movie(frames=2)), dest)
    model = open_ome_zarr(zarr.open_group(str(dest), mode="r"))
    assert model.ome_zarr_version == "0.5"


def test_large_frames_are_tiled_and_shards_hold_whole_frames():
    assert chunk_shape(512, 512) == (1, 1, 512, 512)
    assert chunk_shape(1500, 2100) == (1, 1, 1024, 1024)
    shards = shard_shape(500, 1500, 2100, 2)
    assert shards[2:] == (2048, 3072) and 1 <= shards[0] <= 500
    assert shard_shape(10, 64, 64, 2)[0] == 10  # small movies fit one shard


def test_tiled_round_trip(tmp_path):
    data = random_movie(frames=2, height=1100, width=1030, seed=5)
    dest = tmp_path / "big.ome.zarr"
    assert convert(write_tiff(tmp_path / "big.tif", data), dest).status == "ok"
    array = open_movie(dest)
    assert array.chunks == (1, 1, 1024, 1024)
    np.testing.assert_array_equal(array[:, 0], data)


def test_float_movie_stored_as_float32(tmp_path):
    data = np.random.default_rng(0).random((4, 16, 16))
    dest = tmp_path / "f.ome.zarr"
    assert convert(write_tiff(tmp_path / "f.tif", data), dest).status == "ok"
    array = open_movie(dest)
    assert array.dtype == np.float32
    np.testing.assert_allclose(array[:, 0], data.astype(np.float32))


def test_same_source_is_skipped_and_changed_source_replaces(tmp_path):
    source = write_tiff(tmp_path / "m1.tif", random_movie(seed=1))
    dest = tmp_path / "m1.ome.zarr"
    assert convert(source, dest).status == "ok"
    stamp = (dest / "zarr.json").stat().st_mtime_ns

    again = convert(source, dest)
    assert again.status == "skipped" and again.frames == 6
    assert (dest / "zarr.json").stat().st_mtime_ns == stamp

    changed = random_movie(frames=3, seed=2)
    write_tiff(source, changed)
    assert convert(source, dest).status == "ok"
    np.testing.assert_array_equal(open_movie(dest)[:, 0], changed)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failure_midway_leaves_the_stored_version_untouched(tmp_path, monkeypatch):
    import lch.conversion

    original = random_movie(seed=1)
    source = write_tiff(tmp_path / "m1.tif", original)
    dest = tmp_path / "m1.ome.zarr"
    convert(source, dest)
    write_tiff(source, random_movie(frames=40, seed=9))

    def frames_then_fail(path, **limits):
        yield from (np.zeros((48, 40), np.uint16) for _ in range(3))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lch.conversion, "iter_frames", frames_then_fail)
    result = convert(source, dest)
    assert result.status == "failed" and "No space left" in result.message
    np.testing.assert_array_equal(open_movie(dest)[:, 0], original)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m1.ome.zarr", "m1.tif"]


KILL_MIDWAY = """
import os, sys
import numpy as np
import lch.conversion
from lch.omezarr import write_frames as real_write

def dying_write(array, frames):
    # Die like a killed worker once the first shard is on disk.
    def first_then_die():
        for i, frame in enumerate(frames):
            if i == array.shards[0]:
                os._exit(9)
            yield frame
    return real_write(array, first_then_die())

lch.conversion.write_frames = dying_write
lch.conversion.convert_movie(sys.argv[1], sys.argv[2], movie="m1", provenance={})
"""


def test_killed_conversion_leaves_no_visible_store_and_next_run_finishes(tmp_path):
    data = random_movie(frames=12, height=1100, width=1030, seed=4)  # several shards
    source = write_tiff(tmp_path / "m1.tif", data)
    movies = tmp_path / "movies"
    dest = movies / "m1.ome.zarr"

    proc = subprocess.run([sys.executable, "-c", KILL_MIDWAY, str(source), str(dest)])
    assert proc.returncode == 9
    assert not dest.exists()
    leftovers = [p for p in movies.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".tmp-")

    assert remove_leftovers(movies) == leftovers
    assert convert(source, dest).status == "ok"
    np.testing.assert_array_equal(open_movie(dest)[:, 0], data)
