"""Benchmark: TIFF → OME-Zarr ingestion, Ray tasks vs one process, and memory vs cohort size.

Run: ``.venv/bin/python bench/ingest.py [--frames 50] [--workdir DIR]``

Prints MB/s of the Ray stage (``convert_cohort``, 2 tasks at a time on 2 cores) and of one
process converting the same movies one after another with the same function, and their ratio
(goal ≥ 1.7). The one-process baseline runs twice, in fresh subprocesses: with the codecs on one
thread, as inside a Ray worker (``lch.pipelines.runtime.WORKER_ENV``), and with the libraries'
default thread pools. Then the peak RSS (this process + Ray workers) while converting a cohort
and one twice as large (goal: no growth, frames are streamed one shard at a time).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from memory import PeakRSS  # noqa: E402

from lch.conversion import convert_movie  # noqa: E402
from lch.manifest import load_manifest  # noqa: E402
from lch.pipelines.ingest import convert_cohort  # noqa: E402
from lch.pipelines.runtime import WORKER_ENV, init_ray  # noqa: E402
from lch.synth import make_cohort  # noqa: E402


def sequential(manifest_path: Path, out: Path) -> float:
    """Seconds for this process to convert every movie, one after another."""
    manifest = load_manifest(manifest_path)
    started = time.perf_counter()
    for movie in manifest.movies:
        result = convert_movie(
            manifest.source_path(movie), out / f"{movie.id}.ome.zarr", movie=movie.id,
            provenance={"movie": movie.id},
        )
        assert result.status == "ok", result.message
    return time.perf_counter() - started


def sequential_in_subprocess(manifest_path: Path, out: Path, env: dict) -> float:
    proc = subprocess.run(
        [sys.executable, __file__, "--baseline", str(manifest_path), str(out)],
        env={**os.environ, **env}, capture_output=True, text=True, check=True,
    )
    return float(proc.stdout.split()[-1])


def cohort_bytes(manifest_path: Path) -> int:
    manifest = load_manifest(manifest_path)
    return sum(manifest.source_path(m).stat().st_size for m in manifest.movies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50, help="frames per movie (512², 8 movies)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--baseline", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        print(sequential(*args.baseline))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lch-bench-ingest-"))
    os.environ["LCH_HOME"] = str(work / "home")

    small = make_cohort(work / "c1", name="bench1", patients=4, movies_per_patient=2,
                        frames=args.frames, size=(512, 512), seed=1)
    large = make_cohort(work / "c2", name="bench2", patients=4, movies_per_patient=4,
                        frames=args.frames, size=(512, 512), seed=2)
    mb = cohort_bytes(small) / 1e6
    print(f"cohort: 8 movies × {args.frames} frames of 512² uint16 = {mb:.0f} MB")

    one_core = sequential_in_subprocess(small, work / "seq1", WORKER_ENV)
    threaded = sequential_in_subprocess(small, work / "seq2", {})
    init_ray()
    with PeakRSS() as small_mem:
        summary = convert_cohort(small, progress=False)
    assert not summary.failed, summary.format()
    ray_s = summary.seconds
    print(f"one process, codecs on one thread:  {mb / one_core:7.1f} MB/s ({one_core:.2f} s)")
    print(f"one process, default codec threads: {mb / threaded:7.1f} MB/s ({threaded:.2f} s)")
    print(f"Ray tasks (convert_cohort, cold):   {mb / ray_s:7.1f} MB/s ({ray_s:.2f} s)")

    with PeakRSS() as large_mem:
        summary = convert_cohort(large, progress=False)
    assert not summary.failed, summary.format()
    large_mb = cohort_bytes(large) / 1e6
    warm = summary.seconds * mb / large_mb
    print(f"Ray tasks (2× cohort, warm workers): {large_mb / summary.seconds:6.1f} MB/s")
    print(f"ratio Ray / one process (one-thread codecs): cold {one_core / ray_s:.2f}, "
          f"warm {one_core / warm:.2f}   (goal >= 1.7)")
    print(f"ratio Ray / one process (default threads):   cold {threaded / ray_s:.2f}, "
          f"warm {threaded / warm:.2f}")
    print(f"peak RSS (driver + Ray workers), {mb:.0f} MB cohort:  "
          f"{small_mem.peak / 2**20:6.0f} MiB")
    print(f"peak RSS (driver + Ray workers), {large_mb:.0f} MB cohort: "
          f"{large_mem.peak / 2**20:6.0f} MiB  ({large_mem.peak / small_mem.peak:.2f}×)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
