"""Shared fixtures: one local Ray instance per session, sized for a 2-core machine."""

from __future__ import annotations

import os
import tempfile

import pytest

# Keep Ray, MLflow and torch from writing outside the test's folders or phoning home.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


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
