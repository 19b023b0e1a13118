"""Benchmark: segmentation on the paper's real cells and on a synthetic cohort, new vs old.

Run: ``.venv/bin/python bench/segment_real.py [--repeat 3]``

Prints, for each real crop of tests/data/real (idr0109, 0.325 µm), whether the centre cell came
out as one object and its IoU against the hand-checked reference mask (tests/data/real_masks),
then the totals, the object F1 at IoU >= 0.5 on a synthetic cohort, and frames/s of
:func:`lch.segmentation.segment_frame` against the segmenter it replaced
(``bench/legacy_segmentation.py``, kept here as the baseline) on the same frames, best of
``--repeat``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from legacy_segmentation import segment_frame as legacy_segment_frame  # noqa: E402

from lch.segmentation import segment_frame  # noqa: E402
from lch.segmentation_scores import centre_cell_score, object_f1  # noqa: E402
from lch.synth import PIXEL_SIZE_UM as SYNTH_PIXEL_SIZE_UM  # noqa: E402
from lch.synth import make_cohort, read_truth  # noqa: E402

from real_cells import PIXEL_SIZE_UM, real_images  # noqa: E402


def synthetic_frames(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    make_cohort(folder, patients=4, movies_per_patient=1, frames=6, seed=11)
    out = []
    for movie in read_truth(folder)["movies"]:
        raw = tifffile.imread(folder / "raw" / f"{movie['id']}.tif")
        truth = tifffile.imread(folder / movie["labels_path"])
        out += list(zip(raw, truth, strict=True))
    return out


def f1(segment, frames) -> float:
    counts = np.zeros(3)
    for frame, truth in frames:
        score = object_f1(segment(frame), truth)
        counts += [score["matched"], score["n_pred"], score["n_true"]]
    precision, recall = counts[0] / max(counts[1], 1), counts[0] / counts[2]
    return 2 * precision * recall / max(precision + recall, 1e-12)


def frames_per_s(segment, frames, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for frame in frames:
            segment(frame)
        best = min(best, time.perf_counter() - started)
    return len(frames) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    images = real_images()
    new = lambda img: segment_frame(img, pixel_size_um=PIXEL_SIZE_UM)  # noqa: E731
    rows = {"new": [], "old": []}
    print(f"{'image':<58} {'new':>14} {'old':>14}")
    for name, image, reference in images:
        cells = []
        for key, segment in (("new", new), ("old", legacy_segment_frame)):
            if reference is None:
                cells.append("  (no ref)")
                continue
            score = centre_cell_score(segment(image), reference)
            rows[key].append(score)
            cells.append(f"{score['status']:>10} {score['iou']:.2f}")
        print(f"{name:<58} {cells[0]:>14} {cells[1]:>14}")
    for key, scores in rows.items():
        one = sum(s["status"] == "one" for s in scores)
        iou = np.mean([s["iou"] for s in scores])
        print(f"{key}: centre cell as one object {one}/{len(scores)} ({one / len(scores):.1%}), "
              f"mean IoU {iou:.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = synthetic_frames(Path(tmp))
    new_synth = lambda f: segment_frame(f, pixel_size_um=SYNTH_PIXEL_SIZE_UM)  # noqa: E731
    print(f"synthetic object F1 @ IoU 0.5: new {f1(new_synth, synthetic):.3f}, "
          f"old {f1(legacy_segment_frame, synthetic):.3f}")
    real = [image for _, image, _ in images]
    for what, frames, segment in (("real 256²", real, new), ("synthetic", [f for f, _ in synthetic],
                                                             new_synth)):
        fast, slow = frames_per_s(segment, frames, args.repeat), frames_per_s(
            legacy_segment_frame, frames, args.repeat)
        print(f"frames/s on {what}: new {fast:.1f}, old {slow:.1f} (ratio {fast / slow:.2f})")


if __name__ == "__main__":
    main()
