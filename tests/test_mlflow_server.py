"""A team MLflow tracking server over HTTP (`mlflow server`, SQLite backend, proxied artifacts):
training logs to it through ``MLFLOW_TRACKING_URI``, promotion and the Serve replicas' model
loading go through it, and nothing lands in the embedded store under ``LCH_HOME``."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from lch.model import LCHModel
from lch.paths import cohort_dir
from lch.pipelines.ingest import convert_cohort
from lch.pipelines.segment import segment_cohort
from lch.pipelines.train import TrainSettings, train
from lch.promotion import PromotionRefused, list_versions, promote
from lch.registry import REGISTERED_MODEL, load_lch_model, log_lch_model
from lch.serving.model_source import ModelSource
from lch.synth import make_cohort

from helpers import tiny_model

CROP = 64
TINY = {"latent_dim": 8, "width": 1 / 16, "batch_size": 8, "epochs": 2, "workers": 2}


@pytest.fixture
def remote_tracking(mlflow_server, tmp_path, monkeypatch):
    """This test's process (and the Ray workers it starts) tracks to the server."""
    url, root = mlflow_server
    home = tmp_path / "lch-home"
    monkeypatch.setenv("LCH_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.chdir(tmp_path)  # so that a stray ./mlruns or ./mlflow.db would be seen
    yield url, root, home
    mlflow.set_tracking_uri(None)  # later tests must not inherit the server as MLflow's default


def p_high(model: LCHModel, crops: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(crops).numpy()


def assert_nothing_local(home, cwd) -> None:
    """No embedded store: no SQLite file or artifact folder under LCH_HOME or the cwd."""
    local = [p for p in (home, cwd) for q in ("mlflow.db", "mlartifacts", "mlruns")
             if (p / q).exists()]
    assert local == []


@pytest.mark.slow
def test_training_logs_registers_promotes_and_serves_through_the_server(
    ray_session, remote_tracking, tmp_path
):
    url, root, home = remote_tracking
    source = make_cohort(tmp_path / "src", name="srv", patients=4, movies_per_patient=1,
                         frames=4, seed=5, look="plain",
                         size=(256, 256))
    assert convert_cohort(source, progress=False).count("ok") == 4
    segment_cohort("srv", crop_size=CROP, progress=False)

    summary = train(TrainSettings(cohorts=("srv",), image_every=1, **TINY))

    # The run and the version live on the server; rank 0 (a Ray worker) logged over HTTP.
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert [m.step for m in client.get_metric_history(summary.run_id, "recon")] == [1, 2]
    assert {"checkpoint", "images", "population_curve.png"} <= {
        a.path for a in client.list_artifacts(summary.run_id)
    }
    version = client.get_model_version(REGISTERED_MODEL, summary.model_version)
    assert version.run_id == summary.run_id and version.tags["cohorts"] == "srv"

    # Promotion and loading by alias, both through the server.
    assert "→ version" in promote(summary.model_version)
    (row,) = [r for r in list_versions() if r.version == summary.model_version]
    assert row.aliases == ("champion",)
    crops = torch.from_numpy(
        np.random.default_rng(0).uniform(0, 1, (6, CROP, CROP)).astype(np.float32)
    ).unsqueeze(1)
    champion = load_lch_model(f"models:/{REGISTERED_MODEL}@champion")
    np.testing.assert_allclose(p_high(champion, crops), p_high(summary.evaluation.model.cpu(),
                                                               crops), atol=1e-6)
    # A Serve replica's model source, given the server's URI as the Serve config would.
    served = ModelSource("champion", url)
    assert served.current.version == summary.model_version
    np.testing.assert_allclose(p_high(served.current.model, crops), p_high(champion, crops))

    # The weights went through the server to its artifact folder, not to the data root.
    assert any((root / "artifacts").rglob("lch_model.pt"))
    assert (home / "cohorts" / "srv").is_dir()
    assert_nothing_local(home, tmp_path)


def test_the_promotion_gate_and_a_moving_alias_over_http(remote_tracking, tmp_path):
    url, _, home = remote_tracking
    better = log_lch_model(tiny_model(1, CROP), cohorts=["x"], population_accuracy=0.95)
    worse = log_lch_model(tiny_model(2, CROP), cohorts=["x"], population_accuracy=0.90)
    # Forced: this test does not depend on which version an earlier test promoted.
    promote(better, alias="staging", force=True)
    source = ModelSource("staging", url)
    assert source.current.version == better and not source.refresh()

    with pytest.raises(PromotionRefused, match=r"0\.900, below 0\.950"):
        promote(worse, alias="staging")
    assert MlflowClient(url).get_model_version_by_alias(REGISTERED_MODEL, "staging").version \
        == better
    promote(worse, alias="staging", force=True)
    assert source.refresh() and source.current.version == worse
    tags = MlflowClient(url).get_model_version(REGISTERED_MODEL, worse).tags
    assert tags["promoted_to_staging_from"] == better
    assert tags["promoted_to_staging_forced"] == "true"
    crops = torch.zeros(2, 1, CROP, CROP)
    np.testing.assert_allclose(p_high(source.current.model, crops),
                               p_high(tiny_model(2, CROP), crops), atol=1e-6)
    assert not cohort_dir("x").exists()
    assert_nothing_local(home, tmp_path)
