"""Shared fixtures: one local Ray instance per session, sized for a 2-core machine."""

from __future__ import annotations

import os
import tempfile

# One set of CPU kernels on every machine with AVX2, set before torch loads: the small models the
# tests train, and the trends asserted on them, must not move with the machine's vector width.
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import pytest  # noqa: E402

import lch.pipelines  # noqa: E402, F401  (before Ray is imported: local Ray stays on loopback)
from lch.pipelines.runtime import ensure_local_token, quiet_environment  # noqa: E402

# Keep Ray, MLflow and torch from writing outside the test's folders or phoning home.
quiet_environment()
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# One Ray token for the session, as an operator's RAY_AUTH_TOKEN_PATH: the session's Ray, the
# clusters tests start and the clients they use all authenticate with it.
ensure_local_token()


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by the whole session (start-up costs seconds)."""
    import ray

    from lch.pipelines.runtime import init_ray

    # Ray's temp dir holds unix sockets: the path must stay short.
    temp_dir = tempfile.mkdtemp(prefix="lchray", dir="/tmp")
    init_ray(_temp_dir=temp_dir)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module: tiny ops on a shared 2-core machine mostly wait on each
    other's threads, and one thread also fixes the order of float reductions."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def lch_home(tmp_path, monkeypatch):
    """A fresh data root for one test."""
    home = tmp_path / "lch-home"
    monkeypatch.setenv("LCH_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1: SQLite backend, artifacts proxied by the
    server to a local folder, as a team server would run (see infra/mlflow/).

    Yields ``(url, root)``: the tracking URI and the folder holding ``mlflow.db`` and
    ``artifacts/``.
    """
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    from lch.pipelines.runtime import free_port

    from helpers import stop_session

    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        # Clients read and write artifacts through the server (mlflow-artifacts:/ URIs),
        # never the folder itself: the usual setup with an object store behind it.
        "--artifacts-destination", str(root / "artifacts"),
    ]
    # As infra/ runs it: no server-side job runner (LCH submits no MLflow jobs), whose queue
    # consumers would poll the database, about half a core, for as long as the server lives.
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (root / "server.log").open("w")
    # A session of its own: the server's worker processes stop with it.
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=root)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).text.strip() == "OK":
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up:\n{(root / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url, root
    finally:
        stop_session(proc)
        log.close()



@pytest.fixture
def remote_tracking(mlflow_server, tmp_path, monkeypatch):
    """This test's process (and the Ray workers it starts) tracks to the session's MLflow server.

    Yields ``(url, root, home)``: the server's URI and folder (:func:`mlflow_server`) and a
    fresh, empty ``LCH_HOME``. The working directory is ``tmp_path``, so that a stray
    ``./mlruns`` or ``./mlflow.db`` would be seen.
    """
    import mlflow

    url, root = mlflow_server
    home = tmp_path / "lch-home"
    monkeypatch.setenv("LCH_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.chdir(tmp_path)
    yield url, root, home
    mlflow.set_tracking_uri(None)  # later tests must not inherit the server as MLflow's default


@pytest.fixture(scope="session")
def tiny_cohort(ray_session, tmp_path_factory):
    """A data root holding cohort "tiny" (4 patients, one 4-frame movie each) ingested and
    segmented into 64-px crops, built once per run; tests copy it (``helpers.copy_home``).

    The xdist workers share one copy: the first builds it under the run's temp folder while the
    others wait on its lock, as pytest-xdist's docs do for session data.
    """
    from filelock import FileLock

    from helpers import TINY_COHORT

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder, above each worker's own
    home = shared / "tiny-cohort" / "lch-home"
    with FileLock(str(shared / "tiny-cohort.lock")):
        if not (home / "cohorts" / TINY_COHORT / "cells.parquet").exists():
            _build_tiny_cohort(home, shared / "tiny-cohort" / "source")
    return home


def _build_tiny_cohort(home, source):
    from lch.pipelines.ingest import convert_cohort
    from lch.pipelines.segment import segment_cohort
    from lch.synth import make_cohort

    from helpers import TINY_COHORT, TINY_CROP

    manifest = make_cohort(source, name=TINY_COHORT, patients=4, movies_per_patient=1, frames=4,
                           seed=5, look="plain", size=(256, 256))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LCH_HOME", str(home))
        assert convert_cohort(manifest, progress=False).count("ok") == 4
        segment_cohort(TINY_COHORT, crop_size=TINY_CROP, progress=False)

