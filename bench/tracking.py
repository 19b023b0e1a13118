"""Benchmark: link accuracy of LCH's tracking against the generator's truth, on the default
synthetic cohort and on denser, faster-moving ones.

Run: ``.venv/bin/python bench/tracking.py``

For each cohort, every frame is segmented by LCH, each detected cell matched to its true cell
(IoU >= 0.5), the cells linked with :func:`lch.tracking.link_tracks`, and the links scored
(:func:`lch.tracking_scores.link_scores`): the fraction of true consecutive-frame links recovered
and the fraction of links made that join two different cells. "Denser" multiplies the cells per
frame; "faster" runs the generator's random walk several steps per frame.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from unittest import mock

import pandas as pd
import tifffile

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from test_tracking import _matched_cells  # noqa: E402

from lch import synth  # noqa: E402
from lch.tracking import link_tracks  # noqa: E402
from lch.tracking_scores import link_scores  # noqa: E402

COHORTS = {"default": (1, 1), "2x denser": (2, 1), "2x faster": (1, 2),
           "3x denser, 3x faster": (3, 3)}


def _scores(density: int, speed: int, seed: int = 3) -> dict[str, float]:
    step = synth._step_motion

    def faster(rng, motions, ext, size):
        for _ in range(speed):
            step(rng, motions, ext, size)

    with tempfile.TemporaryDirectory() as tmp, \
            mock.patch.object(synth, "CELLS_PER_PIXEL", synth.CELLS_PER_PIXEL * density), \
            mock.patch.object(synth, "_step_motion", faster):
        root = Path(tmp)
        synth.make_cohort(root, seed=seed, look="plain", size=(256, 256))
        truth = synth.read_truth(root)
        px, interval = truth["pixel_size_um"], truth["frame_interval_s"]
        totals = {"true_links": 0, "made_links": 0, "recovered": 0.0, "false": 0.0}
        for movie in truth["movies"]:
            frames = tifffile.imread(root / "raw" / f"{movie['id']}.tif")
            masks = tifffile.imread(root / movie["labels_path"])
            cells = pd.concat([_matched_cells(f, m, px).assign(frame=t)
                               for t, (f, m) in enumerate(zip(frames, masks, strict=True))])
            cells = cells.reset_index(drop=True)
            track = link_tracks(cells, pixel_size_um=px, frame_interval_s=interval)
            s = link_scores(cells["frame"], track, cells["truth"])
            totals["true_links"] += s["true_links"]
            totals["made_links"] += s["made_links"]
            totals["recovered"] += s["recovered"] * s["true_links"]
            totals["false"] += s["false"] * s["made_links"]
    return {"true links": totals["true_links"],
            "recovered": totals["recovered"] / totals["true_links"],
            "false": totals["false"] / max(totals["made_links"], 1)}


def main() -> None:
    print(f"{'cohort':<22} {'true links':>10} {'recovered':>10} {'false':>7}")
    for name, (density, speed) in COHORTS.items():
        s = _scores(density, speed)
        print(f"{name:<22} {s['true links']:>10} {s['recovered']:>10.3f} {s['false']:>7.3f}",
              flush=True)


if __name__ == "__main__":
    main()
