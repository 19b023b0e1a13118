"""`lch train` on a real local Ray (2 CPU workers) and a real MLflow SQLite store: bad input
fails before training, a run registers a loadable version, the same seed tracked on a team
MLflow server trains the same weights, a failed worker resumes."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import ray
import torch
import zarr
from mlflow import MlflowClient

from lch.cellstore import FRAME_CELL_SCHEMA, CellStoreWriter, open_cells
from lch.classify import cell_auc
from lch.crops import DEFAULT_FIELD_OF_VIEW_UM
from lch.evaluation import cell_index, cell_means, evaluate, first_of_each
from lch.exaggerate import DEFAULT_SIGMAS
from lch.paths import cohort_dir
from lch.pipelines.cli import main
from lch.pipelines.train import TrainSettings, build_trainer, cpus_per_worker, prepare, train
from lch.pipelines.train_data import crop_dataset
from lch.pipelines.train_loop import (
    load_trained_aae,
    reconstruction_grid,
    train_loop_per_worker,
)
from lch.promotion import list_versions, promote
from lch.registry import POPULATION_METRIC_TAG, REGISTERED_MODEL, load_lch_model
from lch.serving.model_source import ModelSource
from lch.tracking import track_cohort
from lch.training import (
    TrainingInputError,
    crop_items,
    load_cells,
    read_rows,
    row_ranges,
    split_by_patient,
)

from helpers import (
    TINY_COHORT,
    TINY_CROP,
    TINY_TRAINING,
    assert_nothing_local,
    assert_same_crops,
    copy_home,
)

CROP = TINY_CROP
TINY = TINY_TRAINING


# ---------------------------------------------------------------------------------------------
# Bad input: hand-written cell stores, no Ray, no training


def write_cells(
    home: Path, name: str, patients: list[str], labels: list[str], seed: int = 0,
    field_of_view_um: float = DEFAULT_FIELD_OF_VIEW_UM,
):
    """A cohort with one cell per (patient, label) entry and random crops."""
    rng = np.random.default_rng(seed)
    n = len(patients)
    columns = {f.name: np.zeros(n) for f in FRAME_CELL_SCHEMA if f.name != "crop_index"}
    table = pd.DataFrame(columns).assign(
        cohort=name, movie=[f"{p}-m00" for p in patients], patient=patients,
        cell_line=patients, label=labels, frame=0, cell_id=np.arange(n),
        touches_border=False, pixel_size_um=0.325,
    )
    for col in ("bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col",
                "protrusion_count"):
        table[col] = 0
    writer = CellStoreWriter(cohort_dir(name, home), CROP, field_of_view_um=field_of_view_um)
    writer.add(table, rng.uniform(0, 1, (n, CROP, CROP)).astype(np.float32))
    writer.commit(lambda cells: track_cohort(cells, {}))  # one frame: a track per cell


def balanced(n_per_patient: int, patients: dict[str, str]) -> tuple[list[str], list[str]]:
    ids = [p for p in patients for _ in range(n_per_patient)]
    return ids, [patients[p] for p in ids]


FOUR = {"h1": "high", "h2": "high", "l1": "low", "l2": "low"}


@pytest.mark.parametrize(
    ("patients", "label_of", "message"),
    [
        (FOUR, {"h1": "unknown", "h2": "unknown", "l1": "unknown", "l2": "unknown"},
         "no labelled cells"),
        (FOUR, {"h1": "high", "h2": "high", "l1": "high", "l2": "high"}, "only one class"),
        ({"h1": "high", "l1": "low", "l2": "low"}, None, "too few 'high' patients"),
        (FOUR, {"h1": "high", "h2": "high", "l1": "low", "l2": "medium"}, "unknown label"),
    ],
    ids=["no-labels", "one-class", "too-few-patients", "bad-label"],
)
def test_unusable_labels_fail_before_training_naming_cohort_and_field(
    lch_home, patients, label_of, message
):
    ids, labels = balanced(5, patients)
    if label_of is not None:
        labels = [label_of[p] for p in ids]
    write_cells(lch_home, "bad", ids, labels)
    with pytest.raises(TrainingInputError, match=message) as info:
        prepare(TrainSettings(cohorts=("bad",)))
    assert "cohort(s) bad, field 'label'" in str(info.value)


def test_missing_cohort_and_missing_outputs_are_clear_errors(lch_home, capsys):
    with pytest.raises(TrainingInputError, match=r"cohort 'nope': not found"):
        load_cells(["nope"])
    (lch_home / "cohorts" / "empty").mkdir(parents=True)
    with pytest.raises(TrainingInputError, match=r"cohort 'empty': .*no segmentation outputs"):
        load_cells(["empty"])
    with pytest.raises(TrainingInputError, match="no cohort given"):
        load_cells([])
    # The CLI turns it into a message and exit status 2, without a traceback or a Ray start.
    assert main(["train", "--cohort", "nope"]) == 2
    assert "error: cohort 'nope': not found" in capsys.readouterr().err


def test_settings_and_size_checks(lch_home):
    ids, labels = balanced(5, FOUR)
    write_cells(lch_home, "small", ids, labels)
    write_cells(lch_home, "other", ids, labels)
    with pytest.raises(TrainingInputError, match=r"10 cells .* fewer than one step of 100"):
        prepare(TrainSettings(cohorts=("small",)))  # 2 workers x 50 crops
    with pytest.raises(TrainingInputError, match="--batch-size must be >= 2"):
        prepare(TrainSettings(cohorts=("small",), batch_size=1))
    cells = load_cells(["small", "other", "small"])
    assert cells.cohorts == ("small", "other") and len(cells.table) == 40


def test_split_keeps_held_out_patients_away_from_the_autoencoder(lch_home):
    ids, labels = balanced(4, FOUR)
    ids, labels = ids + ["u1"] * 3, labels + ["unknown"] * 3
    write_cells(lch_home, "split", ids, labels)
    cells = load_cells(["split"])
    split = split_by_patient(cells, seed=1)
    patients = cells.table["patient"].to_numpy()
    assert len(split.test_patients) == 2
    assert {labels[ids.index(p)] for p in split.test_patients} == {"high", "low"}
    assert not set(patients[split.autoencoder]) & set(split.test_patients)
    assert set(patients[split.test]) == set(split.test_patients)
    # Unknown-label cells train the autoencoder but never the classifier.
    assert "u1" in set(patients[split.autoencoder]) and "u1" not in set(patients[split.train])
    assert split.autoencoder.sum() == 8 + 3 and split.train.sum() == 8


def test_row_ranges_items_and_reads(lch_home):
    assert row_ranges(np.array([0, 1, 2, 5, 6, 7, 8, 9]), 4) == [(0, 3), (5, 8), (8, 10)]
    assert row_ranges(np.array([], int), 4) == []
    ids, labels = balanced(10, FOUR)
    write_cells(lch_home, "rows", ids, labels)
    cells = load_cells(["rows"])
    mask = np.zeros(len(cells.table), bool)
    mask[[1, 2, 3, 4, 20, 21, 39]] = True
    items = crop_items(cells, mask, max_rows=4)
    assert [(i["start"], i["stop"]) for i in items] == [(1, 4), (4, 5), (20, 22), (39, 40)]
    _, crops = open_cells(cohort_dir("rows"))
    index = np.array([21, 3, 39])
    np.testing.assert_array_equal(read_rows(cells, index), crops[:][index])


def test_cpu_share_leaves_one_cpu_for_the_data_reads():
    assert cpus_per_worker(2, 2, gpu=False) == 0.5  # the 2-CPU deadlock case
    assert cpus_per_worker(4, 2, gpu=False) == 0.25
    assert cpus_per_worker(3, 16, gpu=False) == 5
    assert cpus_per_worker(1, 16, gpu=True) == 2


def test_reconstruction_grid_puts_crops_over_reconstructions():
    crops = np.zeros((3, 8, 8), np.float32)
    recons = np.ones((3, 8, 8), np.float32)
    grid = reconstruction_grid(crops, recons, pad=2)
    assert grid.shape == (2 * 8 + 6, 3 * 10 + 2) and grid.dtype == np.uint8
    assert (grid[2:10, 2:10] == 0).all() and (grid[12:20, 2:10] == 255).all()


# ---------------------------------------------------------------------------------------------
# Real training


@pytest.fixture(scope="module")
def trained_home(tiny_cohort, tmp_path_factory):
    """The tiny segmented cohort (conftest's tiny_cohort) in a data root of its own."""
    home = copy_home(tiny_cohort, tmp_path_factory.mktemp("train") / "lch-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LCH_HOME", str(home))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield home


@pytest.mark.parametrize("in_memory", [True, False], ids=["cached", "streamed"])
def test_dataset_holds_exactly_the_autoencoder_crops(trained_home, in_memory):
    cells, split = prepare(TrainSettings(cohorts=(TINY_COHORT,), **TINY))
    rows = crop_dataset(cells, split.autoencoder, seed=0, in_memory=in_memory).take_all()
    got = np.stack([r["crop"] for r in rows])
    expected = read_rows(cells, np.flatnonzero(split.autoencoder))
    assert expected.shape == (split.autoencoder.sum(), CROP, CROP)
    assert_same_crops(got, expected)
    # The same seed, the same order: blocks follow the work items, not the reads' finishing order.
    again = crop_dataset(cells, split.autoencoder, seed=0, in_memory=in_memory).take_all()
    np.testing.assert_array_equal(np.stack([r["crop"] for r in again]), got)


@pytest.fixture(scope="module")
def trained_run(trained_home):
    """One training run on the tiny cohort: its settings and summary."""
    settings = TrainSettings(cohorts=(TINY_COHORT,), image_every=1, **TINY)
    return settings, train(settings)


@pytest.mark.slow
def test_training_registers_a_version_that_loads_and_scores_like_the_run(trained_home,
                                                                          trained_run):
    settings, summary = trained_run
    ev = summary.evaluation
    client = MlflowClient()

    # One version, tagged for the promotion gate, with what the summary reported.
    version = client.get_model_version(REGISTERED_MODEL, summary.model_version)
    assert version.run_id == summary.run_id
    assert version.tags["cohorts"] == TINY_COHORT and version.tags["run_id"] == summary.run_id
    assert version.tags["crop_size"] == str(CROP) and version.tags["latent_dim"] == "8"
    assert float(version.tags[POPULATION_METRIC_TAG]) == pytest.approx(ev.population_at(20))
    assert list(ev.population["k"]) == [1, 5, 10, 20, 50]

    # The registered model gives the in-memory model's P(high), and its held-out AUC is the
    # one reported: encoder and classifier were registered together, not mixed up.
    loaded = load_lch_model(f"models:/{REGISTERED_MODEL}/{summary.model_version}")
    cells, split = prepare(settings)
    test_index = np.flatnonzero(split.test)
    crops = torch.from_numpy(read_rows(cells, test_index)).unsqueeze(1)
    with torch.no_grad():
        p_loaded = loaded(crops).numpy()
        p_memory = ev.model.cpu()(crops).numpy()
    np.testing.assert_allclose(p_loaded, p_memory, atol=1e-6)
    # Frame-level AUC from the frames' crops; cell-level from each track's mean code.
    y_frames = split.labels[test_index]
    assert cell_auc(p_loaded, y_frames) == pytest.approx(ev.heldout_frame_auc, abs=1e-6)
    cell = cell_index(cells.table.iloc[test_index])
    with torch.no_grad():
        means = torch.from_numpy(cell_means(loaded.encode(crops).numpy(), cell)).float()
        p_cells = loaded.classify_latent(means).numpy()
    y_cells = first_of_each(y_frames, cell)
    assert cell_auc(p_cells, y_cells) == pytest.approx(ev.heldout_cell_auc, abs=1e-5)
    assert len(ev.cells) == len(cells.table[["store", "track_id"]].drop_duplicates())
    np.testing.assert_allclose(ev.cells.loc[ev.cells["heldout"], "p_high"], p_cells, atol=1e-5)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}/{summary.model_version}")
    np.testing.assert_allclose(pyfunc.predict(crops[:5, 0].numpy()), p_memory[:5], atol=1e-6)

    # The run: parameters from rank 0, one loss value per epoch, images, figure, checkpoint.
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["aae.latent_dim"] == "8" and run.data.params["world_size"] == "2"
    assert run.data.params["test_patients"] == ",".join(summary.test_patients)
    # One training patient per class: nothing to cross-validate the shrinkage on.
    assert run.data.params["classifier_shrinkage"] == "auto" == ev.shrinkage
    history = client.get_metric_history(summary.run_id, "recon")
    assert [m.step for m in history] == [1, 2]
    assert all(0 < m.value < 1 for m in history)
    for name in ("heldout_cell_auc", "heldout_frame_auc", "cv_population_accuracy_k20",
                 "cv_population_ci_low_k20", "brier_heldout_calibrated", "calibration_slope"):
        assert run.data.metrics[name] == pytest.approx(ev.metrics()[name])
    artifacts = {a.path for a in client.list_artifacts(summary.run_id)}
    assert {"population_curve.png", "reliability.png", "population.json",
            "cross_validation_by_line.json", "cells.json", "checkpoint", "images"} <= artifacts
    images = client.list_artifacts(summary.run_id, "images")
    assert sum(a.path.endswith(".png") for a in images) == 2  # epochs 1 and 2
    # The exaggeration report of held-out cells, with the trends as metrics.
    report = {a.path.split("/")[-1] for a in client.list_artifacts(summary.run_id, "exaggeration")}
    assert report == {"exaggeration_montage.png", "exaggeration_morphology.csv",
                      "exaggeration_spearman.csv", "exaggeration_bounds.csv",
                      "exaggeration_hypotheses.csv", "exaggeration_trends.png"}
    trends = pd.read_csv(client.download_artifacts(
        summary.run_id, "exaggeration/exaggeration_spearman.csv", str(trained_home)))
    finite = trends.dropna(subset=["rho"])
    assert len(finite) >= 1
    for feature, rho in zip(finite.feature, finite.rho, strict=True):
        assert run.data.metrics[f"exaggeration_rho_{feature}"] == pytest.approx(rho)
    bounds = pd.read_csv(client.download_artifacts(
        summary.run_id, "exaggeration/exaggeration_bounds.csv", str(trained_home)))
    assert set(bounds.feature) == {"protrusion_reach", "halo_intensity", "body_area",
                                   "body_contrast"}
    for row in bounds.dropna(subset=["ratio"]).itertuples():
        assert run.data.metrics[f"exaggeration_bound_ratio_{row.feature}"] == pytest.approx(
            row.ratio)
    for row in bounds.itertuples():
        logged = run.data.metrics.get(f"reconstruction_fidelity_{row.feature}")
        assert logged == pytest.approx(row.fidelity) if np.isfinite(row.fidelity) else not logged
    # The criterion's margin, shown and allowed by the cells' bounds.
    planted, controls = bounds[bounds.role == "planted"], bounds[bounds.role == "control"]
    for name, column in (("exaggeration_control_margin", "rho"),
                         ("exaggeration_control_margin_allowed", "bound")):
        margin = planted[column].abs().min() - controls[column].abs().max()
        logged = run.data.metrics.get(name)
        assert logged == pytest.approx(margin) if np.isfinite(margin) else not logged
    # The strongest trends tested on the held-out real cells, each with its AUC logged.
    hypotheses = pd.read_csv(client.download_artifacts(
        summary.run_id, "exaggeration/exaggeration_hypotheses.csv", str(trained_home)))
    strongest = finite.iloc[np.argsort(-finite.rho.abs().to_numpy(), kind="stable")]
    assert list(hypotheses.feature) == [f for f in strongest.feature
                                        if f != "probability_reencoded"][:4]
    for row in hypotheses.dropna(subset=["auc"]).itertuples():
        assert row.ci_low <= row.auc <= row.ci_high
        assert run.data.metrics[f"real_cell_auc_{row.feature}"] == pytest.approx(row.auc)
    morphology = pd.read_csv(client.download_artifacts(
        summary.run_id, "exaggeration/exaggeration_morphology.csv", str(trained_home)))
    assert len(morphology) == settings.report_cells * len(DEFAULT_SIGMAS)
    assert set(morphology.sigma) == set(DEFAULT_SIGMAS)
    held_out = set(summary.test_patients)
    assert {cell.split(" ")[0] for cell in morphology.cell} <= held_out
    assert summary.samples_per_s > 0 and "population of 20 distinct cells" in summary.format()
    # Four-frame movies: every track is short, and no line has 20 cells; the summary says so.
    assert ev.cells["short_track"].all() and "warning: all" in summary.format()
    assert "note: k = 20: 0% of lines have 20 cells" in summary.format()
    # Nothing went to ./mlruns or ~/ray_results: all under the data root.
    assert (trained_home / "mlartifacts").is_dir() and (trained_home / "ray_results").is_dir()


@pytest.mark.slow
def test_lch_exaggerate_reports_a_stored_cohort_and_tests_its_trends_on_its_cells(
    trained_run, tmp_path, capsys
):
    version = trained_run[1].model_version
    out = tmp_path / "report"
    assert main(["exaggerate", "--model", f"models:/{REGISTERED_MODEL}/{version}",
                 "--cohort", TINY_COHORT, "--cells", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {
        "exaggeration_montage.png", "exaggeration_morphology.csv", "exaggeration_spearman.csv",
        "exaggeration_trends.png", "exaggeration_hypotheses.csv", "exaggeration_bounds.csv"}
    hypotheses = pd.read_csv(out / "exaggeration_hypotheses.csv")
    # Every labelled cell of the tiny cohort measured (fewer than REAL_CELLS), one per track.
    table, _ = open_cells(cohort_dir(TINY_COHORT))
    assert len(hypotheses) == 4 and (hypotheses["cells"] <= table["track_id"].nunique()).all()
    assert hypotheses["cells"].max() > 0.8 * table["track_id"].nunique()
    assert "the strongest trends on tiny's real cells" in printed
    # Each planted and control trend beside the bound the cohort's cells set, and the fidelity.
    bounds = pd.read_csv(out / "exaggeration_bounds.csv")
    assert list(bounds.feature) == ["protrusion_reach", "halo_intensity", "body_area",
                                    "body_contrast"]
    assert {"c", "bound", "ratio", "fidelity"} <= set(bounds.columns)
    assert "how faithfully the decoder draws" in printed


@pytest.mark.slow
def test_the_same_seed_on_a_team_server_trains_the_same_weights_and_serves_them(
    trained_home, trained_run, tiny_cohort, remote_tracking, tmp_path
):
    """The first run's settings again, tracked on a team MLflow server (conftest's
    ``mlflow_server``) through ``MLFLOW_TRACKING_URI``: the same weights, bit for bit (both DDP
    workers get the same crops in the same order on every run: Ray Data keeps the blocks'
    order, the local shuffles are seeded; without that two runs differed by up to 0.96 in a
    weight and in their held-out AUC), and the run, its version, promotion and a Serve
    replica's model source all go through the server, nothing to the data root."""
    settings, first = trained_run
    url, root, home = remote_tracking
    copy_home(tiny_cohort, home)

    second = train(settings)

    # The run and the version live on the server; rank 0 (a Ray worker) logged over HTTP.
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    run = client.get_run(second.run_id)
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert [m.step for m in client.get_metric_history(second.run_id, "recon")] == [1, 2]
    assert {"checkpoint", "images", "population_curve.png"} <= {
        a.path for a in client.list_artifacts(second.run_id)
    }
    version = client.get_model_version(REGISTERED_MODEL, second.model_version)
    assert version.run_id == second.run_id and version.tags["cohorts"] == TINY_COHORT

    # Promotion and loading by alias through the server: the first run's weights exactly.
    assert "→ version" in promote(second.model_version)
    (row,) = [r for r in list_versions() if r.version == second.model_version]
    assert row.aliases == ("champion",)
    champion = load_lch_model(f"models:/{REGISTERED_MODEL}@champion").state_dict()
    embedded = f"sqlite:///{trained_home / 'mlflow.db'}"
    weights = load_lch_model(f"models:/{REGISTERED_MODEL}/{first.model_version}",
                             embedded).state_dict()
    assert weights.keys() == champion.keys()
    for name, value in weights.items():
        torch.testing.assert_close(champion[name], value, rtol=0, atol=0, msg=name)
    assert second.evaluation.heldout_cell_auc == first.evaluation.heldout_cell_auc
    # A Serve replica's model source, given the server's URI as the Serve config would.
    served = ModelSource("champion", url)
    assert served.current.version == second.model_version
    for name, value in served.current.model.state_dict().items():
        torch.testing.assert_close(value, champion[name], rtol=0, atol=0, msg=name)

    # The weights went through the server to its artifact folder, not to the data root.
    assert any((root / "artifacts").rglob("lch_model.pt"))
    assert (home / "cohorts" / TINY_COHORT).is_dir()
    assert_nothing_local(home, tmp_path)


def fail_once_after_first_checkpoint(config: dict, marker: str, log: str) -> None:
    """The production loop, except that world rank 0 dies right after its first report."""
    import ray.train

    report = ray.train.report

    def report_then_fail(metrics, checkpoint=None, **kwargs):
        report(metrics, checkpoint=checkpoint, **kwargs)
        rank = ray.train.get_context().get_world_rank()
        with open(log, "a") as f:
            f.write(f"{rank} {metrics['epoch']} {metrics['first_epoch']}\n")
        if rank == 0 and not os.path.exists(marker):
            Path(marker).touch()
            raise RuntimeError("planned worker failure after the first checkpoint")

    ray.train.report = report_then_fail
    try:
        train_loop_per_worker(config)
    finally:
        ray.train.report = report


@pytest.mark.slow
def test_a_failed_worker_resumes_from_the_last_checkpoint(trained_home, tmp_path):
    settings = TrainSettings(cohorts=(TINY_COHORT,), max_failures=1, **{**TINY, "epochs": 3})
    cells, split = prepare(settings)
    marker, log = tmp_path / "failed-once", tmp_path / "reports.txt"
    loop = functools.partial(fail_once_after_first_checkpoint, marker=str(marker), log=str(log))
    trainer = build_trainer(
        settings, crop_dataset(cells, split.autoencoder), CROP,
        storage_path=tmp_path / "ray_results", name="resume", train_loop=loop,
    )
    # Train's workers cannot import this test module: ship its functions by value.
    this_module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(this_module)
    try:
        result = trainer.fit()
    finally:
        ray.cloudpickle.unregister_pickle_by_value(this_module)

    assert marker.exists()
    rank0 = [line.split() for line in log.read_text().splitlines() if line.startswith("0 ")]
    # Epoch 1, the failure, then epochs 2 and 3 in a new worker group that started at epoch 2:
    # from the checkpoint, not from scratch.
    assert [(int(e), int(first)) for _, e, first in rank0] == [(1, 1), (2, 2), (3, 2)]
    assert result.metrics["epoch"] == 3 and result.metrics["first_epoch"] == 2
    per_epoch = (int(split.autoencoder.sum()) // 2 // 8) * 8 * 2  # 2 equal shards, whole batches
    assert result.metrics["total_samples"] == 3 * per_epoch
    config = settings.aae_config(CROP, cells.field_of_view_um)
    aae = load_trained_aae(result.checkpoint, config)
    # The last checkpoint holds weights trained on after the first one was restored.
    first = sorted((tmp_path / "ray_results" / "resume").glob("checkpoint_*"))[0]
    restored = load_trained_aae(ray.train.Checkpoint(str(first)), config)
    assert result.checkpoint.path != str(first)
    assert any(not torch.equal(a, b) for a, b in zip(aae.state_dict().values(),
                                                     restored.state_dict().values(), strict=True))
    ev = evaluate(aae, cells, split)
    held_tracks = cells.table.loc[split.test, ["store", "track_id"]].drop_duplicates()
    assert ev.cells["heldout"].sum() == len(held_tracks)


def test_a_model_learns_crops_of_one_field_of_view(lch_home):
    ids, labels = balanced(3, FOUR)
    write_cells(lch_home, "wide", ids, labels, field_of_view_um=83.2)
    assert load_cells(["wide"]).field_of_view_um == 83.2
    write_cells(lch_home, "narrow", ids, labels, field_of_view_um=41.6)
    with pytest.raises(TrainingInputError, match="different fields of view"):
        load_cells(["wide", "narrow"])
    crops = zarr.open_array(cohort_dir("narrow", lch_home) / "crops.zarr", mode="r+")
    del crops.attrs["field_of_view_um"]
    with pytest.raises(TrainingInputError, match="narrow.*lch segment"):
        load_cells(["narrow"])
