"""``LCH_HOME=s3://bucket/prefix`` against a real S3-compatible server (moto's, on 127.0.0.1).

Ingestion, segmentation, training reads and Ray Train checkpoints go through fsspec to the
server; the source movies and the segmentation function called here are the reference. Ray
starts before the S3 variables are set, so its workers never see them: everything they read or
write reaches S3 through the storage options handed to them, as on a cluster whose nodes were
started without them.
"""

from __future__ import annotations

import logging
import uuid

import numpy as np
import pytest
import tifffile
import zarr

from lch.cellstore import CELLS_FILE, CROPS_STORE, CellStoreError, open_cells
from lch.manifest import load_manifest
from lch.mlflow_store import TrackingConfigError, artifact_location, tracking_uri
from lch.movie_io import file_sha256
from lch.omezarr import open_movie, read_provenance
from lch.paths import cohort_dir, join, lch_home, movie_store, movies_dir
from lch.pipelines.ingest import convert_cohort
from lch.pipelines.runtime import free_port
from lch.pipelines.segment import segment_cohort
from lch.pipelines.train import TrainSettings, build_trainer, prepare
from lch.pipelines.train_data import crop_dataset
from lch.pipelines.train_loop import load_trained_aae
from lch.storage import StorageError, filesystem, pyarrow_filesystem
from lch.synth import PLAIN_PIXEL_SIZE_UM as PIXEL_SIZE_UM
from lch.synth import make_cohort
from lch.training import load_cells, read_rows

from helpers import assert_same_crops, bare_cells

moto_server = pytest.importorskip("moto.server")

BUCKET = "lch-data"
COHORT = "obj"
MOVIES = ["p00-m00", "p01-m00", "p02-m00", "p03-m00"]
CROP = 64
TINY = {"latent_dim": 8, "width": 1 / 16, "batch_size": 8, "epochs": 1, "workers": 2}
FEATURES = ["area", "protrusion_count", "protrusion_length", "halo_intensity", "solidity"]

pytestmark = pytest.mark.slow  # a local S3 server and Ray end to end


@pytest.fixture(scope="module")
def s3_endpoint(ray_session):
    """moto's S3 server on a free loopback port, with the standard AWS variables pointing at it.

    Depends on ``ray_session`` so that Ray is up before the variables exist (see the module doc).
    """
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_SESSION_TOKEN"):
            env.delenv(name, raising=False)
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        env.setenv("AWS_ACCESS_KEY_ID", "lch-test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "lch-test-secret")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_cohort(
        tmp_path_factory.mktemp("obj-src"),
        name=COHORT,
        patients=4,
        movies_per_patient=1,
        frames=4,
        seed=7,
        look="plain",
        size=(256, 256),
    )


@pytest.fixture(scope="module")
def s3_home(s3_endpoint, source):
    """The cohort ingested and segmented with ``LCH_HOME=s3://<bucket>/<prefix>``."""
    home = f"s3://{BUCKET}/home-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LCH_HOME", home)
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert lch_home() == home
        summary = convert_cohort(source, progress=False)
        assert summary.count("ok") == len(MOVIES), summary.format()
        cells = segment_cohort(COHORT, crop_size=CROP, progress=False)
        assert not cells.movies_failed and cells.cells_kept > 16
        yield home


def objects(location: str) -> list[str]:
    fs, path = filesystem(location)
    return sorted(p.removeprefix(path) for p in fs.find(path))


def test_ingest_writes_ome_zarr_that_zarr_and_ome_zarr_read_from_s3(s3_home, source):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    fs, _ = filesystem(s3_home)
    listed = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(filesystem(movies_dir(COHORT))[1]))
    assert listed == [f"{m}.ome.zarr" for m in MOVIES]  # nothing hidden left behind
    assert fs.exists(filesystem(join(cohort_dir(COHORT), "manifest.yaml"))[1])
    manifest = load_manifest(source)
    for entry in manifest.movies:
        url = movie_store(COHORT, entry.id)
        assert url == f"{s3_home}/cohorts/{COHORT}/movies/{entry.id}.ome.zarr"
        path = manifest.source_path(entry)
        np.testing.assert_array_equal(open_movie(url)[:, 0], tifffile.imread(path))
        assert read_provenance(url)["source_sha256"] == file_sha256(path)
    # Independent readers, configured by the standard variables alone.
    url = movie_store(COHORT, MOVIES[0])
    group = zarr.open_group(url, mode="r")
    assert group.attrs["ome"]["version"] == "0.5" and group["0"].shape[1] == 1
    nodes = list(Reader(parse_url(url))())
    assert nodes and nodes[0].data[0].shape == group["0"].shape


def test_rerun_is_a_no_op(s3_home, source):
    before = {m: objects(movie_store(COHORT, m)) for m in MOVIES}
    fs, path = filesystem(movie_store(COHORT, MOVIES[0]))
    stamp = fs.info(f"{path}/zarr.json")["ETag"]
    summary = convert_cohort(source, progress=False)
    assert summary.count("skipped") == len(MOVIES) and not summary.failed
    assert {m: objects(movie_store(COHORT, m)) for m in MOVIES} == before
    assert fs.info(f"{path}/zarr.json")["ETag"] == stamp  # not even rewritten


def test_a_half_written_store_is_never_taken_as_complete(s3_home, source):
    fs, movies = filesystem(movies_dir(COHORT))
    movie = MOVIES[1]
    store = movie_store(COHORT, movie)
    expected = open_movie(store)[:]
    # A commit killed before its last write (the root zarr.json), and a run killed while
    # writing aside.
    fs.rm_file(f"{movies}/{movie}.ome.zarr/zarr.json")
    fs.pipe_file(f"{movies}/.tmp-{movie}.ome.zarr-deadbeef/0/zarr.json", b"{}")
    assert fs.exists(f"{movies}/{movie}.ome.zarr/0/zarr.json")  # most of the store is there

    assert read_provenance(store) is None
    with pytest.raises(zarr.errors.GroupNotFoundError):
        zarr.open_group(store, mode="r")

    summary = convert_cohort(source, progress=False)
    status = {r.movie: r.status for r in summary.results}
    assert status == {m: ("ok" if m == movie else "skipped") for m in MOVIES}
    assert not any(".tmp-" in p for p in fs.ls(movies, detail=False))
    np.testing.assert_array_equal(open_movie(store)[:], expected)


def test_segmentation_on_s3_matches_the_bare_function(s3_home, source):
    table, crops = open_cells(cohort_dir(COHORT))
    assert len(table) == crops.shape[0] > 16
    movies = sorted(load_manifest(source).movies, key=lambda m: m.id)  # the table's order
    expected, cut = bare_cells({m.id: movie_store(COHORT, m.id) for m in movies}, CROP,
                               pixel_size_um=PIXEL_SIZE_UM)
    np.testing.assert_array_equal(table[["movie", "frame", "cell_id"]].to_numpy(),
                                  expected[["movie", "frame", "label"]].to_numpy())
    np.testing.assert_allclose(table[FEATURES].to_numpy(float), expected[FEATURES].to_numpy(float))
    np.testing.assert_array_equal(crops[:], cut)
    for entry in movies:
        rows = table["movie"] == entry.id
        assert set(table.loc[rows, "patient"]) == {entry.patient}
        assert set(table.loc[rows, "label"]) == {entry.label}
    fs, folder = filesystem(cohort_dir(COHORT))
    assert not [p for p in fs.ls(folder, detail=False) if ".tmp-" in p or ".old-" in p]


def test_cell_outputs_without_their_commit_are_refused(s3_home):
    fs, folder = filesystem(cohort_dir(COHORT))
    copy = f"{s3_home}/cohorts/copy-{uuid.uuid4().hex[:6]}"
    copy_path = filesystem(copy)[1]
    fs.copy(folder, copy_path, recursive=True)
    open_cells(copy)  # a faithful copy opens
    # Crops whose metadata (written last) is missing, as after a commit killed half-way.
    fs.rm_file(f"{copy_path}/{CROPS_STORE}/zarr.json")
    with pytest.raises(CellStoreError, match="no segmentation outputs"):
        open_cells(copy)
    # New crops next to the old table (killed between the two commits): different runs.
    fs.copy(f"{folder}/{CROPS_STORE}/zarr.json", f"{copy_path}/{CROPS_STORE}/zarr.json")
    crops = zarr.open_array(f"{copy}/{CROPS_STORE}", mode="r+")
    crops.attrs["lch_segmentation_run"] = "another-run"
    with pytest.raises(CellStoreError, match="different segmentation runs"):
        open_cells(copy)
    assert fs.exists(f"{copy_path}/{CELLS_FILE}")


def test_training_crops_are_read_from_s3_on_the_driver_and_in_ray(s3_home):
    cells = load_cells([COHORT])
    assert cells.stores == (f"{s3_home}/cohorts/{COHORT}/{CROPS_STORE}",)
    stored = np.asarray(open_cells(cohort_dir(COHORT))[1][:])
    index = np.array([5, 0, len(cells.table) - 1, 3])
    np.testing.assert_array_equal(read_rows(cells, index), stored[index])
    mask = np.ones(len(cells.table), bool)
    rows = crop_dataset(cells, mask, seed=0, in_memory=False).take_all()
    assert_same_crops(np.stack([r["crop"] for r in rows]), stored)


@pytest.mark.slow
def test_ray_train_checkpoints_to_the_s3_root(s3_home):
    settings = TrainSettings(cohorts=(COHORT,), **TINY)
    cells, split = prepare(settings)
    trainer = build_trainer(settings, crop_dataset(cells, split.autoencoder), CROP, name="s3run")
    result = trainer.fit()
    root, _ = pyarrow_filesystem(join(s3_home, "ray_results"))
    assert result.checkpoint.path.startswith(f"{root}/s3run/")
    assert any(p.endswith(".pt") for p in objects(join(s3_home, "ray_results", "s3run")))
    model = load_trained_aae(result.checkpoint, settings.aae_config(CROP, cells.field_of_view_um))
    assert sum(p.numel() for p in model.parameters()) > 0


def test_mlflow_needs_a_tracking_uri_with_an_s3_root(s3_endpoint, monkeypatch):
    monkeypatch.setenv("LCH_HOME", f"s3://{BUCKET}/elsewhere")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(TrackingConfigError, match="set MLFLOW_TRACKING_URI") as error:
        tracking_uri()
    assert f"s3://{BUCKET}/elsewhere" in str(error.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000" and artifact_location() is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://db/mlflow")
    assert artifact_location() == f"s3://{BUCKET}/elsewhere/mlartifacts"


def test_mlflow_artifacts_go_to_the_s3_root_with_a_database_store(
    s3_endpoint, tmp_path, monkeypatch
):
    import torch

    from lch.model import AAE, AAEConfig, LCHModel
    from lch.registry import REGISTERED_MODEL, load_lch_model, log_lch_model

    home = f"s3://{BUCKET}/mlflow-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("LCH_HOME", home)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # anything going to ./mlruns would show up here
    torch.manual_seed(0)
    aae = AAE(AAEConfig(crop_size=32, latent_dim=8, width=1 / 16)).eval()
    rng = np.random.default_rng(0)
    model = LCHModel.from_aae(aae, rng.normal(size=8), 0.2, rng.normal(size=(40, 8)))
    version = log_lch_model(model, cohorts=["obj"], population_accuracy=0.9)

    assert any(p.endswith("lch_model.pt") for p in objects(join(home, "mlartifacts")))
    assert not (tmp_path / "mlruns").exists()
    loaded = load_lch_model(f"models:/{REGISTERED_MODEL}/{version}")
    crops = torch.from_numpy(rng.uniform(0, 1, (4, 1, 32, 32)).astype(np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(loaded(crops).numpy(), model(crops).numpy(), atol=1e-6)


def test_local_roots_are_unchanged(lch_home, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert lch_home.is_absolute() and cohort_dir("c") == lch_home / "cohorts" / "c"
    assert tracking_uri() == f"sqlite:///{lch_home / 'mlflow.db'}"
    assert artifact_location() == (lch_home / "mlartifacts").as_uri()


def test_missing_bucket_is_a_clear_error(s3_endpoint, source, monkeypatch):
    url = "s3://no-such-bucket/home"
    monkeypatch.setenv("LCH_HOME", url)
    with pytest.raises(StorageError, match="does not exist") as error:
        convert_cohort(source, progress=False)
    assert url in str(error.value) and s3_endpoint in str(error.value)
    with pytest.raises(StorageError, match="no-such-bucket"):
        segment_cohort(COHORT, progress=False)


def test_bad_credentials_are_a_clear_error(s3_endpoint, source, monkeypatch):
    import httpx

    url = f"s3://{BUCKET}/home"
    monkeypatch.setenv("LCH_HOME", url)
    # moto checks credentials once told to (from the next request on): our key is unknown.
    httpx.post(f"{s3_endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        with pytest.raises(StorageError, match="access denied") as error:
            convert_cohort(source, progress=False)
    finally:
        httpx.post(f"{s3_endpoint}/moto-api/reset-auth", content=b"inf").raise_for_status()
    assert url in str(error.value) and "AWS_ACCESS_KEY_ID" in str(error.value)


def test_unreachable_endpoint_is_a_clear_error(s3_endpoint, source, monkeypatch):
    url = f"s3://{BUCKET}/home"
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("LCH_HOME", url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    with pytest.raises(StorageError, match="cannot reach") as error:
        convert_cohort(source, progress=False)
    assert url in str(error.value) and dead in str(error.value)
