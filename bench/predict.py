"""Benchmark: `lch predict` (Ray Data, one model per actor) vs a plain one-process loop.

Run: ``.venv/bin/python bench/predict.py [--frames 6] [--copies 4] [--workdir DIR]``

A synthetic cohort (8 movies of 512² frames) is ingested and segmented once; its cell store is
then written ``copies`` times over (each copy a new movie, track ids shifted) as cohort "x1",
and ``4 * copies`` times as "x4", so the crops are real ingestion crops in realistic numbers.
The model is the default AAE for 64-px crops (untrained: the cost is the same), registered in
MLflow. Both sides read the same cell store chunk by chunk, encode every crop, score each track
by the mean code of its frames and write the predictions table; the plain loop uses torch's
default threads (all cores) in one process. Prints cells/s of each and their ratio (goal ≥ 1.6),
the time and peak RSS (driver + Ray workers) of `lch predict` at 1× and 4× the cells (goals:
time ≤ 4.2×, RSS ≤ 1.2×). Take the best of three runs on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))

from memory import PeakRSS  # noqa: E402

from lch.cellstore import (  # noqa: E402
    TRACK_FIELDS,  # noqa: E402
    CellStoreWriter,
    open_cells,
)
from lch.model import AAE, AAEConfig, LCHModel  # noqa: E402
from lch.paths import cohort_dir  # noqa: E402
from lch.pipelines.ingest import convert_cohort  # noqa: E402
from lch.pipelines.predict import ROWS_PER_ITEM, predict_cohort  # noqa: E402
from lch.pipelines.runtime import cluster_cpus, init_ray  # noqa: E402
from lch.pipelines.segment import segment_cohort  # noqa: E402
from lch.predictions import cell_predictions, patient_calls  # noqa: E402
from lch.registry import load_lch_model, log_lch_model, use_tracking  # noqa: E402
from lch.synth import make_cohort  # noqa: E402
from lch.training import load_cells  # noqa: E402

CROP = 64


def copied_cohort(source: str, name: str, copies: int) -> int:
    """Write ``copies`` copies of ``source``'s cells as cohort ``name``; its number of rows."""
    table, crops = open_cells(cohort_dir(source))
    pixels = np.asarray(crops[:])
    frame_columns = [c for c in table.columns if c not in (*TRACK_FIELDS, "crop_index")]
    writer = CellStoreWriter(cohort_dir(name), CROP,
                             field_of_view_um=float(crops.attrs["field_of_view_um"]))
    tracks = []
    for k in range(copies):
        copy = table.assign(cohort=name, movie=table["movie"] + f"-c{k}")
        writer.add(copy[frame_columns], pixels)
        tracks.append(copy[list(TRACK_FIELDS)].assign(
            track_id=copy["track_id"] + k * (int(table["track_id"].max()) + 1)))
    kept = pd.concat(tracks, ignore_index=True)
    writer.commit(lambda cells: kept)
    return copies * len(table)


def plain_loop(cohort: str, version: str, threads: int) -> float:
    """Seconds for one process with ``threads`` torch threads: load the model, encode every crop
    chunk by chunk, score and call, write the table."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    model = load_lch_model(f"models:/lch-aae/{version}")
    table, crops = open_cells(cohort_dir(cohort))
    codes = []
    with torch.inference_mode():
        for start in range(0, crops.shape[0], ROWS_PER_ITEM):
            batch = np.asarray(crops[start:start + ROWS_PER_ITEM])
            codes.append(model.encode(torch.from_numpy(batch)[:, None]).numpy())
    scored = cell_predictions(table, np.concatenate(codes), model, version)
    patient_calls(scored)
    scored.to_parquet(Path(tempfile.mkdtemp()) / "plain.parquet")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=6, help="frames per movie (8 movies)")
    parser.add_argument("--copies", type=int, default=4, help="copies of the cohort in 1×")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lch-bench-predict-"))
    os.environ["LCH_HOME"] = str(work / "home")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    init_ray()
    cpus = cluster_cpus()

    manifest = make_cohort(work / "source", name="base", patients=4, movies_per_patient=2,
                           frames=args.frames, size=(512, 512), seed=3)
    assert not convert_cohort(manifest, progress=False).failed
    segment_cohort("base", crop_size=CROP, progress=False)
    n1 = copied_cohort("base", "x1", args.copies)
    n4 = copied_cohort("base", "x4", 4 * args.copies)
    use_tracking()
    torch.manual_seed(0)
    config = AAEConfig(crop_size=CROP, field_of_view_um=load_cells(["x1"]).field_of_view_um)
    rng = np.random.default_rng(0)
    dim = config.latent_dim
    version = str(log_lch_model(LCHModel.from_aae(AAE(config).eval(), rng.normal(size=dim), 0.0,
                                                  rng.normal(size=(64, dim))),
                                cohorts=["x1"], population_accuracy=0.5))

    threads = torch.get_num_threads()
    plain_loop("x1", version, threads)  # warm the page cache and torch's kernels for both sides
    plain_s = plain_loop("x1", version, threads)
    single_s = plain_loop("x1", version, 1)
    torch.set_num_threads(threads)
    with PeakRSS() as mem1:
        ray_s = predict_cohort("x1", version, force=True, progress=False).seconds
    print(f"{n1} crops of {CROP}² ({n1 // (args.frames * 8 * args.copies)} cells per frame)")
    for what, seconds in ((f"plain loop, one process, {threads} torch threads", plain_s),
                          ("plain loop, one process, 1 torch thread", single_s),
                          (f"lch predict, Ray Data, {cpus} CPUs (all included)", ray_s)):
        print(f"{what:<50} {n1 / seconds:6.0f} crops/s ({seconds:.1f} s)")
    print(f"ratio predict / plain ({threads} threads): {plain_s / ray_s:.2f}   (goal >= 1.6)")
    print(f"ratio predict / plain (1 thread):  {single_s / ray_s:.2f}")
    with PeakRSS() as mem4:
        ray4_s = predict_cohort("x4", version, force=True, progress=False).seconds
    print(f"4× the crops ({n4}): {ray4_s:.1f} s → {ray4_s / ray_s:.2f}× the time (goal <= 4.2×)")
    per_crop = (ray4_s - ray_s) / (n4 - n1)
    print(f"lch predict split from the two sizes: {1 / per_crop:.0f} crops/s once running, "
          f"{ray_s - n1 * per_crop:.1f} s fixed (Ray Data start, actors importing torch and "
          "loading the model, the MLflow run)")
    print(f"peak RSS (driver + Ray workers): {mem1.peak / 2**20:.0f} MiB, 4×: "
          f"{mem4.peak / 2**20:.0f} MiB → {mem4.peak / mem1.peak:.2f}× (goal <= 1.2×)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
