"""Benchmark: ingestion + segmentation on a 2-node local Ray cluster vs one node, same cores.

Run: ``.venv/bin/python bench/cluster.py [--movies 8] [--frames 12] [--size 512] [--repeat 2]``

Both sides run stage A (TIFF → OME-Zarr, :func:`convert_cohort`) and stage B (Ray Data
segmentation → cells.parquet + crops.zarr, :func:`segment_cohort`) on the same synthetic cohort,
each into a data root of its own: one Ray node with 2 CPUs, and a cluster
(``ray.cluster_utils.Cluster``) whose head has no CPUs and whose 2 worker nodes have 1 CPU each.
Each layout runs ``--repeat`` times (ABBA order: the machine's load drifts); prints the best
frames/s of each and their ratio (goal ≥ 0.9), then the measured per-movie and per-cell costs
and the MLflow artifact size of one registered model, and from them what breaks first at 100×
the cohort.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import lch.pipelines  # noqa: E402, F401, I001  (first: local Ray on loopback)

import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
import ray._private.internal_api  # noqa: E402
import torch  # noqa: E402
from memory import PeakRSS  # noqa: E402

from lch.cellstore import CELLS_FILE, CROP_CHUNK_ROWS, CROPS_STORE  # noqa: E402
from lch.model import AAEConfig, LCHModel  # noqa: E402
from lch.pipelines.ingest import convert_cohort  # noqa: E402
from lch.pipelines.runtime import init_ray, local_cluster  # noqa: E402
from lch.pipelines.segment import batch_frames, segment_cohort  # noqa: E402
from lch.pipelines.train import DEFAULT_WIDTH  # noqa: E402
from lch.pipelines.train_data import CACHE_FRACTION  # noqa: E402
from lch.registry import log_lch_model  # noqa: E402
from lch.synth import make_cohort  # noqa: E402

COHORT = "bench"
SCALE = 100
GiB = 2**30


def folder_bytes(path: Path) -> tuple[int, int]:
    """Bytes and number of files under ``path``."""
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def run_stages(manifest: Path, home: Path) -> dict:
    """Stage A then stage B on the Ray instance this process is joined to."""
    with PeakRSS() as memory:
        ingest = convert_cohort(manifest, home=home, progress=False)
        assert not ingest.failed, ingest.format()
        segment = segment_cohort(COHORT, home=home, progress=False)
    assert not segment.movies_failed, segment.format()
    spilled = "Spilled" in ray._private.internal_api.memory_summary(stats_only=True)
    return {"ingest": ingest, "segment": segment, "spilled": spilled, "rss": memory.peak,
            "seconds": ingest.seconds + segment.seconds, "frames": segment.frames}


def single_node(manifest: Path, home: Path) -> dict:
    """One Ray node with 2 CPUs (the machine's cores), as ``lch ingest`` starts locally."""
    temp_dir = tempfile.mkdtemp(prefix="lchb", dir="/tmp")  # unix socket paths stay short
    init_ray(num_cpus=2, _temp_dir=temp_dir)
    try:
        return run_stages(manifest, home)
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def two_nodes(manifest: Path, home: Path) -> dict:
    """A head with no CPUs and 2 worker nodes × 1 CPU, joined as a cluster (``--address``)."""
    with local_cluster(workers=2, cpus_per_worker=1, head_cpus=0, object_store_mb=1024) as c:
        init_ray(c.address)
        return run_stages(manifest, home)


def model_artifact_bytes(work: Path) -> int:
    """Bytes of one registered ``lch-aae`` version's artifacts (the training defaults)."""
    home = work / "mlflow-home"
    saved = {k: os.environ.pop(k, None) for k in ("LCH_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["LCH_HOME"] = str(home)
    try:
        config = AAEConfig(crop_size=64, latent_dim=56, width=DEFAULT_WIDTH)
        log_lch_model(LCHModel(config), cohorts=[COHORT], population_accuracy=0.5)
    finally:
        os.environ.pop("LCH_HOME")
        os.environ.update({k: v for k, v in saved.items() if v is not None})
    return folder_bytes(home / "mlartifacts")[0]


def weights_bytes(config: AAEConfig) -> int:
    """Size of the weights file of a model of this configuration (not logged)."""
    buffer = io.BytesIO()
    torch.save(LCHModel(config).to_state(), buffer)
    return buffer.tell()


def costs(result: dict, home: Path, movies: int, size: int) -> dict:
    """Per-movie, per-frame and per-cell costs measured on one run's outputs."""
    ingest, segment = result["ingest"], result["segment"]
    cohort = home / "cohorts" / COHORT
    zarr_bytes, zarr_files = folder_bytes(cohort / "movies")
    crops_bytes, crops_files = folder_bytes(cohort / CROPS_STORE)
    parquet = pq.ParquetFile(cohort / CELLS_FILE)
    cells = segment.cells_kept
    return {
        "movies": movies, "frames": segment.frames, "cells": cells,
        "source_per_movie": sum(r.source_bytes for r in ingest.results) / movies,
        "zarr_per_movie": zarr_bytes / movies, "zarr_per_frame": zarr_bytes / segment.frames,
        "zarr_files_per_movie": zarr_files / movies,
        "convert_s_per_movie": sum(r.seconds for r in ingest.results) / movies,
        "stage_a_s": ingest.seconds, "stage_b_s": segment.seconds,
        "parquet_bytes": (cohort / CELLS_FILE).stat().st_size,
        "parquet_row_groups": parquet.metadata.num_row_groups,
        "crops_bytes": crops_bytes, "crops_files": crops_files,
        "crop_raw_bytes": 4 * 64 * 64,
        "cells_per_frame": cells / segment.frames,
        "batch_frames": batch_frames(size * size),
    }


def print_costs(c: dict) -> None:
    mb = 1e6
    print(f"\nmeasured costs ({c['movies']} movies, {c['frames']} frames, {c['cells']} cells):")
    print(f"  per movie: source {c['source_per_movie'] / mb:.2f} MB, OME-Zarr "
          f"{c['zarr_per_movie'] / mb:.2f} MB in {c['zarr_files_per_movie']:.0f} files, "
          f"conversion {c['convert_s_per_movie']:.2f} s (one task)")
    print(f"  per frame: OME-Zarr {c['zarr_per_frame'] / 1e3:.0f} kB, "
          f"{c['cells_per_frame']:.1f} cells kept")
    print(f"  per cell: cells.parquet {c['parquet_bytes'] / c['cells']:.0f} B + crops.zarr "
          f"{c['crops_bytes'] / c['cells']:.0f} B (raw crop {c['crop_raw_bytes']} B) = "
          f"{(c['parquet_bytes'] + c['crops_bytes']) / c['cells'] / 1e3:.1f} kB")
    print(f"  cells.parquet: {c['parquet_row_groups']} row groups for {c['cells']} rows "
          f"({c['cells'] / c['parquet_row_groups']:.0f} rows each: one per Ray Data block of "
          f"{c['batch_frames']} frames); crops.zarr: {c['crops_files']} files "
          f"({CROP_CHUNK_ROWS} crops per chunk)")


def print_scale(c: dict, model_bytes: int, paper_bytes: int, spilled: bool) -> None:
    """What the measured costs become at :data:`SCALE`× the cohort, and which limit comes first."""
    n = SCALE
    cells, movies = n * c["cells"], n * c["movies"]
    store = ray_object_store_default()
    crops_raw = cells * c["crop_raw_bytes"]
    print(f"\nat {n}× the cohort ({movies} movies, {n * c['frames']} frames, {cells} cells):")
    print(f"  OME-Zarr {n * c['zarr_per_movie'] * c['movies'] / GiB:.1f} GiB in "
          f"{n * c['zarr_files_per_movie'] * c['movies']:.0f} files; stage A "
          f"~{movies * c['convert_s_per_movie'] / 2 / 60:.1f} min on 2 CPUs (task time per movie), "
          f"stage B <= {n * c['stage_b_s'] / 60:.1f} min (100x this run, start-up included); "
          "both scale with CPUs: one task per movie, one actor per CPU")
    print(f"  cells.parquet {n * c['parquet_bytes'] / 1e6:.0f} MB, one file, "
          f"{n * c['parquet_row_groups']} row groups of ~{c['cells'] / c['parquet_row_groups']:.0f}"
          f" rows; crops.zarr {n * c['crops_bytes'] / GiB:.2f} GiB in "
          f"{cells // CROP_CHUNK_ROWS + 1} chunk files")
    print(f"  training crops in memory {crops_raw / GiB:.2f} GiB vs the object store's "
          f"{CACHE_FRACTION:.0%} cache limit {CACHE_FRACTION * store / GiB:.2f} GiB "
          f"(object store {store / GiB:.1f} GiB = 30% of RAM); spilled in this run: "
          f"{'yes' if spilled else 'no'}")
    print(f"  MLflow: {model_bytes / 1e6:.2f} MB per registered version at the CPU defaults, "
          f"{paper_bytes / 1e6:.0f} MB at the paper's 256-px, full-width model; independent "
          "of the cohort (the latent statistics are a mean, a direction and a sigma)")
    limits = {
        "training crops exceed the in-memory cache (then stream from crops.zarr each epoch)":
            CACHE_FRACTION * store / (c["cells"] * c["crop_raw_bytes"]),
        "training crops exceed the whole object store (a forced cache would spill)":
            store / (c["cells"] * c["crop_raw_bytes"]),
        "cells.parquet passes 10,000 row groups (footer and planning cost grow with them)":
            10_000 / c["parquet_row_groups"],
    }
    print("  first to break (cohort multiple at which each limit is crossed):")
    for what, multiple in sorted(limits.items(), key=lambda kv: kv[1]):
        print(f"    {multiple:>8,.0f}×  {what}")


def ray_object_store_default() -> int:
    """The object store a single-node ``ray.init()`` gives this machine: 30% of memory."""
    return int(0.3 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movies", type=int, default=8, help="movies (4 patients)")
    parser.add_argument("--frames", type=int, default=12, help="frames per movie")
    parser.add_argument("--size", type=int, default=512, help="frame side in pixels")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each layout")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lch-bench-cluster-"))
    os.environ.pop("RAY_ADDRESS", None)
    manifest = make_cohort(work / "source", name=COHORT, patients=4,
                           movies_per_patient=max(1, args.movies // 4), frames=args.frames,
                           size=(args.size, args.size), seed=1)
    movies = 4 * max(1, args.movies // 4)

    # ABBA order, best of each: the machine is shared, and its load drifts during a run.
    runs: dict[str, list[dict]] = {"one": [], "two": []}
    order = (["one", "two", "two", "one"] * args.repeat)[: 2 * args.repeat]
    for i, which in enumerate(order):
        home = work / f"{which}-{i}"
        runs[which].append((single_node if which == "one" else two_nodes)(manifest, home))
        runs[which][-1]["home"] = home
    cells = {r["segment"].cells_kept for rs in runs.values() for r in rs}
    assert len(cells) == 1, cells  # the same cells, whichever the layout
    one, two = (min(runs[k], key=lambda r: r["seconds"]) for k in ("one", "two"))
    frames = one["frames"]
    print(f"{movies} movies x {args.frames} frames of {args.size}², "
          f"{one['segment'].cells_kept} cells kept (the same in every run)")
    for name, key in (("1 node x 2 CPUs:          ", "one"), ("2 nodes x 1 CPU (head 0): ", "two")):
        r = one if key == "one" else two
        every = ", ".join(f"{frames / x['seconds']:.2f}" for x in runs[key])
        print(f"{name} {frames / r['seconds']:6.2f} frames/s, best of [{every}] ({r['seconds']:.1f}"
              f" s: stage A {r['ingest'].seconds:.1f} s, stage B {r['segment'].seconds:.1f} s; "
              f"peak RSS of this process and its Ray workers {r['rss'] / 2**20:.0f} MiB)")
    print(f"ratio 2 nodes / 1 node:    {one['seconds'] / two['seconds']:6.2f}   (goal >= 0.9)")

    c = costs(one, one["home"], movies, args.size)
    print_costs(c)
    model_bytes = model_artifact_bytes(work)
    paper_bytes = weights_bytes(AAEConfig(crop_size=256, latent_dim=56, width=1.0))
    spilled = any(r["spilled"] for rs in runs.values() for r in rs)
    print_scale(c, model_bytes, paper_bytes, spilled)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
