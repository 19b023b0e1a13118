"""Benchmark: how far `lch synth`'s cells look from the paper's real ones (issue 15, part 6).

Run: ``.venv/bin/python bench/synth_realism.py [--seeds 0 1 2] [--montage out.png]``

For each seed, draws a synthetic cohort (6 patients x 3 movies, 768 px frames at the generator's
default pixel size), cuts one 83.2 µm window per cell (:func:`lch.domain_gap.cell_windows`),
samples as many as there are real crops in tests/data/real (62), and prints the cross-validated
ROC AUC of the domain classifier of :mod:`lch.domain_gap` (0.5: indistinguishable; the target is
<= 0.85), with the features that differ most (standardised mean difference). ``--montage``
writes 12 synthetic windows above 6 real ones, each stretched to its 0.5-99.8 percentiles.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from lch.domain_gap import (  # noqa: E402
    appearance_features,
    default_look_windows,
    domain_auc,
    feature_names,
)

from real_cells import real_images  # noqa: E402


def _display(window: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(window, [0.5, 99.8])
    return (np.clip((window - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--montage", type=Path)
    args = parser.parse_args()
    real = [image for _, image, _ in real_images()]
    real_features = np.stack([appearance_features(w) for w in real])
    aucs = []
    for seed in args.seeds:
        synthetic = default_look_windows(len(real), seed)
        auc = domain_auc(real, synthetic)
        aucs.append(auc)
        features = np.stack([appearance_features(w) for w in synthetic])
        pooled_sd = np.sqrt((features.var(0) + real_features.var(0)) / 2) + 1e-12
        d = (features.mean(0) - real_features.mean(0)) / pooled_sd
        top = ", ".join(f"{feature_names()[i]} {d[i]:+.2f}" for i in np.argsort(-abs(d))[:5])
        print(f"seed {seed}: {len(real)} real vs {len(synthetic)} synthetic windows, "
              f"domain ROC AUC {auc:.3f}; largest differences (SMD): {top}")
        if args.montage and seed == args.seeds[0]:
            from PIL import Image
            from skimage.util import montage

            tiles = [_display(w) for w in synthetic[:12] + real[:6]]
            Image.fromarray(montage(np.stack(tiles), grid_shape=(3, 6))).save(args.montage)
    print(f"domain ROC AUC over seeds: mean {np.mean(aucs):.3f}, max {np.max(aucs):.3f} "
          f"(target <= 0.85)")


if __name__ == "__main__":
    main()
