"""The small AAE that tests/test_exaggerate.py exaggerates with, and the cells it learnt from.

Single-cell crops rendered with :mod:`lch.synth` (high patients: more/longer arms and brighter
halos; body size not planted), and :func:`helpers.train_small_aae` on them for :data:`STEPS`
steps: about two minutes of one CPU thread, the longest setup the suite had. The weights are
kept in ``tests/data`` with the recipe that made them, and :func:`load_model` refuses them when
the recipe or the crops it would draw today differ. To make them again (after a change to
:mod:`lch.synth`, :mod:`lch.model` or this recipe)::

    .venv/bin/python tests/exaggeration_model.py
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # The test session's kernels and threads (tests/conftest.py): the same weights everywhere.
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lch import synth  # noqa: E402
from lch.crops import align_crop  # noqa: E402
from lch.model import AAE, AAEConfig  # noqa: E402

from helpers import SMALL_AAE, train_small_aae  # noqa: E402

MODEL_PATH = Path(__file__).parent / "data" / "exaggeration_aae.pt"
CROP = 64  # a cell with its arms and the halo's background annulus needs ~60 px
BACKGROUND = 1000.0
# Alternating high, low; enough patients that the LDA does not read one patient's quirks (its
# mean radius) into the direction.
N_PATIENTS = 16
CELLS_PER_PATIENT = 50
FIELD_OF_VIEW_UM = CROP * synth.PLAIN_PIXEL_SIZE_UM
STEPS = 2400
SEED = 0
REMAKE = f"make them again with `.venv/bin/python tests/{Path(__file__).name}`"


def _cell_crop(rng: np.random.Generator, patient: synth.PatientParams) -> np.ndarray:
    """One synthetic cell near the centre of a 64x64 frame, as a flat-field ratio crop.

    The exaggeration trends are measured on this known, flat background; the crops of
    :mod:`lch.crops` (background-relative contrast, tanh-compressed) are not used here yet.
    """
    cell = synth.sample_cell(rng, patient, 1)
    cy, cx = (CROP - 1) / 2 + rng.uniform(-1.0, 1.0, 2)
    shape = synth.CellShape(
        label=1,
        y=float(cy),
        x=float(cx),
        radius=cell.radius,
        darkness=cell.darkness,
        halo_gain=cell.halo_gain,
        wobble=cell.wobble,
        wobble_phase=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, len(cell.wobble))),
        arm_angles=cell.arm_angles,
        arm_lengths=cell.arm_lengths,
    )
    frame, _ = synth.render_frame([shape], (CROP, CROP), background=BACKGROUND, rng=rng)
    # The flat background is known here: background at 0.5, and lch.crops' orientation
    # (longest extension along +x).
    crop = np.clip(0.5 * frame / BACKGROUND, 0.0, 1.0).astype(np.float32)
    return align_crop(crop, pixel_size_um=synth.PLAIN_PIXEL_SIZE_UM)


def synthetic_crops(seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(N, 64, 64) crops and their patients' labels ("high"/"low")."""
    crops, labels = [], []
    for p in range(N_PATIENTS):
        label = synth.class_of_patient(p)
        rng = np.random.default_rng((seed, p))
        patient = synth.sample_patient(rng, f"p{p}", label)
        crops += [_cell_crop(rng, patient) for _ in range(CELLS_PER_PATIENT)]
        labels += [label] * CELLS_PER_PATIENT
    return np.stack(crops), np.array(labels)


def recipe(crops: np.ndarray) -> dict:
    """What the stored weights must have been made from: this recipe and exactly these crops.

    Plain JSON values (lists, not tuples), as the file gives them back.
    """
    return json.loads(json.dumps({
        "steps": STEPS, "seed": SEED, "aae": SMALL_AAE, "field_of_view_um": FIELD_OF_VIEW_UM,
        "crops_sha256": hashlib.sha256(np.ascontiguousarray(crops).tobytes()).hexdigest(),
    }))


def model_config() -> AAEConfig:
    """The stored model's configuration."""
    return AAEConfig(crop_size=CROP, field_of_view_um=FIELD_OF_VIEW_UM, **SMALL_AAE)


def load_model(crops: np.ndarray) -> AAE:
    """The stored AAE (eval mode), once its recipe is checked against ``crops``.

    Raises
    ------
    RuntimeError
        If the file is missing, was made by another recipe or from other crops, or no longer
        fits :class:`lch.model.AAE`.
    """
    if not MODEL_PATH.exists():
        raise RuntimeError(f"{MODEL_PATH} is missing: {REMAKE}")
    stored = torch.load(MODEL_PATH, map_location="cpu", weights_only=True)
    expected = recipe(crops)
    changed = sorted(k for k in expected if stored["recipe"].get(k) != expected[k])
    if changed:
        raise RuntimeError(f"{MODEL_PATH} was made with other {', '.join(changed)}: {REMAKE}")
    aae = AAE(model_config())
    try:
        aae.load_state_dict(stored["state_dict"])
    except RuntimeError as exc:
        raise RuntimeError(f"{MODEL_PATH} no longer fits lch.model.AAE ({exc}): {REMAKE}") from exc
    return aae.eval()


def main() -> None:
    torch.set_num_threads(1)
    crops, _ = synthetic_crops()
    aae = train_small_aae(crops, STEPS, FIELD_OF_VIEW_UM, seed=SEED)
    torch.save({"recipe": recipe(crops), "state_dict": aae.state_dict()}, MODEL_PATH)
    print(f"wrote {MODEL_PATH} ({MODEL_PATH.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    sys.exit(main())
