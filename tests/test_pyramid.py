"""Multiscale pyramids of movie stores and their labels: level sizes, NGFF metadata, the lower
levels made with dask, as ome-zarr-py reads them, and the segmentation stage's label pyramid."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from skimage.measure import block_reduce

from lch import omezarr
from lch.omezarr import (
    LABEL_DTYPE,
    chunk_shape,
    create_labels_group,
    create_movie_store,
    fill_pyramid,
    label_shard_shape,
    level_shapes,
    ngff_metadata,
    open_label_writer,
    open_labels,
    open_movie,
    read_image_metadata,
    shard_shape,
    with_levels,
    write_frames,
)
from lch.storage import zarr_store

FRAMES, HEIGHT, WIDTH = 5, 1100, 1030  # tiled level 0, odd x at level 1: three levels
LEVELS = [(1100, 1030), (550, 515), (275, 257)]
PIXEL_SIZE_UM, FRAME_INTERVAL_S = 0.65, 30.0


def scales(levels: int) -> list[list[float]]:
    return [[FRAME_INTERVAL_S, 1.0, PIXEL_SIZE_UM * 2**k, PIXEL_SIZE_UM * 2**k]
            for k in range(levels)]


def ome_zarr_nodes(store):
    """``(image node, label nodes)`` as ome-zarr-py finds them from the movie's image."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    image, *others = Reader(parse_url(str(store)))()
    return image, [n for n in others if n.load(Label)]


def assert_levels(node, frames: int, levels: list[tuple[int, int]]) -> None:
    assert [tuple(a.shape) for a in node.data] == [(frames, 1, y, x) for y, x in levels]
    transforms = node.metadata["coordinateTransformations"]
    assert transforms == [[{"type": "scale", "scale": s}] for s in scales(len(levels))]


def block_mean(level: np.ndarray) -> np.ndarray:
    """The next level of a (T, 1, Y, X) intensity array, computed with scikit-image."""
    y, x = (n // 2 * 2 for n in level.shape[2:])
    mean = block_reduce(level[:, :, :y, :x].astype(np.float64), (1, 1, 2, 2), np.mean)
    return np.round(mean).astype(level.dtype)


@pytest.fixture
def small_shards(monkeypatch):
    # Level 1 packs 2 frames per shard (the last shard half full): several shards per level.
    monkeypatch.setattr(omezarr, "SHARD_BYTES", 2 * 550 * 515 * 2)


def new_store(path, frames=FRAMES, height=HEIGHT, width=WIDTH, sizes=True) -> zarr.Array:
    ome = ngff_metadata("m1", pixel_size_um=PIXEL_SIZE_UM, frame_interval_s=FRAME_INTERVAL_S)
    if sizes:
        ome = with_levels(ome, height, width)
    return create_movie_store(path, frames=frames, height=height, width=width, dtype=np.uint16,
                              ome=ome, provenance={"movie": "m1"})


def test_level_shapes_halve_until_both_sides_are_at_most_512():
    assert level_shapes(2048, 2048) == [(2048, 2048), (1024, 1024), (512, 512)]
    assert level_shapes(1000, 700) == [(1000, 700), (500, 350)]
    assert level_shapes(512, 512) == [(512, 512)]
    assert level_shapes(300, 300) == [(300, 300)]
    assert level_shapes(513, 40) == [(513, 40), (256, 20)]
    assert level_shapes(4000, 3) == [(4000, 3), (2000, 1)]  # never a side of 0


def test_ngff_metadata_lists_every_level_with_its_scale():
    ome = with_levels(ngff_metadata("m1", pixel_size_um=PIXEL_SIZE_UM,
                                    frame_interval_s=FRAME_INTERVAL_S), 2048, 2048)
    datasets = ome["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1", "2"]
    assert [d["coordinateTransformations"] for d in datasets] == [
        [{"type": "scale", "scale": s}] for s in scales(3)
    ]
    plain = with_levels(ngff_metadata("m1", pixel_size_um=None, frame_interval_s=None), 1000, 700)
    assert [d["coordinateTransformations"][0]["scale"]
            for d in plain["multiscales"][0]["datasets"]] == [[1.0, 1.0, 1.0, 1.0],
                                                             [1.0, 1.0, 2.0, 2.0]]
    single = ngff_metadata("m1", pixel_size_um=PIXEL_SIZE_UM, frame_interval_s=None)
    assert [d["path"] for d in single["multiscales"][0]["datasets"]] == ["0"]


@pytest.mark.parametrize("sizes", [True, False], ids=["metadata-with-sizes", "without"])
def test_image_levels_are_block_means_that_ome_zarr_py_reads(tmp_path, small_shards, sizes):
    from ome_zarr_models import open_ome_zarr

    store = tmp_path / "m1.ome.zarr"
    data = np.random.default_rng(7).integers(0, 60_000, (FRAMES, HEIGHT, WIDTH), np.uint16)
    assert write_frames(new_store(store, sizes=sizes), iter(data)) == FRAMES

    assert fill_pyramid(store) == 2

    group = zarr.open_group(str(store), mode="r")
    for k, (y, x) in enumerate(LEVELS):
        level = group[str(k)]
        assert level.dtype == np.uint16 and level.chunks == chunk_shape(y, x)
        assert level.shards == shard_shape(FRAMES, y, x, 2)
    assert group["1"].shards[0] == 2  # two frames per shard, the last half full
    np.testing.assert_array_equal(open_movie(store)[:, 0], data)
    np.testing.assert_array_equal(group["1"][:], block_mean(group["0"][:]))
    np.testing.assert_array_equal(group["2"][:], block_mean(group["1"][:]))

    image, labels = ome_zarr_nodes(store)
    assert labels == []
    assert_levels(image, FRAMES, LEVELS)
    np.testing.assert_array_equal(np.asarray(image.data[2]), group["2"][:])
    assert open_ome_zarr(zarr.open_group(str(store), mode="r")).ome_zarr_version == "0.5"


def cell_ids(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """Rectangles of ids past uint16's range on a background of 0, a few per frame."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((frames, height, width), LABEL_DTYPE)
    for t in range(frames):
        for _ in range(6):
            y, x = rng.integers(0, height - 60), rng.integers(0, width - 60)
            labels[t, y : y + rng.integers(3, 60), x : x + rng.integers(3, 60)] = rng.integers(
                1, 200_000
            )
    return labels


def test_label_levels_sample_every_second_pixel_so_ids_stay_ids(tmp_path, small_shards):
    from ome_zarr.reader import Label
    from ome_zarr_models import open_ome_zarr

    store = tmp_path / "m1.ome.zarr"
    new_store(store)
    aside = store / ".tmp-labels-x"
    create_labels_group(aside, frames=FRAMES, height=HEIGHT, width=WIDTH,
                        image_ome=read_image_metadata(store), attributes={"segmenter": "test"})
    truth = cell_ids(FRAMES, HEIGHT, WIDTH, seed=8)
    writer = open_label_writer(aside)
    for t in range(FRAMES):  # frame by frame, as the segmentation workers write
        writer[t, 0] = truth[t]

    assert fill_pyramid(aside) == 2
    aside.rename(store / "labels")

    cells = zarr.open_group(str(store / "labels" / "cells"), mode="r")
    assert cells["0"].shards == label_shard_shape(HEIGHT, WIDTH)  # one frame per shard
    for k, (y, x) in enumerate(LEVELS[1:], start=1):
        assert cells[str(k)].dtype == LABEL_DTYPE and cells[str(k)].chunks == chunk_shape(y, x)
        assert cells[str(k)].shards == shard_shape(FRAMES, y, x, LABEL_DTYPE.itemsize)
    levels = [cells[str(k)][:, 0] for k in range(3)]
    np.testing.assert_array_equal(levels[0], truth)
    np.testing.assert_array_equal(levels[1], truth[:, : 2 * 550 : 2, : 2 * 515 : 2])
    np.testing.assert_array_equal(levels[2], levels[1][:, : 2 * 275 : 2, : 2 * 257 : 2])
    for t in range(FRAMES):
        assert set(np.unique(levels[2][t])) <= set(np.unique(levels[1][t])) <= set(
            np.unique(truth[t]))
    assert len(np.unique(levels[2])) > 10  # the cells are still there, not averaged away
    np.testing.assert_array_equal(open_labels(store)[:, 0], truth)

    _, (label,) = ome_zarr_nodes(store)
    assert label.metadata["name"] == "cells" and label.load(Label)
    assert_levels(label, FRAMES, LEVELS)
    np.testing.assert_array_equal(np.asarray(label.data[1])[:, 0], levels[1])
    model = open_ome_zarr(zarr.open_group(str(store / "labels" / "cells"), mode="r"))
    assert model.attributes.ome.image_label.source.image == "../../"


def test_a_small_movie_has_one_level_and_a_store_without_pyramid_still_reads(tmp_path):
    small = tmp_path / "small.ome.zarr"
    write_frames(new_store(small, frames=2, height=512, width=300), iter(np.ones((2, 512, 300))))
    assert fill_pyramid(small) == 0
    assert sorted(zarr.open_group(str(small), mode="r").array_keys()) == ["0"]

    # A store as written before pyramids: level 0 only, in metadata and on disk.
    old = tmp_path / "old.ome.zarr"
    data = np.random.default_rng(9).integers(0, 1000, (2, 1, 600, 600), np.uint16)
    group = zarr.open_group(str(old), mode="w", zarr_format=3)
    group.attrs["ome"] = ngff_metadata("old", pixel_size_um=PIXEL_SIZE_UM,
                                       frame_interval_s=FRAME_INTERVAL_S)
    group.create_array("0", data=data, chunks=(1, 1, 600, 600))
    assert fill_pyramid(old) == 0
    np.testing.assert_array_equal(open_movie(old)[:], data)
    image, _ = ome_zarr_nodes(old)
    assert [a.shape for a in image.data] == [(2, 1, 600, 600)]


def test_segmentation_commits_a_label_pyramid(ray_session, lch_home, tmp_path):
    from ome_zarr.reader import Label

    from lch.paths import movie_store
    from lch.pipelines.ingest import convert_cohort
    from lch.pipelines.segment import segment_cohort
    from lch.synth import make_cohort

    manifest = make_cohort(tmp_path / "synth", name="pyr", patients=1, movies_per_patient=1,
                           frames=2, seed=4, size=(640, 576), look="plain")
    assert convert_cohort(manifest, progress=False).count("ok") == 1
    summary = segment_cohort("pyr", progress=False)
    assert summary.cells_kept > 0 and not summary.movies_failed

    (movie,) = summary.labels_by
    store = movie_store("pyr", movie)
    labels = open_labels(store)[:, 0]
    assert labels.shape == (2, 640, 576) and labels.max() > 0
    _, (node,) = ome_zarr_nodes(store)
    assert node.load(Label)
    assert [tuple(a.shape) for a in node.data] == [(2, 1, 640, 576), (2, 1, 320, 288)]
    np.testing.assert_array_equal(np.asarray(node.data[1])[:, 0], labels[:, ::2, ::2])
    assert not [p.name for p in store.iterdir() if p.name.startswith(".")]
    image, _ = ome_zarr_nodes(store)
    level0, level1 = (np.asarray(a)[:, 0] for a in image.data)
    mean = block_reduce(level0.astype(np.float64), (1, 2, 2), np.mean)
    np.testing.assert_array_equal(level1, np.round(mean).astype(level0.dtype))


def test_levels_are_filled_on_an_object_store_as_locally(small_shards):
    moto_server = pytest.importorskip("moto.server")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        keys = {"key": "lch-test", "secret": "lch-test-secret"}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id=keys["key"], aws_secret_access_key=keys["secret"],
                     ).create_bucket(Bucket="pyr")
        options = {"endpoint_url": endpoint, **keys, "use_listings_cache": False}
        url = "s3://pyr/m1.ome.zarr"
        data = np.random.default_rng(10).integers(0, 60_000, (3, HEIGHT, WIDTH), np.uint16)
        ome = ngff_metadata("m1", pixel_size_um=PIXEL_SIZE_UM, frame_interval_s=None)
        write_frames(create_movie_store(url, frames=3, height=HEIGHT, width=WIDTH,
                                        dtype=np.uint16, ome=ome, provenance={},
                                        storage_options=options), iter(data))
        labels = create_labels_group(f"{url}/labels", frames=3, height=HEIGHT, width=WIDTH,
                                     image_ome=ome, attributes={}, storage_options=options)
        labels[:, 0] = cell_ids(3, HEIGHT, WIDTH, seed=11)

        assert fill_pyramid(url, options) == fill_pyramid(f"{url}/labels", options) == 2

        remote = zarr.open_group(zarr_store(url, options, read_only=True), mode="r")
        np.testing.assert_array_equal(remote["1"][:], block_mean(remote["0"][:]))
        np.testing.assert_array_equal(remote["2"][:], block_mean(remote["1"][:]))
        cells = remote["labels/cells"]
        np.testing.assert_array_equal(cells["2"][:], cells["0"][:, :, : 4 * 275 : 4, : 4 * 257 : 4])
    finally:
        server.stop()
