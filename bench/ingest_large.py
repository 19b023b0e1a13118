"""Benchmark: a microscope-sized OME-TIFF (2048² uint16, 200 frames = 1.7 GB) through ingestion.

Run: ``.venv/bin/python bench/ingest_large.py [--frames 200] [--repeats 3] [--workdir DIR]``

The file is written with tifffile's OME-XML writer, frame by frame (phase-contrast-like: a smooth
uneven background and per-frame noise, so compression works as on real frames). Prints, best of
``--repeats`` for each speed:

- MB/s of ``lch ingest``'s stage (Ray tasks, :func:`lch.pipelines.ingest.convert_cohort`) and of
  one process converting the same file with the same function; their ratio. One position is one
  Ray task, so the stage's parallelism shows on the same bytes written as a two-position file;
- the pyramid's share of a conversion: :func:`lch.omezarr.fill_pyramid` timed alone on the
  stored movie, over the whole conversion's seconds;
- peak RSS (driver + Ray workers) of the Ray stage for 1× and 4× the frames (goal ≤ 1.2×).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import tifffile  # noqa: E402
import yaml  # noqa: E402
from memory import PeakRSS  # noqa: E402
from scipy import ndimage  # noqa: E402

from lch.conversion import convert_movie  # noqa: E402
from lch.omezarr import fill_pyramid  # noqa: E402
from lch.paths import cohort_dir, movie_store  # noqa: E402
from lch.pipelines.ingest import convert_cohort  # noqa: E402
from lch.pipelines.runtime import init_ray  # noqa: E402

SIDE = 2048


def frames(count: int, seed: int) -> Iterator[np.ndarray]:
    """Phase-contrast-like uint16 frames: a smooth uneven field plus fresh noise per frame."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(SIDE // 8, SIDE // 8)), 4)
    field = np.kron(field / field.std(), np.ones((8, 8))) * 300 + 2000
    for _ in range(count):
        noise = rng.integers(-60, 60, size=(SIDE, SIDE), dtype=np.int16)
        yield (field + noise).astype(np.uint16)


def write_ome_tiff(path: Path, count: int, positions: int, seed: int = 0) -> Path:
    """``positions`` positions of ``count // positions`` frames each, one channel, 0.325 µm."""
    per_position = count // positions
    metadata = {"axes": "TCYX", "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325,
                "TimeIncrement": 300.0, "Channel": {"Name": ["Phase"]}}
    with tifffile.TiffWriter(path, ome=True, bigtiff=True) as tif:
        for p in range(positions):
            tif.write(frames(per_position, seed + p), shape=(per_position, 1, SIDE, SIDE),
                      dtype=np.uint16, photometric="minisblack",
                      metadata={**metadata, "Name": f"pos{p}"})
    return path


def manifest_for(source: Path, cohort: str) -> Path:
    path = source.parent / f"{cohort}.yaml"
    entry = {"id": "movie", "path": source.name, "patient": "p1", "label": "high"}
    path.write_text(yaml.safe_dump({"cohort": cohort, "movies": [entry]}))
    return path


def one_process(source: Path, out: Path) -> tuple[float, float]:
    """Seconds for this process to convert the file (the first position), and of that the
    pyramid's seconds (timed again alone on the stored movie)."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = convert_movie(source, out, movie="movie", provenance={})
    seconds = time.perf_counter() - started
    assert result.status == "ok", result.message
    started = time.perf_counter()
    fill_pyramid(out)
    return seconds, time.perf_counter() - started


def ray_stage(manifest: Path, cohort: str, home: Path) -> float:
    """Seconds of the Ray ingestion stage on a manifest (the stores removed first)."""
    shutil.rmtree(cohort_dir(cohort, home), ignore_errors=True)
    summary = convert_cohort(manifest, home=home, progress=False)
    assert summary.count("ok") == len(summary.results), summary.format()
    return summary.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lch-bench-large-"))
    home = work / "home"
    os.environ["LCH_HOME"] = str(home)

    one = write_ome_tiff(work / "one.ome.tif", args.frames, positions=1)
    two = write_ome_tiff(work / "two.ome.tif", args.frames, positions=2)
    mb = one.stat().st_size / 1e6
    print(f"file: {args.frames} frames of {SIDE}² uint16 = {mb:.0f} MB (and as 2 positions)")

    runs = [one_process(one, work / "seq.ome.zarr") for _ in range(args.repeats)]
    seq_s, pyramid_s = min(r[0] for r in runs), min(r[1] for r in runs)
    init_ray()
    ray_one = min(ray_stage(manifest_for(one, "one"), "one", home) for _ in range(args.repeats))
    ray_two = min(ray_stage(manifest_for(two, "two"), "two", home) for _ in range(args.repeats))
    print(f"one process (convert_movie):       {mb / seq_s:7.1f} MB/s ({seq_s:.1f} s)")
    print(f"Ray stage, 1 position (1 task):    {mb / ray_one:7.1f} MB/s ({ray_one:.1f} s)  "
          f"ratio {seq_s / ray_one:.2f}")
    print(f"Ray stage, 2 positions (2 tasks):  {mb / ray_two:7.1f} MB/s ({ray_two:.1f} s)  "
          f"ratio {seq_s / ray_two:.2f}")
    print(f"pyramid (fill_pyramid alone):      {pyramid_s:.1f} s = "
          f"{pyramid_s / seq_s:.0%} of the conversion")

    with PeakRSS() as small:
        ray_stage(manifest_for(one, "one"), "one", home)
    shutil.rmtree(home, ignore_errors=True)
    one.unlink()
    two.unlink()
    big = write_ome_tiff(work / "big.ome.tif", 4 * args.frames, positions=1)
    with PeakRSS() as large:
        ray_stage(manifest_for(big, "big"), "big", home)
    print(f"peak RSS (driver + Ray workers), {args.frames} frames:  {small.peak / 2**20:6.0f} MiB")
    print(f"peak RSS (driver + Ray workers), {4 * args.frames} frames: "
          f"{large.peak / 2**20:6.0f} MiB  ({large.peak / small.peak:.2f}×, goal ≤ 1.2)")
    assert movie_store("big", "movie", home).exists()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
