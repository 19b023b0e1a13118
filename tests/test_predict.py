"""`lch predict` on a stored cohort (the real crops of tests/data/real): every tracked cell
scored by the mean code of its frames, each patient called, the table stored and the run logged."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient

from lch.cellstore import open_cells
from lch.evaluation import cell_index, cell_means, first_of_each
from lch.manifest import load_manifest
from lch.paths import cohort_dir
from lch.pipelines.cli import main
from lch.pipelines.ingest_crops import ingest_crops
from lch.predictions import patient_calls
from lch.promotion import promote
from lch.registry import log_lch_model, use_tracking

from helpers import tiny_model
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
