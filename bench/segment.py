"""Benchmark: segmentation stage, Ray Data on all cores vs a bare one-process loop.

Run: ``.venv/bin/python bench/segment.py [--frames 25] [--size 512] [--repeats 3] [--no-memory]``

Both sides call :func:`lch.cells.frame_cells` on the same frames (``--size``², 8 movies) read
from the same OME-Zarr stores. Prints frames/s of each and their ratio (goal ≥ 1.7; 2.0 is the
limit on 2 cores), the pipeline's per-frame overhead in CPU time over the bare call, and the
peak RSS (driver + Ray workers) of the pipeline for 1× and 4× the frames (goal ≤ 1.2× growth).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from memory import PeakRSS  # noqa: E402

from lch.cells import frame_cells  # noqa: E402
from lch.omezarr import open_movie  # noqa: E402
from lch.paths import movies_dir  # noqa: E402
from lch.pipelines.ingest import convert_cohort  # noqa: E402
from lch.pipelines.runtime import cluster_cpus, init_ray  # noqa: E402
from lch.pipelines.segment import segment_cohort  # noqa: E402
from lch.synth import PIXEL_SIZE_UM, make_cohort  # noqa: E402

MOVIES = 8


def bare_loop(cohort: str) -> tuple[float, int]:
    """Seconds and cells kept for one process segmenting every frame in turn."""
    started, cells = time.perf_counter(), 0
    for store in sorted(movies_dir(cohort).glob("*.ome.zarr")):
        array = open_movie(store)
        for t in range(array.shape[0]):
            cells += len(frame_cells(array[t, 0], pixel_size_um=PIXEL_SIZE_UM)[1])
    return time.perf_counter() - started, cells


def ingested(work: Path, name: str, frames: int, size: int, seed: int) -> int:
    manifest = make_cohort(work / name, name=name, patients=4, movies_per_patient=MOVIES // 4,
                           frames=frames, size=(size, size), seed=seed)
    summary = convert_cohort(manifest, progress=False)
    assert not summary.failed, summary.format()
    return summary.frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=25, help="frames per movie (8 movies)")
    parser.add_argument("--size", type=int, default=512, help="frame side in px")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=1,
                        help="time both sides this many times; the best ratio is the figure")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the 4x-frames RSS run (it takes 4x as long as one pipeline)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lch-bench-segment-"))
    os.environ["LCH_HOME"] = str(work / "home")
    init_ray()
    cpus = cluster_cpus()

    n = ingested(work, "seg1", args.frames, args.size, seed=1)
    ratios = []
    for _ in range(args.repeats):
        bare_s, bare_cells = bare_loop("seg1")
        summary = segment_cohort("seg1", progress=False)
        assert summary.cells_kept == bare_cells, (summary.cells_kept, bare_cells)
        ray_s = summary.seconds
        ratios.append(bare_s / ray_s)
        print(f"{n} frames of {args.size}², {bare_cells} cells kept")
        print(f"bare loop, one process:        {n / bare_s:6.2f} frames/s ({bare_s:.1f} s)")
        print(f"Ray Data pipeline, {cpus} CPUs:   {n / ray_s:6.2f} frames/s ({ray_s:.1f} s, "
              "start-up and writing cells.parquet + crops.zarr included)")
        print(f"ratio pipeline / bare:         {bare_s / ray_s:6.2f}   "
              f"(goal >= 1.7, limit {cpus}.0)")
        per_frame = bare_s / n
        pipeline_cpu = ray_s * cpus / n
        print(f"per-frame cost: bare {per_frame * 1e3:.1f} ms, pipeline {pipeline_cpu * 1e3:.1f} "
              f"CPU-ms → overhead {(pipeline_cpu - per_frame) * 1e3:.1f} ms/frame", flush=True)
    if args.repeats > 1:
        print(f"best ratio of {args.repeats}: {max(ratios):.2f}  "
              f"(all: {', '.join(f'{r:.2f}' for r in ratios)})")
    if not args.no_memory:
        # Apart from the timed runs: the sampler reads /proc every 0.1 s (~2 % of a core).
        with PeakRSS() as mem1:
            segment_cohort("seg1", progress=False)
        n4 = ingested(work, "seg4", 4 * args.frames, args.size, seed=4)
        with PeakRSS() as mem4:
            summary4 = segment_cohort("seg4", progress=False)
        print(f"4× frames ({n4}): {n4 / summary4.seconds:.2f} frames/s")
        print(f"peak RSS (driver + Ray workers): {n} frames {mem1.peak / 2**20:.0f} MiB, "
              f"{n4} frames {mem4.peak / 2**20:.0f} MiB → {mem4.peak / mem1.peak:.2f}× "
              "(goal <= 1.2×)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
