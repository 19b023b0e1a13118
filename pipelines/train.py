"""`lch train`: the AAE on Ray Train (DDP), then the patient-held-out classifier, in MLflow.

Flow (DESIGN.md, step 2):

1. Open the cohorts' cells and split them by patient, before anything starts (bad input fails
   here with a message naming the cohort or field).
2. Stream the autoencoder's crops (never a held-out patient's) as a Ray Dataset: work items are
   short row ranges of ``crops.zarr``, shuffled each epoch, read by ``map_batches``.
3. ``TorchTrainer`` runs :func:`train_loop_per_worker` on N workers: DDP through
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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import mlflow
import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import zarr
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from ray.data import RandomSeedConfig
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from lch.classify import plot_population_curve
from lch.model import AAE, MODE_AUTOENCODE, AAEConfig, aae_train_step, make_optimizers, unwrap
from lch.paths import lch_home
from lch.pipelines.runtime import cluster_cpus, init_ray
from lch.registry import log_lch_model, tracking_uri, use_tracking
from lch.training import (
    CellSet,
    Evaluation,
    Split,
    TrainingInputError,
    crop_items,
    evaluate,
    load_cells,
    reconstruction_grid,
    split_by_patient,
)

# Defaults for the CPU demo, chosen on the synthetic demo cohort (2 cores): an eighth of the
# paper's channels (8..64 for 64-px crops) trains ~850 crops/s per core; lr 1e-3 instead of the
# paper's 2e-4 because 20 epochs of ~1,200 cells are ~500 steps, not the paper's ~10^5
# (measured: held-out cell AUC 0.87-0.93 vs 0.83-0.85 at 2e-4, same population accuracy).
DEFAULT_WIDTH = 0.125
DEFAULT_LR = 1e-3
DEFAULT_EPOCHS = 20
DEFAULT_BATCH = 50  # the paper's; global, split over the workers
DEFAULT_WORKERS = 2
# Rows per Ray Data work item: divides the cell store's 256-row chunks, so an item decodes one
# chunk, and gives the per-epoch shuffle of items plenty of pieces to mix.
ITEM_ROWS = 32
# Items per read task, and crops mixed in each worker's local shuffle buffer.
ITEMS_PER_READ = 4
SHUFFLE_BATCHES = 8
# Training crops taking at most this share of the object store are read once and kept there.
CACHE_FRACTION = 0.25
GRID_CELLS = 8
# DistributedDataParallel for the three-phase AAE step (lch.model.aae_train_step): each phase
# uses part of the network, hence find_unused_parameters, and skipping the all-reduce of the
# unused part saves traffic. Batch-norm buffers are not re-broadcast from rank 0 on every
# forward: the running statistics are recomputed after training (lch.training.evaluate), and
# rank 0, whose buffers the checkpoint keeps, has the same ones either way. Gradients as bucket
# views save a copy per step. Measured on 2 CPU workers: +10-15 % samples/s, parameters
# bit-identical to the plain find_unused_parameters setting after 5 steps.
DDP_OPTIONS = {
    "find_unused_parameters": True,
    "skip_all_reduce_unused_params": True,
    "forward_sync_buffers": False,
    "gradient_as_bucket_view": True,
}
GPU_WORKER_CPUS = 2
CHECKPOINT_FILE = "checkpoint.pt"
LOSSES = ("recon", "disc", "gen")


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
        Training length, *global* mini-batch (split evenly over the workers, so a run means
        the same with any worker count), latent dimension, channel multiplier and Adam
        learning rate (see :class:`lch.model.AAEConfig`).
    seed : int
        Seed of the patient split, the weights and the population draws.
    image_every : int
        Log crops and reconstructions every this many epochs (and after the last).
    max_failures : int
        Worker-group failures to recover from (from the last checkpoint).
    n_test_per_class : int
        Patients of each class held out.
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

    def aae_config(self, crop_size: int) -> AAEConfig:
        return AAEConfig(
            crop_size=crop_size,
            latent_dim=self.latent_dim,
            width=self.width,
            lr=self.lr,
            batch_size=self.batch_size,
        )

    def worker_batch(self) -> int:
        """Mini-batch of one worker."""
        return self.batch_size // self.workers

    def check(self) -> None:
        """Raise :class:`TrainingInputError` for settings that cannot train."""
        if self.workers < 1 or self.epochs < 1:
            raise TrainingInputError(
                f"--workers and --epochs must be >= 1, got {self.workers} and {self.epochs}"
            )
        if self.worker_batch() < 2:
            raise TrainingInputError(
                f"--batch-size {self.batch_size} is too small for {self.workers} workers: "
                "each worker needs at least 2 crops per batch (batch norm)"
            )


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

    def format(self) -> str:
        ev = self.evaluation
        lines = [
            f"trained on {', '.join(self.cohorts)}: MLflow run {self.run_id}, "
            f"registered lch-aae version {self.model_version}",
            f"  held-out patients {', '.join(self.test_patients)} ({ev.n_test_cells} cells; "
            f"classifier fit on {ev.n_train_cells} cells)",
            f"  held-out cell-level ROC AUC {ev.cell_auc:.3f} (training patients "
            f"{ev.train_cell_auc:.3f})",
            f"  held-out population of 20 cells: accuracy {ev.population_at(20):.3f}, "
            f"ROC AUC {ev.population_at(20, 'auc'):.3f}",
            "  population accuracy by k: "
            + ", ".join(f"{r.k}: {r.accuracy:.3f}" for r in ev.population.itertuples()),
            f"  AAE training {self.train_seconds:.1f} s at {self.samples_per_s:.0f} samples/s; "
            f"total {self.total_seconds:.1f} s",
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Data


@cache
def _open_crops(store: str) -> zarr.Array:
    """One open array per store per worker process (opening reads its metadata)."""
    return zarr.open_array(store, mode="r")


def read_crop_items(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` function: row-range items → ``{"crop": (n, S, S) float32}``."""
    parts = [
        _open_crops(str(store))[int(start) : int(stop)]
        for store, start, stop in zip(batch["store"], batch["start"], batch["stop"], strict=True)
    ]
    return {"crop": np.concatenate(parts).astype(np.float32, copy=False)}


def _fits_in_memory(n_bytes: int) -> bool:
    """True if ``n_bytes`` take at most :data:`CACHE_FRACTION` of the object store."""
    return n_bytes <= CACHE_FRACTION * ray.cluster_resources().get("object_store_memory", 0)


def crop_dataset(
    cells: CellSet, mask: np.ndarray, seed: int = 0, cache: bool | None = None
) -> ray.data.Dataset:
    """The crops of the ``mask`` rows as a Ray Dataset with one column ``crop``.

    Work items (short row ranges) are shuffled, so every block mixes several movies; each pass
    (epoch) then visits the blocks in a new order, and the workers' local shuffle buffers mix
    crops across blocks. Only the small items or whole blocks are shuffled, never single crops,
    which keeps it cheap at any cohort size.

    Parameters
    ----------
    cells : CellSet
    mask : np.ndarray
        Rows of ``cells.table`` to include.
    seed : int
        Seed of the orders (a different order every epoch, the same run after run).
    cache : bool, optional
        Read the crops once into the object store (then an epoch costs ~0.1 s of Ray Data
        overhead instead of ~1 s for re-running the reads on 2 cores). Default: when they take
        at most :data:`CACHE_FRACTION` of the object store; otherwise they stream from Zarr on
        every epoch.
    """
    items = crop_items(cells, mask, ITEM_ROWS)
    items = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
    if cache is None:
        side = cells.crop_size
        cache = _fits_in_memory(int(mask.sum()) * side * side * 4)
    every_epoch = RandomSeedConfig(seed=seed, reseed_after_execution=True)
    ds = ray.data.from_items(items)
    # The workers print the Train loop's own progress; per-operator bars would flood the log.
    ds.context.enable_progress_bars = False
    if cache:
        ds = ds.map_batches(read_crop_items, batch_size=ITEMS_PER_READ, batch_format="numpy")
        ds = ds.materialize().randomize_block_order(seed=every_epoch)
    else:
        ds = ds.random_shuffle(seed=every_epoch)
        ds = ds.map_batches(read_crop_items, batch_size=ITEMS_PER_READ, batch_format="numpy")
    return ds


# ---------------------------------------------------------------------------------------------
# The training loop (runs on every Ray Train worker)


def _restore(model: torch.nn.Module) -> dict:
    """Load the latest checkpoint into ``model`` (bare); return its state or ``{}``."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return state


def _global_mean(sums: torch.Tensor, count: int, device: torch.device) -> torch.Tensor:
    """Sums over this worker's steps → means over every worker's steps."""
    both = torch.cat([sums, torch.tensor([float(count)])]).to(device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(both)
    both = both.cpu()
    return both[:-1] / max(float(both[-1]), 1.0)


def _mlflow(config: dict) -> MlflowClient | None:
    """The tracking client on world rank 0 when the run is tracked, else None."""
    if config.get("run_id") is None or ray.train.get_context().get_world_rank() != 0:
        return None
    return MlflowClient(tracking_uri=config["tracking_uri"])


def _log_params(client: MlflowClient, config: dict, world_size: int) -> None:
    aae = config["aae"]
    params = {f"aae.{k}": v for k, v in aae.items()}
    params |= {"epochs": config["epochs"], "world_size": world_size,
               "worker_batch": config["worker_batch"], "global_batch": config["batch_size"]}
    client.log_batch(config["run_id"], params=[Param(k, str(v)) for k, v in params.items()])


@torch.no_grad()
def _log_grid(client: MlflowClient, run_id: str, model: torch.nn.Module, crops, epoch: int):
    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    recon, _ = inner(crops, mode=MODE_AUTOENCODE)
    inner.train(was_training)
    grid = reconstruction_grid(crops.squeeze(1).cpu().numpy(), recon.squeeze(1).cpu().numpy())
    client.log_image(run_id, grid, key="reconstructions", step=epoch)


def _save_checkpoint(folder: Path, model, optimizers, epoch: int, totals: dict) -> None:
    state = {
        "model": unwrap(model).state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "epoch": epoch,
        **totals,
    }
    torch.save(state, folder / CHECKPOINT_FILE)


def train_loop_per_worker(config: dict) -> None:
    """Train the AAE on this worker's shard of ``"train"``; Ray Train calls it on every worker.

    ``config`` (``train_loop_config``): ``aae`` (:meth:`AAEConfig.to_dict`), ``epochs``,
    ``batch_size`` (global), ``worker_batch``, ``seed``, ``image_every``, and for tracking
    ``run_id`` and ``tracking_uri`` (``run_id`` None: nothing is logged).

    Every worker runs the same number of steps (the shards are split equally and the last
    short batch is dropped) and reports once per epoch; rank 0 attaches the checkpoint.
    """
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    aae_config = AAEConfig.from_dict(config["aae"])
    torch.manual_seed(config["seed"])
    model = AAE(aae_config)
    state = _restore(model)
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=DDP_OPTIONS)
    optimizers = make_optimizers(model, aae_config)
    for name, opt in optimizers.items():
        if name in state.get("optimizers", {}):
            opt.load_state_dict(state["optimizers"][name])
    first_epoch = state.get("epoch", 0)
    totals = {"samples": state.get("samples", 0), "seconds": state.get("seconds", 0.0)}
    client = _mlflow(config)
    if client is not None and first_epoch == 0:
        _log_params(client, config, world_size)

    shard = ray.train.get_dataset_shard("train")
    epochs = config["epochs"]
    # An epoch's time runs from the end of the previous report, so the throughput includes
    # each epoch's checkpoint and logging, not only its steps.
    started = time.perf_counter()
    for epoch in range(first_epoch + 1, epochs + 1):
        sums, steps, preview = _train_epoch(model, optimizers, shard, config, device)
        seconds = time.perf_counter() - started
        means = _global_mean(sums, steps, device)
        samples = steps * config["worker_batch"] * world_size
        totals = {"samples": totals["samples"] + samples, "seconds": totals["seconds"] + seconds}
        metrics = {name: float(v) for name, v in zip(LOSSES, means, strict=True)}
        metrics |= {
            "epoch": epoch,
            "first_epoch": first_epoch + 1,
            "samples_per_s": samples / max(seconds, 1e-9),
            **{f"total_{k}": v for k, v in totals.items()},
        }
        if client is not None:
            _log_epoch(client, config, model, preview, metrics, epoch)
        if rank == 0:
            _report_with_checkpoint(client, config, model, optimizers, metrics, totals)
        else:
            ray.train.report(metrics)
        started = time.perf_counter()


def _train_epoch(model, optimizers, shard, config: dict, device) -> tuple:
    """One pass over this worker's shard: (loss sums, steps, first crops for the preview)."""
    unwrap(model).train()
    sums, steps, preview = torch.zeros(len(LOSSES)), 0, None
    batches = shard.iter_torch_batches(
        batch_size=config["worker_batch"],
        dtypes=torch.float32,
        device=device,
        drop_last=True,  # every worker takes the same number of steps (DDP)
        local_shuffle_buffer_size=SHUFFLE_BATCHES * config["worker_batch"],
    )
    for batch in batches:
        x = batch["crop"].unsqueeze(1)
        losses = aae_train_step(model, optimizers, x)
        sums += torch.tensor([losses[k] for k in LOSSES])
        steps += 1
        if preview is None:
            preview = x[:GRID_CELLS].detach().clone()
    return sums, steps, preview


def _report_with_checkpoint(client, config, model, optimizers, metrics: dict, totals: dict):
    """Rank 0's report: the metrics and this epoch's checkpoint (also to MLflow after the last)."""
    epoch = metrics["epoch"]
    with tempfile.TemporaryDirectory() as folder:
        _save_checkpoint(Path(folder), model, optimizers, epoch, totals)
        if client is not None and epoch == config["epochs"]:
            client.log_artifacts(config["run_id"], folder, artifact_path="checkpoint")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _log_epoch(client, config, model, preview, metrics: dict, epoch: int) -> None:
    now = int(time.time() * 1000)
    logged = {k: metrics[k] for k in (*LOSSES, "samples_per_s")}
    client.log_batch(
        config["run_id"], metrics=[Metric(k, float(v), now, epoch) for k, v in logged.items()]
    )
    if preview is not None and (epoch % config["image_every"] == 0 or epoch == config["epochs"]):
        _log_grid(client, config["run_id"], model, preview, epoch)


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
    run_id: str | None = None,
    storage_path: str | Path | None = None,
    name: str | None = None,
    train_loop: Callable[[dict], None] = train_loop_per_worker,
) -> TorchTrainer:
    """A ``TorchTrainer`` for ``settings`` over ``dataset`` (column ``crop``).

    Parameters
    ----------
    settings : TrainSettings
    dataset : ray.data.Dataset
        The training crops, e.g. from :func:`crop_dataset`.
    crop_size : int
        Side of the crops.
    run_id : str, optional
        MLflow run that world rank 0 logs to (at :func:`lch.registry.tracking_uri`).
    storage_path : path, optional
        Where Ray Train keeps checkpoints; default ``$LCH_HOME/ray_results``.
    name : str, optional
        The Ray Train run name (a folder under ``storage_path``); default from ``run_id``.
    train_loop : callable
        The per-worker function, :func:`train_loop_per_worker` unless wrapped.
    """
    settings.check()
    cpus = cpus_per_worker(settings.workers, cluster_cpus(), settings.gpu)
    config = {
        "aae": settings.aae_config(crop_size).to_dict(),
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "worker_batch": settings.worker_batch(),
        "seed": settings.seed,
        "image_every": max(1, settings.image_every),
        "run_id": run_id,
        "tracking_uri": tracking_uri() if run_id else None,
    }
    storage = Path(storage_path) if storage_path else lch_home() / "ray_results"
    return TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=settings.workers,
            use_gpu=settings.gpu,
            resources_per_worker={"CPU": cpus},
        ),
        run_config=RunConfig(
            name=name or f"lch-train-{(run_id or 'untracked')[:12]}",
            storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=settings.max_failures),
        ),
        datasets={"train": dataset},
    )


def load_trained_aae(checkpoint: ray.train.Checkpoint, crop_size: int, settings) -> AAE:
    """The AAE of a training checkpoint, on this process's best device."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AAE(settings.aae_config(crop_size))
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model.to(device)


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


def _finish(run_id: str, evaluation: Evaluation, settings: TrainSettings, extra: dict) -> str:
    """Log the held-out figures and register the model in the training run; return the version."""
    metrics = evaluation.metrics() | extra
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics)
        mlflow.log_table(evaluation.population, artifact_file="population.json")
        mlflow.log_figure(plot_population_curve(evaluation.population), "population_curve.png")
        return log_lch_model(
            evaluation.model,
            cohorts=list(settings.cohorts),
            population_accuracy=evaluation.population_at(20),
            tags={"heldout_cell_auc": f"{evaluation.cell_auc:.6f}",
                  "heldout_population_auc_k20": f"{evaluation.population_at(20, 'auc'):.6f}"},
        )


def prepare(settings: TrainSettings, home: Path | None = None) -> tuple[CellSet, Split]:
    """Open and validate everything a run needs; raises :class:`TrainingInputError`."""
    settings.check()
    cells = load_cells(settings.cohorts, home)
    split = split_by_patient(cells, settings.n_test_per_class, settings.seed)
    n = int(split.autoencoder.sum())
    if n < settings.batch_size:
        raise TrainingInputError(
            f"cohort(s) {', '.join(cells.cohorts)}: {n} cells to train the autoencoder on, "
            f"fewer than one batch of {settings.batch_size}"
        )
    return cells, split


def train(
    settings: TrainSettings,
    *,
    train_loop: Callable[[dict], None] = train_loop_per_worker,
) -> TrainSummary:
    """Train, evaluate on held-out patients and register one version of ``lch-aae``.

    Raises
    ------
    TrainingInputError
        Before any training, for cohorts or settings that cannot train.
    ray.train.TrainingFailedError
        If training failed more than ``settings.max_failures`` times (the run is marked failed).
    """
    started = time.perf_counter()
    cells, split = prepare(settings)
    run_id = _start_run(settings, cells, split)
    client = MlflowClient()
    try:
        init_ray()
        dataset = crop_dataset(cells, split.autoencoder, seed=settings.seed)
        trainer = build_trainer(
            settings, dataset, cells.crop_size, run_id=run_id, train_loop=train_loop
        )
        result = trainer.fit()
        aae = load_trained_aae(result.checkpoint, cells.crop_size, settings)
        evaluation = evaluate(aae, cells, split, seed=settings.seed)
        train_seconds = float(result.metrics["total_seconds"])
        samples_per_s = float(result.metrics["total_samples"]) / max(train_seconds, 1e-9)
        extra = {"train_samples_per_s": samples_per_s, "train_seconds": train_seconds}
        version = _finish(run_id, evaluation, settings, extra)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
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
