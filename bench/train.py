"""Benchmark: AAE training samples/s, Ray Train (TorchTrainer, 2 CPU workers) vs one process.

Run: ``.venv/bin/python bench/train.py [--home DIR --cohort NAME] [--epochs 6] [--workers 2]``

Both sides train the same model (``lch train``'s defaults: width 1/8, latent 56, 64-px crops) on
the same crops (the autoencoder cells of the cohort's patient split) with the same batch per
optimizer step (``--batch-size`` per worker x workers: 100 by default; the plain loop takes all
100 at once, DDP averages the workers' gradients) for the same epochs.
The Ray side is the production path: crops streamed from a Ray Dataset into
``train_loop_per_worker`` (checkpoint every epoch, losses and images logged to a throw-away
MLflow store). The baseline is a plain loop over
the crops held in memory, with torch's default threads (one per core) and again with one thread.
Steady-state samples/s leaves out the first epoch (warm-up) on both sides; the wall time of the
whole ``fit`` (Train start-up included) is printed too. Goal: Ray / best baseline >= 0.9.
Without ``--cohort`` it generates, ingests and segments a cohort of ~3,900 training crops (8
patients x 6 movies x 24 frames, ~6 min; keep it with ``--home`` and pass ``--cohort bench`` next
time): ~40 steps per epoch, so that, as on a lab's cohort, an epoch is mostly steps and not the
per-epoch checkpoint and report (on the demo's ~700 crops, 7 steps, they are a third of it).
Figures only, never a pass/fail: the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from lch.model import AAE  # noqa: E402
from lch.pipelines.runtime import init_ray, quiet_environment  # noqa: E402
from lch.pipelines.train import TrainSettings, build_trainer, crop_dataset, prepare  # noqa: E402
from lch.registry import use_tracking  # noqa: E402
from lch.training import read_rows, train_in_memory  # noqa: E402


def make_bench_cohort(home: Path) -> str:
    from lch.pipelines.ingest import convert_cohort
    from lch.pipelines.segment import segment_cohort
    from lch.synth import make_cohort

    manifest = make_cohort(home / "src", name="bench", patients=8, movies_per_patient=6,
                           frames=24, seed=0)
    convert_cohort(manifest, home=home, progress=False)
    segment_cohort("bench", home=home, progress=False)
    return "bench"


def plain_loop(settings: TrainSettings, crops: np.ndarray, field_of_view_um: float,
               threads: int) -> tuple[float, float]:
    """(steady samples/s, seconds) of one process training on in-memory crops."""
    torch.set_num_threads(threads)
    torch.manual_seed(settings.seed)
    model = AAE(settings.aae_config(crops.shape[-1], field_of_view_um))
    started = time.perf_counter()
    epochs = train_in_memory(model, crops, settings.epochs, settings.global_batch(), settings.seed)
    steady = epochs[1:]  # the first epoch warms up allocators and caches
    rate = sum(e["samples"] for e in steady) / sum(e["seconds"] for e in steady)
    return rate, time.perf_counter() - started


def ray_train(settings: TrainSettings, cells, split, storage: Path) -> tuple[float, float, float]:
    """(steady samples/s, first-epoch samples/s, fit seconds) of the TorchTrainer.

    Per-epoch figures come from the MLflow run that world rank 0 logs to, as in ``lch train``
    (the result's own history keeps only the retained checkpoints' reports).
    """
    client = MlflowClient()
    run_id = client.create_run(use_tracking(), run_name="bench-train").info.run_id
    dataset = crop_dataset(cells, split.autoencoder, seed=settings.seed)
    trainer = build_trainer(
        settings, dataset, cells.crop_size, run_id=run_id, storage_path=storage, name="bench"
    )
    started = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - started
    rates = [m.value for m in sorted(client.get_metric_history(run_id, "samples_per_s"),
                                     key=lambda m: m.step)]
    # Every epoch trains the same number of samples: the mean rate is the harmonic mean.
    steady = len(rates[1:]) / sum(1 / r for r in rates[1:])
    return steady, rates[0], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="LCH_HOME holding --cohort")
    parser.add_argument("--cohort", help="an ingested, segmented cohort (default: make one)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=50, help="per worker")
    args = parser.parse_args()
    quiet_environment()

    with tempfile.TemporaryDirectory(prefix="lch-bench-train-") as tmp:
        home = args.home or Path(tmp)
        os.environ["LCH_HOME"] = str(home)
        # The benchmark's runs go to a throw-away store, never the cohort's.
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        init_ray()
        cohort = args.cohort or make_bench_cohort(home)
        settings = TrainSettings(
            cohorts=(cohort,), workers=args.workers, epochs=args.epochs,
            batch_size=args.batch_size,
        )
        cells, split = prepare(settings)
        crops = read_rows(cells, np.flatnonzero(split.autoencoder))
        print(
            f"cohort {cohort}: {len(crops)} training crops {crops.shape[1]}x{crops.shape[2]}, "
            f"batch per step {settings.global_batch()} ({settings.workers} workers x "
            f"{settings.batch_size}), {len(crops) // settings.global_batch()} steps per epoch, "
            f"{settings.epochs} epochs, "
            f"width {settings.width}, latent {settings.latent_dim}, {os.cpu_count()} cores",
            flush=True,
        )
        cores = os.cpu_count() or 1
        base_all, secs_all = plain_loop(settings, crops, cells.field_of_view_um, threads=cores)
        print(f"plain loop, {cores} threads : {base_all:7.0f} samples/s ({secs_all:.1f} s)")
        base_one, secs_one = plain_loop(settings, crops, cells.field_of_view_um, threads=1)
        print(f"plain loop, 1 thread  : {base_one:7.0f} samples/s ({secs_one:.1f} s)", flush=True)
        steady, first, fit_s = ray_train(settings, cells, split, Path(tmp) / "ray_results")
        print(
            f"TorchTrainer, {settings.workers} workers: {steady:7.0f} samples/s "
            f"(first epoch {first:.0f}; fit {fit_s:.1f} s with start-up)"
        )
        best = max(base_all, base_one)
        print(
            f"ratio Ray / best plain loop: {steady / best:.2f}  "
            f"(vs {cores} threads {steady / base_all:.2f}, vs 1 thread {steady / base_one:.2f}; "
            "goal >= 0.9)"
        )
        with open("/proc/loadavg") as f:
            print(f"load average at the end: {f.read().split()[0]} on {cores} cores")


if __name__ == "__main__":
    sys.exit(main())
