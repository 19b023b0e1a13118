"""`lch predict` on stored cohorts: the real crops of tests/data/real (every tracked cell scored
by the mean code of its frames, each patient called, the table stored and the run logged), and a
labelled synthetic cohort whose held-out patients a trained model must call right."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient

from lch.cellstore import open_cells
from lch.classify import fit_linear_classifier
from lch.evaluation import cell_index, cell_means, first_of_each
from lch.manifest import load_manifest
from lch.mlflow_store import use_tracking
from lch.model import LCHModel
from lch.paths import cohort_dir
from lch.pipelines.cli import main
from lch.pipelines.ingest import convert_cohort
from lch.pipelines.ingest_crops import ingest_crops
from lch.pipelines.segment import segment_cohort
from lch.predictions import patient_calls
from lch.promotion import promote
from lch.registry import log_lch_model
from lch.synth import make_cohort
from lch.training import load_cells

from helpers import tiny_model, train_small_aae
from real_cells import PIXEL_SIZE_UM, REAL

pytestmark = pytest.mark.slow
LABELS = {"m405": "high", "m634": "high", "m610": "low", "m597": "low", "m528": "low"}


@pytest.fixture(scope="module")
def stored(ray_session, tmp_path_factory):
    """The real crops ingested as cohort "openlch" and an untrained model as the champion."""
    folder = tmp_path_factory.mktemp("predict")
    shutil.copytree(REAL, folder / "crops")
    manifest = folder / "cohort.yaml"
    manifest.write_text(yaml.safe_dump({"cohort": "openlch", "crops": {
        "folder": "crops", "pixel_size_um": PIXEL_SIZE_UM, "labels": LABELS}}))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LCH_HOME", str(folder / "home"))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        ingest_crops(load_manifest(manifest), progress=False)
        use_tracking()
        model = tiny_model(3, 64)
        promote(log_lch_model(model, cohorts=["openlch"], population_accuracy=0.5))
        yield folder / "home", model


def test_every_tracked_cell_is_scored_and_every_patient_called(stored, capsys):
    home, model = stored
    assert main(["predict", "--cohort", "openlch", "--quiet"]) == 0
    out = capsys.readouterr().out
    path = cohort_dir("openlch", home) / "predictions" / "1.parquet"
    assert str(path) in out and "labelled patients called right" in out
    cells = pd.read_parquet(path)
    assert {"cohort", "movie", "patient", "track_id", "p_high", "score",
            "model_version"} <= set(cells.columns)
    table, crops = open_cells(cohort_dir("openlch", home))
    assert len(cells) == table["track_id"].nunique() == len(table) - 2  # two 2-frame tracks
    # Each cell: the classifier on the mean code of its frames.
    cell = cell_index(table, by=("track_id",))
    with torch.no_grad():
        codes = model.encode(torch.from_numpy(np.asarray(crops[:]))[:, None]).numpy()
        expected = model.classify_latent(torch.from_numpy(cell_means(codes, cell)).float())
    np.testing.assert_allclose(cells["p_high"], expected.numpy(), atol=1e-5)
    assert (cells["track_id"].to_numpy() == first_of_each(table["track_id"].to_numpy(),
                                                           cell)).all()
    assert (cells["model_version"] == "1").all()
    np.testing.assert_allclose(cells["p_high"], 1 / (1 + np.exp(-cells["score"])))
    # The calls: one per patient from its distinct cells, none reaching 20 here.
    calls = patient_calls(cells)
    assert calls["cells"].sum() == len(cells) and not calls["reaches_minimum"].any()
    m610 = calls.set_index("patient").loc["m610"]
    assert m610["ci_low"] <= m610["p_high"] <= m610["ci_high"]
    assert m610["correct"] == (m610["call"] == "low")
    assert calls.set_index("patient").loc["m116", "correct"] is None
    # The evaluation run, tagged with the version and the cohort.
    runs = MlflowClient().search_runs(
        [r.experiment_id for r in MlflowClient().search_experiments()],
        "tags.`lch.kind` = 'prediction'")
    assert len(runs) == 1 and runs[0].data.tags["lch.model_version"] == "1"
    assert runs[0].data.tags["lch.cohort"] == "openlch"

    # Again with the same model: nothing recomputed, unless forced.
    stamp = path.stat().st_mtime_ns
    assert main(["predict", "--cohort", "openlch", "--model", "1", "--quiet"]) == 0
    assert "already stored" in capsys.readouterr().out and path.stat().st_mtime_ns == stamp
    assert main(["predict", "--cohort", "openlch", "--force", "--quiet"]) == 0
    assert path.stat().st_mtime_ns != stamp


@pytest.mark.parametrize(("args", "words"), [
    (["--cohort", "nope"], "cohort 'nope': not found"),
    (["--cohort", "openlch", "--model", "models:/lch-aae@nobody"], "no such version or alias"),
    (["--cohort", "openlch", "--model", "7"], "no such version or alias"),
    (["--cohort", "openlch", "--model", "../v1"], "expected a version number"),
])
def test_bad_input_is_a_clear_error(stored, capsys, args, words):
    assert main(["predict", *args, "--quiet"]) == 2
    assert words in capsys.readouterr().err


# ---------------------------------------------------------------- a trained model's calls

TRAIN_PATIENTS = ["p00", "p01", "p02", "p03", "p04", "p05"]  # classes alternate: 3 high, 3 low
HELD_OUT = ["p06", "p07", "p08", "p09"]
STEPS = 400


@pytest.fixture(scope="module")
def labelled(ray_session, single_thread, tmp_path_factory):
    """Ten synthetic patients ingested and segmented; a model trained on the first six (the
    AAE on their crops, the LDA on their tracked cells) registered as the champion."""
    folder = tmp_path_factory.mktemp("labelled")
    manifest = make_cohort(folder / "source", name="ward", patients=10, movies_per_patient=2,
                           frames=4, seed=21, look="plain", size=(256, 256))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LCH_HOME", str(folder / "home"))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert convert_cohort(manifest, progress=False).count("ok") == 20
        segment_cohort("ward", crop_size=64, progress=False)
        cells = load_cells(["ward"])
        table, crops = open_cells(cohort_dir("ward"))
        train_rows = table["patient"].isin(TRAIN_PATIENTS).to_numpy()
        x = np.asarray(crops[:])[train_rows]
        aae = train_small_aae(x, STEPS, cells.field_of_view_um)
        with torch.no_grad():
            codes = aae.encode(torch.from_numpy(x[:, None])).numpy()
        cell = cell_index(table[train_rows], by=("track_id",))
        means = cell_means(codes, cell)
        weight, bias, _ = fit_linear_classifier(
            means, first_of_each(table.loc[train_rows, "label"].to_numpy(), cell))
        use_tracking()
        promote(log_lch_model(LCHModel.from_aae(aae, weight, bias, means), cohorts=["ward"],
                              population_accuracy=1.0))
        yield folder / "home"


def test_a_trained_model_calls_every_held_out_patient_right(labelled, capsys):
    assert main(["predict", "--cohort", "ward", "--quiet"]) == 0
    print(capsys.readouterr().out)
    cells = pd.read_parquet(cohort_dir("ward", labelled) / "predictions" / "1.parquet")
    calls = patient_calls(cells).set_index("patient")
    held_out = calls.loc[HELD_OUT]
    assert (held_out["cells"] >= 20).all() and held_out["reaches_minimum"].all()
    assert held_out["correct"].all(), held_out
    # Not by a hair: each held-out call's bootstrap interval over its 20 cells excludes 0.5.
    assert ((held_out["ci_low"] > 0.5) | (held_out["ci_high"] < 0.5)).all(), held_out
