"""Microscope files through bioio: positions, channels, frame ranges and the file's own scales,
read frame by frame; then stored, one movie per position, with where each value came from."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import yaml

from lch.conversion import convert_movie
from lch.manifest import load_manifest
from lch.movie_io import MovieError, Selection, iter_frames, position_names, read_movie_info
from lch.omezarr import open_movie, read_image_metadata, read_provenance
from lch.paths import cohort_dir, movie_store
from lch.pipelines.ingest import convert_cohort
from lch.pixel_size import DEFAULT_PIXEL_SIZE_UM

from movies import random_movie, write_manifest, write_ome_tiff, write_tiff

CHANNELS = ["GFP", "Phase"]


@pytest.fixture(scope="module")
def positions() -> list[np.ndarray]:
    """Two positions of 5 frames × 2 channels × 40 × 56 px, every pixel distinct per position."""
    rng = np.random.default_rng(7)
    return [rng.integers(0, 60_000, (5, 2, 40, 56), dtype=np.uint16) for _ in range(2)]


@pytest.fixture
def ome_file(tmp_path, positions):
    return write_ome_tiff(tmp_path / "plate.ome.tif", positions, CHANNELS)


def test_a_position_and_channel_are_read_frame_by_frame_with_the_files_scales(
    ome_file, positions
):
    assert position_names(ome_file) == ["pos0", "pos1"]
    for position, channel in [(1, 1), ("pos0", "Phase"), ("pos1", 0)]:
        selection = Selection(position=position, channel=channel, first_frame=1, last_frame=3)
        info = read_movie_info(ome_file, selection=selection)
        p = position if isinstance(position, int) else int(position[-1])
        c = channel if isinstance(channel, int) else CHANNELS.index(channel)
        assert (info.frames, info.height, info.width) == (3, 40, 56)
        assert (info.position, info.position_name) == (p, f"pos{p}")
        assert (info.channel, info.channel_name) == (c, CHANNELS[c])
        assert (info.pixel_size_um, info.frame_interval_s) == (0.65, 300.0)
        frames = np.stack(list(iter_frames(ome_file, selection=selection)))
        np.testing.assert_array_equal(frames, positions[p][1:4, c])


def test_imagej_scales_are_read_and_a_plain_tiff_has_none(tmp_path):
    data = random_movie(frames=4)
    imagej = tmp_path / "ij.tif"
    tifffile.imwrite(imagej, data, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"axes": "TYX", "finterval": 60, "unit": "um"})
    info = read_movie_info(imagej)
    assert (info.frames, info.pixel_size_um, info.frame_interval_s) == (4, 0.5, 60.0)
    plain = write_tiff(tmp_path / "plain.tif", data)
    info = read_movie_info(plain)
    assert (info.frames, info.pixel_size_um, info.frame_interval_s) == (4, None, None)
    np.testing.assert_array_equal(np.stack(list(iter_frames(plain))), data)


@pytest.mark.parametrize("selection, words", [
    (Selection(position=0), "holds 2 channels (0: GFP, 1: Phase); pick one with 'channel'"),
    (Selection(channel="Phase"), "holds 2 positions (0: pos0, 1: pos1); pick one with 'position'"),
    (Selection(position="pos7", channel=1), "position 'pos7' is not there"),
    (Selection(position=2, channel=1), "position 2 is not there"),
    (Selection(position=0, channel="DAPI"), "channel 'DAPI' is not there (channels: 0: GFP"),
    (Selection(position=0, channel=1, first_frame=2, last_frame=9),
     "frames 2..9 (first_frame, last_frame) are not within its 5 frames"),
])
def test_a_selection_the_file_does_not_hold_is_refused_naming_the_field(
    ome_file, selection, words
):
    with pytest.raises(MovieError, match="plate.ome.tif") as error:
        read_movie_info(ome_file, selection=selection)
    assert words in str(error.value)


def test_a_z_stack_and_a_vendor_file_without_its_plugin_are_refused(tmp_path):
    stack = write_ome_tiff(tmp_path / "z.ome.tif", [np.zeros((2, 3, 16, 16), np.uint16)],
                           ["Phase"], z_axis=True)
    with pytest.raises(MovieError, match="a Z-stack \\(3 planes\\)"):
        read_movie_info(stack)
    nd2 = tmp_path / "movie.nd2"
    nd2.write_bytes(b"\x00" * 64)
    with pytest.raises(MovieError, match="movie.nd2: .*pip install 'lch\\[formats\\]'"):
        read_movie_info(nd2)


def test_the_stored_scales_say_where_they_came_from(tmp_path, positions):
    source = write_ome_tiff(tmp_path / "one.ome.tif", positions[:1], CHANNELS)
    selection = Selection(channel="Phase")
    cases = [
        ({}, (0.65, "file", 300.0, "file")),
        ({"pixel_size_um": 0.325, "frame_interval_s": 60.0}, (0.325, "manifest", 60.0, "manifest")),
    ]
    for given, expected in cases:
        dest = tmp_path / f"{len(given)}.ome.zarr"
        result = convert_movie(source, dest, movie="m", provenance={}, selection=selection,
                               **given)
        assert result.status == "ok", result.message
        stored = read_provenance(dest)
        assert (stored["pixel_size_um"], stored["pixel_size_from"], stored["frame_interval_s"],
                stored["frame_interval_from"]) == expected
        assert (stored["channel"], stored["channel_name"], stored["position_name"]) == (
            1, "Phase", "pos0")
        scale = read_image_metadata(dest)["multiscales"][0]["datasets"][0][
            "coordinateTransformations"][0]["scale"]
        assert scale[0] == expected[2] and scale[2:] == [expected[0]] * 2
    plain = write_tiff(tmp_path / "plain.tif", random_movie(frames=3))
    convert_movie(plain, tmp_path / "plain.ome.zarr", movie="p", provenance={})
    stored = read_provenance(tmp_path / "plain.ome.zarr")
    assert (stored["pixel_size_um"], stored["pixel_size_from"]) == (DEFAULT_PIXEL_SIZE_UM,
                                                                     "default")
    assert (stored["frame_interval_s"], stored["frame_interval_from"]) == (None, "unknown")


def test_an_absurd_pixel_size_in_the_file_fails_and_asks_for_the_manifests(tmp_path, positions):
    source = write_ome_tiff(tmp_path / "odd.ome.tif", positions[:1], CHANNELS,
                            pixel_size_um=100.0)
    result = convert_movie(source, tmp_path / "odd.ome.zarr", movie="m", provenance={},
                           selection=Selection(channel=1))
    assert result.status == "failed"
    assert "odd.ome.tif" in result.message and "pixel_size_um in the manifest" in result.message
    assert not (tmp_path / "odd.ome.zarr").exists()


def test_every_position_of_a_file_lands_as_its_own_movie(
    ray_session, lch_home, tmp_path, positions
):
    write_ome_tiff(tmp_path / "raw" / "plate.ome.tif", positions, CHANNELS)
    base = {"path": "raw/plate.ome.tif", "patient": "p1", "label": "high", "channel": "Phase"}
    manifest = write_manifest(tmp_path, "plates", [
        {**base, "id": "plate"},
        {**base, "id": "late", "position": "pos1", "first_frame": 2},
        {**base, "id": "dapi", "position": 0, "channel": "DAPI"},
    ])
    summary = convert_cohort(manifest, progress=False)

    status = {r.movie: r for r in summary.results}
    assert sorted(status) == ["dapi", "late", "plate_p0", "plate_p1"]
    for p in (0, 1):
        assert status[f"plate_p{p}"].status == "ok", status[f"plate_p{p}"].message
        stored = open_movie(movie_store("plates", f"plate_p{p}"))[:, 0]
        np.testing.assert_array_equal(stored, positions[p][:, 1])
        provenance = read_provenance(movie_store("plates", f"plate_p{p}"))
        assert (provenance["movie"], provenance["position"]) == (f"plate_p{p}", p)
    np.testing.assert_array_equal(open_movie(movie_store("plates", "late"))[:, 0],
                                  positions[1][2:, 1])
    assert status["dapi"].status == "failed" and "'DAPI' is not there" in status["dapi"].message
    stored = yaml.safe_load((cohort_dir("plates") / "manifest.yaml").read_text())
    assert {m["id"]: m["position"] for m in stored["movies"]} == {
        "plate_p0": 0, "plate_p1": 1, "late": "pos1"}
    assert load_manifest(manifest).movies[0].stored_movies(["a", "b"])[1][0] == "plate_p1"
