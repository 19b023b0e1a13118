"""`lch predict`: offline batch inference over a stored cohort with Ray Data, logged to MLflow.

As in Ray's batch-inference guide: the cohort's crops are read in row ranges
(:func:`lch.training.crop_items`) by a pool of :class:`CropEncoder` actors, each loading the model
once, and the driver gathers the latent codes (a few floats per crop). Each tracked cell is then
scored by the mean code of its frames and each patient called from its distinct cells
(:mod:`lch.predictions`). The cell table goes to ``cohorts/<cohort>/predictions/<version>.parquet``
(written aside, then renamed into place); the per-patient calls are printed and logged to MLflow
as an evaluation run tagged with the model version. Running again with the same model is a no-op
unless forced.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd
import ray
import torch
from tqdm.auto import tqdm

from lch.mlflow_store import tracking_uri, use_tracking
from lch.model_names import REGISTERED_MODEL, model_uri, version_uri
from lch.paths import Location, cohort_dir, join, lch_home
from lch.pipelines.runtime import cluster_cpus, init_ray
from lch.pipelines.train_data import read_crop_items
from lch.predictions import call_accuracy, cell_predictions, patient_calls
from lch.registry import load_lch_model, resolve_version
from lch.storage import filesystem, storage_options_from_env
from lch.training import TrainingInputError, crop_items, load_cells

DEFAULT_MODEL = model_uri()
PREDICTIONS = "predictions"
ROWS_PER_ITEM = 256  # one crop chunk of the cell store
BATCH_ROWS = 1024


@dataclass
class PredictSummary:
    """What `lch predict` did."""

    cohort: str
    model_version: str
    path: str
    cells: pd.DataFrame = field(default_factory=pd.DataFrame)
    calls: pd.DataFrame = field(default_factory=pd.DataFrame)
    skipped: bool = False
    run_id: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """Return the summary as JSON-ready data (``lch predict --json``): a record per patient."""
        return {"cohort": self.cohort, "model_version": self.model_version, "path": self.path,
                "run_id": self.run_id, "skipped": self.skipped, "seconds": self.seconds,
                "cells": len(self.cells),
                # pandas writes NaN (an unlabelled patient's correctness) as null.
                "calls": json.loads(self.calls.to_json(orient="records"))}

    def format(self) -> str:
        """Write a human-readable summary: the run, each patient's call, labelled accuracy."""
        if self.skipped:
            return (f"cohort {self.cohort}: predictions of {REGISTERED_MODEL} version "
                    f"{self.model_version} already stored ({self.path}); --force to compute them "
                    "again")
        lines = [f"cohort {self.cohort}: {len(self.cells)} tracked cells scored by "
                 f"{REGISTERED_MODEL} version {self.model_version} in {self.seconds:.1f} s -> "
                 f"{self.path}",
                 f"  MLflow run {self.run_id}"]
        table = self.calls.assign(
            p_high=self.calls["p_high"].map("{:.3f}".format),
            interval=[f"[{a:.3f}, {b:.3f}]" for a, b in zip(self.calls["ci_low"],
                                                            self.calls["ci_high"], strict=True)],
        )[["patient", "label", "cells", "p_high", "interval", "call", "reaches_minimum"]]
        lines += ["  " + line for line in table.to_string(index=False).splitlines()]
        accuracy = call_accuracy(self.calls)
        if accuracy is not None:
            known = int(self.calls["correct"].notna().sum())
            lines.append(f"  labelled patients called right: {accuracy:.3f} of {known}")
        return "\n".join(lines)


class CropEncoder:
    """Ray Data callable class: row ranges of a cell store → the rows' latent codes.

    The model is loaded once per actor.
    """

    def __init__(self, model_uri: str, tracking_uri: str, storage_options: dict | None,
                 device: str = "cpu") -> None:
        self.model = load_lch_model(model_uri, tracking_uri).to(device).eval()
        self.options = storage_options
        self.device = device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Encode the crops of the batch's row ranges; return each row and its latent code."""
        crops = read_crop_items(batch, self.options)["crop"]
        rows = np.concatenate([np.arange(a, b) for a, b in zip(batch["start"], batch["stop"],
                                                                strict=True)])
        with torch.inference_mode():
            x = torch.from_numpy(crops)[:, None].to(self.device)
            codes = self.model.encode(x).cpu().numpy()
        return {"row": rows, "code": codes}


def _encode(cells, model_uri: str, tracking_uri: str, gpu: bool, progress: bool,
            address: str | None) -> np.ndarray:
    init_ray(address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one bar: ours
    items = crop_items(cells, np.ones(len(cells.table), bool), ROWS_PER_ITEM)
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        CropEncoder,
        fn_constructor_kwargs={"model_uri": model_uri, "tracking_uri": tracking_uri,
                               "storage_options": cells.storage_options,
                               "device": "cuda" if gpu else "cpu"},
        batch_size=max(1, BATCH_ROWS // ROWS_PER_ITEM),
        compute=ray.data.ActorPoolStrategy(size=1 if gpu else max(1, min(cluster_cpus(),
                                                                         len(items)))),
        num_gpus=1 if gpu else 0,
        batch_format="numpy",
    )
    codes = None
    with tqdm(total=len(cells.table), desc="crops → codes", unit="crop",
              disable=not progress) as bar:
        for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if codes is None:
                codes = np.zeros((len(cells.table), block["code"].shape[1]), np.float64)
            codes[block["row"]] = block["code"]
            bar.update(len(block["row"]))
    return codes


def _write(table: pd.DataFrame, path: Location, options: dict) -> None:
    """Write ``table`` aside and rename it into place: readers see the old file or the new."""
    fs, target = filesystem(path, options)
    parent = target.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    aside = f"{parent}/.tmp-{uuid.uuid4().hex}.parquet"
    with fs.open(aside, "wb") as f:
        table.to_parquet(f, index=False)
    fs.mv(aside, target)


def _log_run(summary: PredictSummary, model_uri: str) -> str:
    experiment = use_tracking()
    with mlflow.start_run(experiment_id=experiment,
                          run_name=f"predict {summary.cohort}") as run:
        mlflow.set_tags({"lch.kind": "prediction", "lch.cohort": summary.cohort,
                         "lch.model_version": summary.model_version, "lch.model": model_uri})
        mlflow.log_params({"cohort": summary.cohort, "model_version": summary.model_version,
                           "cells": len(summary.cells), "predictions": str(summary.path)})
        mlflow.log_table(summary.calls, artifact_file="patient_calls.json")
        accuracy = call_accuracy(summary.calls)
        if accuracy is not None:
            mlflow.log_metric("patient_call_accuracy", accuracy)
        mlflow.log_metric("cells", len(summary.cells))
        return run.info.run_id


def predict_cohort(
    cohort: str,
    model: str = DEFAULT_MODEL,
    *,
    out: Location | None = None,
    force: bool = False,
    gpu: bool = False,
    progress: bool = True,
    home: Location | None = None,
    address: str | None = None,
) -> PredictSummary:
    """Score every tracked cell of a stored cohort and call each patient.

    Raises
    ------
    lch.training.TrainingInputError
        The cohort is missing or has no segmented cells (the message names it).
    lch.registry.ModelNotFound
        A model reference that names no registered version.
    ValueError
        A model reference of no known form.
    """
    started = time.perf_counter()
    home = home or lch_home()
    use_tracking()
    tracking = tracking_uri()
    version = resolve_version(model, tracking)
    version_model = version_uri(version)
    path = out or join(cohort_dir(cohort, home), PREDICTIONS, f"{version}.parquet")
    options = storage_options_from_env(home)
    summary = PredictSummary(cohort, version, str(path))
    fs, target = filesystem(path, options)
    if fs.exists(target) and not force:
        summary.skipped = True
        return summary
    cells = load_cells([cohort], home)
    loaded = load_lch_model(version_model, tracking)
    if loaded.config.crop_size != cells.crop_size:
        raise TrainingInputError(f"cohort {cohort!r}: crops are {cells.crop_size} px, version "
                                 f"{version} takes {loaded.config.crop_size} px")
    codes = _encode(cells, version_model, tracking, gpu, progress, address)
    summary.cells = cell_predictions(cells.table, codes, loaded, version)
    summary.calls = patient_calls(summary.cells)
    _write(summary.cells, path, options)
    summary.run_id = _log_run(summary, version_model)
    summary.seconds = time.perf_counter() - started
    return summary

