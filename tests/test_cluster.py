"""Cluster mode on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``: a head with no
CPUs and two 1-CPU worker nodes on this machine): ingestion spreads over both nodes and survives
one crashing mid-way, segmentation and training spread over two nodes.

The cluster runs in a process of its own (tests/cluster_scenario.py): the session's local Ray
instance and a cluster cannot share one process, and this way the test does not depend on what
ran before it. What ran where comes back from Ray's state API; the data is checked here, on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from mlflow import MlflowClient

from lch.cellstore import open_cells
from lch.crops import DEFAULT_CROP_SIZE
from lch.manifest import load_manifest
from lch.movie_io import file_sha256
from lch.omezarr import open_movie, read_provenance
from lch.registry import REGISTERED_MODEL, load_lch_model
from lch.synth import PLAIN_PIXEL_SIZE_UM as PIXEL_SIZE_UM

from helpers import bare_cells

SCENARIO = Path(__file__).with_name("cluster_scenario.py")
COHORT = "multi"
MOVIES, FRAMES = 16, 8  # as in the scenario: 4 patients x 4 movies x 8 frames
FEATURES = ["area", "protrusion_count", "protrusion_length", "halo_intensity", "solidity"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Run the scenario once; return its work folder, report and manifest."""
    work = tmp_path_factory.mktemp("cluster")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "LCH_HOME")}
    # A session of its own: on a timeout the whole cluster's process group goes with it.
    proc = subprocess.Popen(
        [sys.executable, str(SCENARIO), str(work)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the cluster scenario hung:\n{out[-6000:]}")
    assert proc.returncode == 0, out[-6000:]
    report = json.loads((work / "report.json").read_text())
    return work / "home", report, load_manifest(work / "source" / "cohort.yaml")


def test_ingestion_used_both_nodes_and_a_crashed_node_lost_nothing(run):
    home, report, manifest = run
    attempts = report["ingest"]["attempts"]
    finished = [a for a in attempts if a["state"] == "FINISHED"]
    lost = [a for a in attempts if a["state"] != "FINISHED"]

    # One task per movie, each finished exactly once; conversions ran on both worker nodes,
    # none on the head (no CPUs). The crash came once movies had started to land.
    assert len({a["task"] for a in attempts}) == len({a["task"] for a in finished}) == MOVIES
    assert len(finished) == MOVIES
    assert {a["node"] for a in attempts} == {"survivor", "victim"}
    assert 2 <= report["ingest"]["stored_at_crash"] < MOVIES
    # The crash killed the victim's conversion in flight; Ray ran it again on the survivor, as
    # it did every conversion after the crash.
    assert lost and {a["node"] for a in lost} == {"victim"}
    assert {a["error"] for a in lost} <= {"NODE_DIED", "WORKER_DIED"}
    for attempt in lost:
        (retry,) = [a for a in finished if a["task"] == attempt["task"]]
        assert retry["node"] == "survivor" and retry["attempt"] == attempt["attempt"] + 1
    # "skipped" would mean the lost attempt had committed its store before dying: also right.
    results = report["ingest"]["results"]
    assert sorted(results) == sorted(m.id for m in manifest.movies)
    assert set(results.values()) <= {"ok", "skipped"} and "ok" in results.values()

    # On disk: every movie exactly once, committed, nothing written aside left behind.
    movies = home / "cohorts" / COHORT / "movies"
    assert sorted(p.name for p in movies.iterdir()) == sorted(
        f"{m.id}.ome.zarr" for m in manifest.movies
    )
    for entry in manifest.movies:
        source, store = manifest.source_path(entry), movies / f"{entry.id}.ome.zarr"
        provenance = read_provenance(store)
        assert provenance["source_sha256"] == file_sha256(source)
        assert (provenance["movie"], provenance["patient"]) == (entry.id, entry.patient)
        assert provenance["frames"] == FRAMES
        np.testing.assert_array_equal(open_movie(store)[:, 0], tifffile.imread(source))
    stored = yaml.safe_load((home / "cohorts" / COHORT / "manifest.yaml").read_text())
    assert sorted(m["id"] for m in stored["movies"]) == sorted(m.id for m in manifest.movies)


def test_segmentation_spread_over_two_nodes_and_matches_the_bare_function(run):
    home, report, manifest = run
    segment = report["segment"]
    # Stage B ran after the crash, with a replacement node: one actor on each worker node.
    assert sorted(segment["actors"]) == ["replacement", "survivor"]
    assert segment["frames"] == MOVIES * FRAMES
    assert not segment["movies_failed"] and not segment["frames_skipped"]

    table, crops = open_cells(home / "cohorts" / COHORT)
    assert len(table) == crops.shape[0] == segment["cells_kept"] > MOVIES
    np.testing.assert_array_equal(table["crop_index"], np.arange(len(table)))
    assert set(table["movie"]) == {m.id for m in manifest.movies}

    # One movie against the segmentation function called here, frame by frame.
    movie = manifest.movies[0].id
    store = home / "cohorts" / COHORT / "movies" / f"{movie}.ome.zarr"
    expected, _ = bare_cells({movie: store}, DEFAULT_CROP_SIZE, pixel_size_um=PIXEL_SIZE_UM)
    assert len(expected) > FRAMES
    rows = table[table["movie"] == movie]
    np.testing.assert_allclose(rows[FEATURES].to_numpy(float), expected[FEATURES].to_numpy(float))


def test_training_spread_its_workers_over_two_nodes_and_registered_the_model(run):
    home, report, _ = run
    trained = report["train"]
    assert sorted(trained["workers"]) == ["replacement", "survivor"]

    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow_run = client.get_run(trained["run_id"])
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.params["world_size"] == "2"
    assert [m.step for m in client.get_metric_history(trained["run_id"], "recon")] == [1, 2]
    version = client.get_model_version(REGISTERED_MODEL, trained["model_version"])
    assert version.run_id == trained["run_id"] and version.tags["cohorts"] == COHORT

    model = load_lch_model(f"models:/{REGISTERED_MODEL}/{trained['model_version']}", uri)
    crops = torch.from_numpy(open_cells(home / "cohorts" / COHORT)[1][:8]).unsqueeze(1)
    with torch.no_grad():
        p_high = model(crops).numpy()
    assert p_high.shape == (8,) and ((0 <= p_high) & (p_high <= 1)).all()
