"""`lch train`: the AAE on Ray Train (DDP), then the patient-held-out classifier, in MLflow.

Flow (ARCHITECTURE.md, step 2):

1. Open the cohorts' cells and split them by patient, before anything starts (bad input fails
   here with a message naming the cohort or field).
2. Stream the autoencoder's crops (never a held-out patient's) as a Ray Dataset
   (:mod:`lch.pipelines.train_data`).
3. ``TorchTrainer`` runs the loop of :mod:`lch.pipelines.train_loop` on N workers: DDP through
   ``prepare_model``, a checkpoint every epoch, resumption from the last one after a failure
   (``FailureConfig``). World rank 0 logs parameters, per-epoch losses, a grid of crops and
   reconstructions, and the final checkpoint to the MLflow run the driver created.
4. The driver loads the final weights, fits the classifier on training patients' codes, scores
   the held-out patients (cell ROC AUC; population accuracy/AUC for k = 1, 5, 10, 20, 50) and
   registers the whole model as one version of ``lch-aae``.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import mlflow
import numpy as np
import ray
import ray.train
from mlflow import MlflowClient
from mlflow.entities import Param
from ray.data import ExecutionOptions
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from tqdm.auto import tqdm

from lch.classify import HIGH, LOW
from lch.crops import DEFAULT_FIELD_OF_VIEW_UM
from lch.evaluation import (
    Evaluation,
    evaluate,
    plot_population_curve,
    plot_reliability,
    sigmoid,
)
from lch.exaggeration_report import REPORT_CELLS, held_out_report, write_report
from lch.mlflow_store import tracking_uri, use_tracking
from lch.model import AAEConfig
from lch.model_names import REGISTERED_MODEL
from lch.paths import join, lch_home
from lch.pipelines.runtime import cluster_cpus, init_ray
from lch.pipelines.train_data import crop_dataset
from lch.pipelines.train_loop import LOSSES, load_trained_aae, train_loop_per_worker
from lch.registry import log_lch_model
from lch.storage import pyarrow_filesystem
from lch.training import (
    CellSet,
    Split,
    TrainingInputError,
    load_cells,
    read_rows,
    split_by_patient,
)
from lch.trends import control_margin, spearman_table

# Defaults for the CPU demo: an eighth of the paper's channels, and lr 5e-4 rather than the
# paper's 2e-4, which is too slow for the few hundred steps a CPU run takes.
DEFAULT_WIDTH = 0.125
DEFAULT_LR = 5e-4
DEFAULT_EPOCHS = 30
DEFAULT_BATCH = 50  # the paper's; per worker
DEFAULT_WORKERS = 2
GPU_WORKER_CPUS = 2
# The exaggeration report logged with every run (held-out cells) goes in this artifact folder.
REPORT_FOLDER = "exaggeration"


@dataclass(frozen=True)
class TrainSettings:
    """What `lch train` was asked to do.

    Parameters
    ----------
    cohorts : tuple of str
        Cohorts to train on (their cells are pooled; patient ids are global).
    workers : int
        Ray Train workers (one per GPU with ``gpu``).
    gpu : bool
        One GPU per worker.
    epochs, batch_size, latent_dim, width, lr
        Training length, mini-batch *per worker* (DDP averages the workers' gradients, so a
        step sees ``batch_size * workers`` crops), latent dimension, channel multiplier and
        Adam learning rate (see :class:`lch.model.AAEConfig`). Per worker because batch norm
        normalises over one worker's batch, which so stays the paper's 50 at any worker count
        (one process trained at 25 separated held-out patients less well than at 50).
    seed : int
        Seed of the patient split, the weights and the population draws.
    image_every : int
        Log crops and reconstructions every this many epochs (and after the last).
    max_failures : int
        Worker-group failures to recover from (from the last checkpoint).
    n_test_per_class : int
        Patients of each class held out.
    placement_strategy : str
        How Ray places the workers: "PACK" (fewest nodes: GPUs of one machine talk fastest)
        or "SPREAD" (one per node while nodes last: CPU workers each get a node's cores).
    report_cells : int
        Held-out cells exaggerated in the run's report (half high, half low).
    """

    cohorts: tuple[str, ...]
    workers: int = DEFAULT_WORKERS
    gpu: bool = False
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH
    latent_dim: int = 56
    width: float = DEFAULT_WIDTH
    lr: float = DEFAULT_LR
    seed: int = 0
    image_every: int = 5
    max_failures: int = 2
    n_test_per_class: int = 1
    placement_strategy: str = "PACK"
    report_cells: int = REPORT_CELLS

    def aae_config(self, crop_size: int, field_of_view_um: float) -> AAEConfig:
        """Build the model's configuration: these settings, for the cohorts' crops."""
        return AAEConfig(
            crop_size=crop_size,
            latent_dim=self.latent_dim,
            width=self.width,
            lr=self.lr,
            batch_size=self.batch_size,
            field_of_view_um=field_of_view_um,
        )

    def worker_batch(self) -> int:
        """Mini-batch of one worker."""
        return self.batch_size

    def global_batch(self) -> int:
        """Crops per optimizer step, over all workers."""
        return self.batch_size * self.workers

    def check(self) -> None:
        """Raise :class:`TrainingInputError` for settings that cannot train."""
        if self.workers < 1 or self.epochs < 1:
            raise TrainingInputError(
                f"--workers and --epochs must be >= 1, got {self.workers} and {self.epochs}"
            )
        if self.batch_size < 2:
            raise TrainingInputError(
                f"--batch-size must be >= 2 (batch norm needs 2 crops), got {self.batch_size}"
            )
        if self.report_cells < 1:
            raise TrainingInputError(f"--report-cells must be >= 1, got {self.report_cells}")


@dataclass
class TrainSummary:
    """What a training run produced."""

    run_id: str
    model_version: str
    cohorts: tuple[str, ...]
    test_patients: tuple[str, ...]
    evaluation: Evaluation
    samples_per_s: float
    train_seconds: float
    total_seconds: float
    metrics: dict[str, float] = field(default_factory=dict)

    def _warnings(self) -> list[str]:
        """List what makes the figures weaker than they look: short tracks, lines short of k."""
        ev, out = self.evaluation, []
        short = int(ev.cells["short_track"].sum())
        if short == len(ev.cells):
            out.append(f"  warning: all {short} cells are tracks shorter than the segmentation's "
                       "minimum (short_track): each descriptor averages only a few frames")
        elif short:
            out.append(f"  note: {short} of {len(ev.cells)} cells are short tracks (short_track)")
        lines = ev.population["groups_reaching_k"]
        for row in ev.population[lines < 1].itertuples():
            out.append(f"  note: k = {row.k}: {row.groups_reaching_k:.0%} of lines have {row.k} "
                       "cells; the others pool all theirs")
        return out

    def _calibration(self) -> str:
        ev = self.evaluation
        brier = ev.brier
        figures = (f"Brier of every labelled cell {brier['cv_raw']:.3f} raw, "
                   f"{brier['cv_calibrated']:.3f} calibrated on the other patients; held-out "
                   f"{brier['heldout_raw']:.3f} / {brier['heldout_calibrated']:.3f}")
        if ev.calibration == (1.0, 0.0):
            return f"  P(high) not calibrated (no help to patients it was not fit on): {figures}"
        return f"  P(high) calibrated (slope {ev.calibration[0]:.3f}): {figures}"

    def format(self) -> str:
        """Write a human-readable summary: the run, held-out and cross-validated figures."""
        ev = self.evaluation
        held = ev.cells["heldout"]
        lines = [
            f"trained on {', '.join(self.cohorts)}: MLflow run {self.run_id}, "
            f"registered {REGISTERED_MODEL} version {self.model_version}",
            f"  cells (tracks): {len(ev.cells)} labelled, held-out patients "
            f"{', '.join(self.test_patients)} ({int(held.sum())} cells); every other patient "
            "scored by a classifier fit without it",
            f"  held-out cell-level ROC AUC {ev.heldout_cell_auc:.3f}, frame-level "
            f"{ev.heldout_frame_auc:.3f}; cross-validated cell-level {ev.cv_cell_auc:.3f} "
            f"(training patients in-sample {ev.train_cell_auc:.3f}; shrinkage {ev.shrinkage})",
            f"  cross-validated population of 20 distinct cells: accuracy "
            f"{ev.population_at(20):.3f} [{ev.population_at(20, 'ci_low'):.3f}, "
            f"{ev.population_at(20, 'ci_high'):.3f}], ROC AUC {ev.population_at(20, 'auc'):.3f}",
            "  population accuracy by k: "
            + ", ".join(f"{r.k}: {r.accuracy:.3f}" for r in ev.population.itertuples()),
            *self._warnings(),
            self._calibration(),
            f"  AAE training {self.train_seconds:.1f} s at {self.samples_per_s:.0f} samples/s; "
            f"total {self.total_seconds:.1f} s",
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The driver


def cpus_per_worker(workers: int, total_cpus: int, gpu: bool) -> float:
    """Logical CPUs per Train worker, leaving one CPU for Ray Data's read tasks.

    Without that CPU the dataset's tasks never get scheduled and training waits forever
    (2 workers x 1 CPU on a 2-CPU node). Below one CPU the share is rounded down to a quarter;
    a GPU worker takes at most :data:`GPU_WORKER_CPUS`.
    """
    share = (total_cpus - 1) / workers
    if share >= 1:
        # A GPU worker needs few CPUs of its own; the rest feed it (reading, decoding).
        return float(min(math.floor(share), GPU_WORKER_CPUS) if gpu else math.floor(share))
    return max(0.25, math.floor(share * 4) / 4)


def build_trainer(
    settings: TrainSettings,
    dataset: ray.data.Dataset,
    crop_size: int,
    *,
    field_of_view_um: float = DEFAULT_FIELD_OF_VIEW_UM,
    run_id: str | None = None,
    storage_path: str | Path | None = None,
    name: str | None = None,
    train_loop: Callable[[dict], None] = train_loop_per_worker,
) -> TorchTrainer:
    """Build a ``TorchTrainer`` for ``settings`` over ``dataset`` (column ``crop``).

    Parameters
    ----------
    settings : TrainSettings
    dataset : ray.data.Dataset
        The training crops, e.g. from :func:`crop_dataset`.
    crop_size : int
        Side of the crops.
    field_of_view_um : float
        What they show, in µm (recorded in the model's configuration).
    run_id : str, optional
        MLflow run that world rank 0 logs to (at :func:`lch.mlflow_store.tracking_uri`).
    storage_path : path or URL, optional
        Where Ray Train keeps checkpoints; default ``$LCH_HOME/ray_results``.
    name : str, optional
        The Ray Train run name (a folder under ``storage_path``); default from ``run_id``.
    train_loop : callable
        The per-worker function, :func:`train_loop_per_worker` unless wrapped.
    """
    settings.check()
    cpus = cpus_per_worker(settings.workers, cluster_cpus(), settings.gpu)
    config = {
        "aae": settings.aae_config(crop_size, field_of_view_um).to_dict(),
        "epochs": settings.epochs,
        "global_batch": settings.global_batch(),
        "worker_batch": settings.worker_batch(),
        "seed": settings.seed,
        "image_every": max(1, settings.image_every),
        "run_id": run_id,
        "tracking_uri": tracking_uri() if run_id else None,
    }
    # A URL root (s3://...) goes to Ray Train as a pyarrow file system plus a bare path.
    storage, storage_fs = pyarrow_filesystem(storage_path or join(lch_home(), "ray_results"))
    return TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=settings.workers,
            use_gpu=settings.gpu,
            resources_per_worker={"CPU": cpus},
            placement_strategy=settings.placement_strategy,
        ),
        run_config=RunConfig(
            name=name or f"lch-train-{(run_id or 'untracked')[:12]}",
            storage_path=storage,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=settings.max_failures),
        ),
        datasets={"train": dataset},
        dataset_config=DataConfig(execution_options=_ordered_ingest()),
    )


def _ordered_ingest() -> ExecutionOptions:
    """Return Ray Train's ingest options with the blocks kept in order.

    The split hands out blocks in arrival order, so each worker then gets the same crops in the
    same order on every run with the same seed.
    """
    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def _start_run(settings: TrainSettings, cells: CellSet, split: Split) -> str:
    experiment_id = use_tracking()
    client = MlflowClient()
    run = client.create_run(
        experiment_id, run_name=f"train-{'-'.join(settings.cohorts)}",
        tags={"cohorts": ",".join(settings.cohorts), "lch.step": "train"},
    )
    params = {
        "cohorts": ",".join(settings.cohorts),
        "test_patients": ",".join(split.test_patients),
        "autoencoder_cells": int(split.autoencoder.sum()),
        "classifier_cells": int(split.train.sum()),
        "heldout_cells": int(split.test.sum()),
        "workers": settings.workers,
        "gpu": settings.gpu,
        "seed": settings.seed,
    }
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def _log_exaggeration(evaluation: Evaluation, cells: CellSet, split: Split,
                      settings: TrainSettings) -> None:
    """Exaggerate ``settings.report_cells`` held-out cells and log the report to the active run.

    The report (:func:`lch.exaggeration_report.held_out_report`: the montage, the morphology
    table, the Spearman trends, each feature's trend beside the data's bound and the decoder's
    fidelity, the strongest trends tested on real cells) goes in as artifacts, its figures as
    metrics.
    """
    report = held_out_report(evaluation.model, cells.table, split.test,
                             partial(read_rows, cells), report_cells=settings.report_cells,
                             seed=settings.seed)
    with tempfile.TemporaryDirectory() as tmp:
        write_report(report.result, tmp, report.hypotheses, report.bounds)
        mlflow.log_artifacts(tmp, artifact_path=REPORT_FOLDER)
    trends = spearman_table(report.result.table).dropna(subset=["rho"])
    metrics = {f"exaggeration_rho_{f}": rho for f, rho in zip(trends.feature, trends.rho,
                                                                strict=True)}
    bounds = report.bounds
    for row in bounds.dropna(subset=["bound", "ratio"]).itertuples():
        metrics[f"exaggeration_bound_{row.feature}"] = row.bound
        metrics[f"exaggeration_bound_ratio_{row.feature}"] = row.ratio
    for row in bounds.dropna(subset=["fidelity"]).itertuples():
        metrics[f"reconstruction_fidelity_{row.feature}"] = row.fidelity
    for name, column in (("exaggeration_control_margin", "rho"),
                         ("exaggeration_control_margin_allowed", "bound")):
        margin = control_margin(bounds, column)
        if np.isfinite(margin):
            metrics[name] = margin
    for row in report.hypotheses.dropna(subset=["auc"]).itertuples():
        metrics[f"real_cell_auc_{row.feature}"] = row.auc
    mlflow.log_metrics(metrics)


def _finish(
    evaluation: Evaluation,
    settings: TrainSettings,
    extra: dict,
    cells: CellSet,
    split: Split,
) -> str:
    """Log the figures and the exaggeration report, and register the model; return the version.

    Everything goes to the active training run.
    """
    metrics = evaluation.metrics() | extra
    mlflow.log_metrics(metrics)
    mlflow.log_param("classifier_shrinkage", evaluation.shrinkage)
    mlflow.log_table(evaluation.population, artifact_file="population.json")
    mlflow.log_table(evaluation.per_line, artifact_file="cross_validation_by_line.json")
    mlflow.log_table(evaluation.cells, artifact_file="cells.json")
    mlflow.log_figure(plot_population_curve(evaluation.population), "population_curve.png")
    labelled = evaluation.cells.dropna(subset=["logit"])
    y = np.where(labelled["label"] == "high", HIGH, LOW)
    raw = {"uncalibrated": sigmoid(labelled["logit"]), "calibrated": labelled["p_high"]}
    mlflow.log_figure(plot_reliability(raw, y), "reliability.png")
    _log_exaggeration(evaluation, cells, split, settings)
    return log_lch_model(
        evaluation.model,
        cohorts=list(settings.cohorts),
        population_accuracy=evaluation.population_at(20),
        tags={"heldout_cell_auc": f"{evaluation.heldout_cell_auc:.6f}",
              "cv_population_auc_k20": f"{evaluation.population_at(20, 'auc'):.6f}"},
    )


def prepare(settings: TrainSettings, home: Path | None = None) -> tuple[CellSet, Split]:
    """Open and validate everything a run needs; raises :class:`TrainingInputError`."""
    settings.check()
    cells = load_cells(settings.cohorts, home)
    split = split_by_patient(cells, settings.n_test_per_class, settings.seed)
    n = int(split.autoencoder.sum())
    if n < settings.global_batch():
        raise TrainingInputError(
            f"cohort(s) {', '.join(cells.cohorts)}: {n} cells to train the autoencoder on, "
            f"fewer than one step of {settings.global_batch()} ({settings.workers} workers x "
            f"{settings.batch_size})"
        )
    return cells, split


@contextmanager
def _epoch_progress(run_id: str, epochs: int, enabled: bool) -> Iterator[None]:
    """Show a progress bar of the epochs rank 0 has logged to the run.

    It is polled from MLflow while ``trainer.fit()`` blocks (the workers' own output stays in
    Ray's log files).
    """
    if not enabled:
        yield
        return
    done = threading.Event()

    def poll() -> None:
        client = MlflowClient()
        with tqdm(total=epochs, desc="training", unit="epoch") as bar:
            while not done.wait(2.0):
                history = client.get_metric_history(run_id, LOSSES[0])
                bar.update(max(len(history) - bar.n, 0))
                if history:
                    latest = max(history, key=lambda m: m.step)
                    bar.set_postfix({LOSSES[0]: f"{latest.value:.4f}"})

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def train(
    settings: TrainSettings,
    *,
    train_loop: Callable[[dict], None] = train_loop_per_worker,
    progress: bool = False,
) -> TrainSummary:
    """Train, evaluate on held-out patients and register one version of ``lch-aae``.

    ``progress`` shows a bar of the epochs done.

    Raises
    ------
    TrainingInputError
        Before any training, for cohorts or settings that cannot train.
    ray.train.TrainingFailedError
        If training failed more than ``settings.max_failures`` times (the run is marked failed).
    """
    started = time.perf_counter()
    tracking_uri()  # no usable tracking store (a URL LCH_HOME alone) fails before any reading
    cells, split = prepare(settings)
    run_id = _start_run(settings, cells, split)
    # The run ends FINISHED, or FAILED (KILLED on Ctrl-C) with whatever stopped it.
    with mlflow.start_run(run_id=run_id):
        init_ray()
        dataset = crop_dataset(cells, split.autoencoder, seed=settings.seed)
        trainer = build_trainer(
            settings, dataset, cells.crop_size, field_of_view_um=cells.field_of_view_um,
            run_id=run_id, train_loop=train_loop,
        )
        with _epoch_progress(run_id, settings.epochs, progress):
            result = trainer.fit()
        config = settings.aae_config(cells.crop_size, cells.field_of_view_um)
        aae = load_trained_aae(result.checkpoint, config)
        evaluation = evaluate(aae, cells, split, seed=settings.seed)
        train_seconds = float(result.metrics["total_seconds"])
        samples_per_s = float(result.metrics["total_samples"]) / max(train_seconds, 1e-9)
        extra = {"train_samples_per_s": samples_per_s, "train_seconds": train_seconds}
        version = _finish(evaluation, settings, extra, cells, split)
    return TrainSummary(
        run_id=run_id,
        model_version=version,
        cohorts=cells.cohorts,
        test_patients=split.test_patients,
        evaluation=evaluation,
        samples_per_s=samples_per_s,
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
        metrics=evaluation.metrics() | extra,
    )
