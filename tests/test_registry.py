"""Registering and loading `lch-aae` versions in a real MLflow SQLite store under LCH_HOME."""

from __future__ import annotations

import os

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from lch.mlflow_store import use_tracking
from lch.model import LCHModel
from lch.registry import (
    POPULATION_METRIC_TAG,
    REGISTERED_MODEL,
    ModelNotFound,
    load_lch_model,
    log_lch_model,
)

from helpers import tiny_model

CROP = 32


def p_high(model: LCHModel, crops: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(crops).unsqueeze(1)).numpy()


@pytest.fixture
def store(lch_home, tmp_path, monkeypatch):
    """The embedded store of a fresh LCH_HOME, run from a clean working directory."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return lch_home


@pytest.fixture
def crops():
    return np.random.default_rng(0).uniform(0, 1, (6, CROP, CROP)).astype(np.float32)


def test_versions_register_with_tags_and_load_by_version_alias_and_pyfunc(store, crops):
    first, second = tiny_model(1, CROP), tiny_model(2, CROP)
    v1 = log_lch_model(first, cohorts=["a", "b"], population_accuracy=0.9,
                       tags={"heldout_cell_auc": "0.81"})
    v2 = log_lch_model(second, cohorts=["a"], population_accuracy=0.975)
    assert (v1, v2) == ("1", "2")

    client = MlflowClient()
    tags = client.get_model_version(REGISTERED_MODEL, v1).tags
    assert tags["cohorts"] == "a,b" and tags["crop_size"] == str(CROP)
    assert tags["latent_dim"] == "8" and tags["heldout_cell_auc"] == "0.81"
    assert float(tags[POPULATION_METRIC_TAG]) == 0.9
    assert tags["run_id"] == client.get_model_version(REGISTERED_MODEL, v1).run_id

    np.testing.assert_allclose(
        p_high(load_lch_model(f"models:/{REGISTERED_MODEL}/1"), crops), p_high(first, crops),
        atol=1e-7,
    )
    client.set_registered_model_alias(REGISTERED_MODEL, "champion", v2)
    champion = load_lch_model(f"models:/{REGISTERED_MODEL}@champion")
    np.testing.assert_allclose(p_high(champion, crops), p_high(second, crops), atol=1e-7)
    assert not np.allclose(p_high(first, crops), p_high(second, crops))

    pyfunc = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}/2")
    np.testing.assert_allclose(pyfunc.predict(crops), p_high(second, crops), atol=1e-7)
    inputs = pyfunc.metadata.get_input_schema().inputs[0]
    assert inputs.shape == (-1, CROP, CROP) and inputs.type == np.dtype(np.float32)
    with pytest.raises(Exception, match="shape"):
        pyfunc.predict(crops[:, :16, :16])

    # Everything lives under LCH_HOME; nothing in the working directory.
    assert (store / "mlflow.db").is_file() and any((store / "mlartifacts").rglob("lch_model.pt"))
    assert os.listdir(".") == []


def test_logs_into_the_active_run_without_ending_it(store):
    use_tracking()
    with mlflow.start_run() as run:
        version = log_lch_model(tiny_model(3, CROP), cohorts=["c"], population_accuracy=1.0)
        assert mlflow.active_run().info.run_id == run.info.run_id
    assert MlflowClient().get_model_version(REGISTERED_MODEL, version).run_id == run.info.run_id


def test_mlflow_tracking_uri_wins_and_lch_home_still_moves(lch_home, tmp_path, monkeypatch):
    elsewhere = tmp_path / "team" / "mlflow.db"
    elsewhere.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere}")
    log_lch_model(tiny_model(4, CROP), cohorts=["d"], population_accuracy=0.5)
    assert elsewhere.is_file() and not (lch_home / "mlflow.db").exists()

    # MLflow's set_tracking_uri exports MLFLOW_TRACKING_URI; use_tracking must not leave that
    # behind, or a new LCH_HOME would keep writing to the old store.
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    use_tracking()
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("LCH_HOME", str(tmp_path / "second-home"))
    assert log_lch_model(tiny_model(5, CROP), cohorts=["e"], population_accuracy=0.5) == "1"
    assert (tmp_path / "second-home" / "mlflow.db").is_file()


def test_loads_from_the_store_it_is_given_whatever_mlflow_points_at(
    store, crops, tmp_path, monkeypatch
):
    model = tiny_model(4, CROP)
    log_lch_model(model, cohorts=["a"], population_accuracy=0.9)
    MlflowClient().set_registered_model_alias(REGISTERED_MODEL, "champion", "1")
    ours = mlflow.get_tracking_uri()
    # MLflow's own models:/ resolution asks the process-wide registry (here: elsewhere).
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    for uri in (f"models:/{REGISTERED_MODEL}/1", f"models:/{REGISTERED_MODEL}@champion"):
        np.testing.assert_allclose(
            p_high(load_lch_model(uri, tracking_uri=ours), crops), p_high(model, crops),
            atol=1e-7,
        )
    with pytest.raises(ValueError, match="expected models:/NAME/VERSION"):
        load_lch_model(f"runs:/{REGISTERED_MODEL}", tracking_uri=ours)


def test_an_alias_or_version_nobody_holds_is_named_in_the_error(store):
    log_lch_model(tiny_model(5, CROP), cohorts=["a"], population_accuracy=0.9)
    with pytest.raises(ModelNotFound, match=r"no version of lch-aae holds the alias 'champion'"
                                            r".*lch promote VERSION"):
        load_lch_model(f"models:/{REGISTERED_MODEL}@champion")
    with pytest.raises(ModelNotFound, match=r"lch-aae has no version 7"):
        load_lch_model(f"models:/{REGISTERED_MODEL}/7")
