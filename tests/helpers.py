"""Small helpers shared by test modules: throw-away models, the tiny cohort, the bare
segmentation reference, subprocess clean-up."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import numpy as np
import pandas as pd
import torch

from lch.cells import frame_cells
from lch.model import AAE, AAEConfig, LCHModel, aae_train_step, make_optimizers, refresh_batch_norm
from lch.omezarr import open_movie


def tiny_model(seed: int, crop_size: int) -> LCHModel:
    """An untrained served model with a random classifier (distinct for each seed)."""
    torch.manual_seed(seed)
    aae = AAE(AAEConfig(crop_size=crop_size, latent_dim=8, width=1 / 16)).eval()
    rng = np.random.default_rng(seed)
    return LCHModel.from_aae(aae, rng.normal(size=8), 0.2, rng.normal(size=(40, 8)))


# The small AAE the trend tests train in-process: 10x the paper's learning rate, so a phenotype
# shows after ~a minute on one CPU thread; 8 latent dimensions leave less room for per-cell
# detail along the discriminant direction.
SMALL_AAE = {"latent_dim": 8, "channels": (8, 16, 32, 64), "disc_hidden": (64, 64, 32), "lr": 2e-3}


def train_small_aae(crops: np.ndarray, steps: int, field_of_view_um: float, seed: int = 0,
                    batch: int = 32) -> AAE:
    """:data:`SMALL_AAE` trained on ``crops`` (N, S, S) in this process, seeded (deterministic
    on one thread), batch-norm statistics refreshed over all crops; returned in eval mode."""
    x = torch.from_numpy(crops[:, None])
    torch.manual_seed(seed)
    config = AAEConfig(crop_size=crops.shape[-1], field_of_view_um=field_of_view_um, **SMALL_AAE)
    aae = AAE(config)
    optimizers = make_optimizers(aae, config)
    draws = torch.Generator().manual_seed(seed)
    for step in range(steps):
        # Linear decay to 5 %: training ends on a settled model, not on a snapshot of the
        # adversarial game's oscillation (the direction swings with it).
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = config.lr * max(0.05, 1.0 - step / steps)
        aae_train_step(aae, optimizers, x[torch.randint(0, len(x), (batch,), generator=draws)])
    refresh_batch_norm(aae, x.split(100))
    return aae.eval()


def stop_session(proc: subprocess.Popen, grace: float = 30) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it started."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def assert_nothing_local(home, cwd) -> None:
    """No embedded MLflow store: no SQLite file or artifact folder under LCH_HOME or the cwd."""
    local = [p for p in (home, cwd) for q in ("mlflow.db", "mlartifacts", "mlruns")
             if (p / q).exists()]
    assert local == []


def bare_cells(stores, crop_size: int, *, pixel_size_um: float) -> tuple[pd.DataFrame, np.ndarray]:
    """The segmentation pipelines' reference: :func:`lch.cells.frame_cells` called here, frame
    by frame, on stored movies (``stores``: movie id → store, in the pipeline's order).

    Returns the kept cells (with ``movie`` and ``frame``; ``label`` is the region id) and their
    crops, in that order.
    """
    tables, crops = [], []
    for movie, store in stores.items():
        array = open_movie(store)
        for t in range(array.shape[0]):
            table, cut = frame_cells(array[t, 0], crop_size, pixel_size_um=pixel_size_um)
            kept = table["drop_reason"] == ""
            tables.append(table[kept].assign(movie=movie, frame=t))
            crops.append(cut)
    return pd.concat(tables, ignore_index=True), np.concatenate(crops)


def assert_same_crops(got: np.ndarray, expected: np.ndarray) -> None:
    """The same crops in any order (a Ray Dataset shuffles them): compare sorted fingerprints."""
    assert got.shape == expected.shape
    key = np.array([0.37, 1.0, 2.3])

    def fingerprints(a: np.ndarray) -> np.ndarray:
        return np.sort(a.reshape(len(a), -1)[:, :3] @ key + a.sum((1, 2)))

    np.testing.assert_allclose(fingerprints(got), fingerprints(expected), rtol=1e-6)


# The small cohort several modules train on (conftest's tiny_cohort), and their tiny training.
TINY_COHORT = "tiny"
TINY_CROP = 64
# The report's exaggeration decodes and measures 9 images per cell: 8 cells, not 32, in tests.
TINY_TRAINING = {"latent_dim": 8, "width": 1 / 16, "batch_size": 8, "epochs": 2, "workers": 2,
                 "report_cells": 8}


def copy_home(source, target):
    """Copy a data root for one test or module to change (cohorts only, no MLflow store)."""
    shutil.copytree(source / "cohorts", target / "cohorts")
    return target
