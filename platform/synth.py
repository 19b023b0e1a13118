"""Synthetic phase-contrast cohorts with a planted metastatic phenotype.

Each patient (cell line) is "high" or "low" metastatic. Following Zaritsky et al. (Cell Systems
2021), high lines get more and longer arm-like protrusions and a brighter halo ("light
scattering"); body size is drawn from the same distribution for both classes so that it can serve
as a negative control. Per-patient and per-cell variability make single cells overlap between the
classes, while populations of about 20 cells separate cleanly.

Written layout (paths in the manifest are relative to it)::

    out_dir/cohort.yaml                   manifest (the format in README.md)
    out_dir/truth.yaml                    every planted parameter, seed and generator version
    out_dir/raw/<movie>.tif               T x Y x X uint16 phase-contrast-like movie
    out_dir/truth/<movie>_labels.tif      T x Y x X uint16 ground-truth labels (0 = background)

Image model, per pixel: ``counts = background(y, x) * (1 + blur(delta))`` plus Poisson and
Gaussian read noise, where ``delta`` is ``-darkness`` inside a cell and
``halo_gain * exp(-(d - 0.5) / HALO_WIDTH)`` at distance ``d`` outside it. Intensities are
proportional to light (no camera offset), so ratios to the background are meaningful.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import yaml
from scipy import ndimage

from lch.paths import is_valid_name

GENERATOR_VERSION = "1.1"  # 1.1: wider halo gap between the classes
PIXEL_SIZE_UM = 0.65
FRAME_INTERVAL_S = 60
# ~10 cells in a 256 x 256 frame; bigger frames get proportionally more.
CELLS_PER_PIXEL = 10 / (256 * 256)
HALO_WIDTH = 1.8
PSF_SIGMA = 0.9
READ_NOISE = 3.0
MAX_ARMS = 5
MAX_ARM_LENGTH = 16.0
ARM_HALF_WIDTH_BASE = 2.0
ARM_HALF_WIDTH_TIP = 1.0
# Arm length breathes by +-10 % over time; extents must allow for the longest state.
ARM_LENGTH_SWING = 0.10
MIN_GAP = 6.0
# Class-level ranges of each patient's means (uniform). The halo gap between the classes is
# about twice the per-cell spread, so that a small AAE's direction carries the halo, not only arms.
CLASS_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "high": {
        "arm_rate": (1.9, 2.6),
        "arm_length_mean": (9.0, 11.5),
        "halo_gain_mean": (0.45, 0.52),
        "radius_mean": (9.75, 10.25),
        "darkness_mean": (0.30, 0.40),
    },
    "low": {
        "arm_rate": (0.6, 1.1),
        "arm_length_mean": (5.5, 7.0),
        "halo_gain_mean": (0.22, 0.28),
        "radius_mean": (9.75, 10.25),
        "darkness_mean": (0.30, 0.40),
    },
}
CELL_SPREAD = {
    "arm_length_log_sd": 0.3,
    "halo_gain_log_sd": 0.2,
    "radius_sd": 0.8,
    "darkness_sd": 0.03,
}


@dataclass(frozen=True)
class PatientParams:
    """Means from which one patient's cells are drawn."""

    patient: str
    label: str
    arm_rate: float
    arm_length_mean: float
    halo_gain_mean: float
    radius_mean: float
    darkness_mean: float


@dataclass(frozen=True)
class CellParams:
    """Constant parameters of one cell in one movie (its shape still drifts over time)."""

    label: int
    radius: float
    darkness: float
    halo_gain: float
    wobble: tuple[float, ...]
    arm_angles: tuple[float, ...]
    arm_lengths: tuple[float, ...]

    @property
    def n_arms(self) -> int:
        """Number of arms the cell has."""
        return len(self.arm_lengths)

    @property
    def extent(self) -> float:
        """Largest distance from the centre that the cell mask can reach, in px."""
        arm = max(self.arm_lengths, default=0.0) * (1 + ARM_LENGTH_SWING)
        return self.radius * (1 + sum(self.wobble)) + arm + 1.0


@dataclass(frozen=True)
class CellShape:
    """One cell at one instant: everything :func:`render_frame` draws.

    ``wobble[k]`` is the relative amplitude of the body outline's harmonic ``k + 2``;
    ``arm_angles`` are in radians (0 = +x, pi/2 = +y); ``arm_lengths`` are px beyond the body edge.
    """

    label: int
    y: float
    x: float
    radius: float
    darkness: float = 0.35
    halo_gain: float = 0.4
    wobble: tuple[float, ...] = ()
    wobble_phase: tuple[float, ...] = ()
    arm_angles: tuple[float, ...] = ()
    arm_lengths: tuple[float, ...] = ()

    @property
    def extent(self) -> float:
        """Largest distance from the centre that this shape's mask reaches, in px."""
        return self.radius * (1 + sum(self.wobble)) + max(self.arm_lengths, default=0.0) + 1.0


@dataclass
class _Motion:
    """Time-varying state of one cell: position, velocity and shape drift."""

    y: float
    x: float
    vy: float = 0.0
    vx: float = 0.0
    angle_offsets: np.ndarray = field(default_factory=lambda: np.zeros(0))
    wobble_phase: np.ndarray = field(default_factory=lambda: np.zeros(3))
    length_phase: np.ndarray = field(default_factory=lambda: np.zeros(0))
    length_period: np.ndarray = field(default_factory=lambda: np.zeros(0))


# ---------------------------------------------------------------- parameters


def class_of_patient(index: int) -> str:
    """Patients alternate high, low, high, ... so the classes stay balanced."""
    return "high" if index % 2 == 0 else "low"


def sample_patient(rng: np.random.Generator, patient: str, label: str) -> PatientParams:
    """Draw one patient's means from its class's ranges."""
    ranges = CLASS_RANGES[label]
    means = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in ranges.items()}
    return PatientParams(patient=patient, label=label, **means)


def _spread_angles(rng: np.random.Generator, n: int) -> tuple[float, ...]:
    """Random arm directions at least ~50 degrees apart, so arms never merge."""
    min_sep = 2 * math.pi / 7
    angles: list[float] = []
    for _ in range(200):
        if len(angles) == n:
            break
        a = float(rng.uniform(0, 2 * math.pi))
        diffs = [abs((a - b + math.pi) % (2 * math.pi) - math.pi) for b in angles]
        if all(d >= min_sep for d in diffs):
            angles.append(a)
    return tuple(angles)


def sample_cell(rng: np.random.Generator, patient: PatientParams, label: int) -> CellParams:
    """Draw one cell's parameters around its patient's means."""
    n_arms = min(int(rng.poisson(patient.arm_rate)), MAX_ARMS)
    angles = _spread_angles(rng, n_arms)
    lengths = patient.arm_length_mean * rng.lognormal(
        0.0, CELL_SPREAD["arm_length_log_sd"], len(angles)
    )
    lengths = np.clip(lengths, 3.0, MAX_ARM_LENGTH)
    halo = patient.halo_gain_mean * rng.lognormal(0.0, CELL_SPREAD["halo_gain_log_sd"])
    radius = np.clip(rng.normal(patient.radius_mean, CELL_SPREAD["radius_sd"]), 8.0, 12.0)
    darkness = np.clip(rng.normal(patient.darkness_mean, CELL_SPREAD["darkness_sd"]), 0.2, 0.5)
    wobble = (rng.uniform(0.03, 0.08), rng.uniform(0.0, 0.04), rng.uniform(0.0, 0.03))
    return CellParams(
        label=label,
        radius=_r(radius),
        darkness=_r(darkness),
        halo_gain=_r(halo),
        wobble=tuple(_r(w) for w in wobble),
        arm_angles=tuple(_r(a) for a in angles),
        arm_lengths=tuple(_r(length) for length in lengths),
    )


def _r(value: float) -> float:
    """Round so that what truth.yaml records is exactly what was rendered."""
    return round(float(value), 4)


# ---------------------------------------------------------------- rendering


def _body_radius(shape: CellShape, theta: np.ndarray) -> np.ndarray:
    r = np.ones_like(theta)
    phases = shape.wobble_phase or (0.0,) * len(shape.wobble)
    for k, (amp, phase) in enumerate(zip(shape.wobble, phases, strict=True), start=2):
        r += amp * np.cos(k * theta + phase)
    return shape.radius * r


def _arm_mask(shape: CellShape, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Tapered rods from the centre to ``length`` px beyond the body edge."""
    mask = np.zeros(yy.shape, dtype=bool)
    for angle, length in zip(shape.arm_angles, shape.arm_lengths, strict=True):
        uy, ux = math.sin(angle), math.cos(angle)
        along = xx * ux + yy * uy
        across = np.abs(yy * ux - xx * uy)
        edge = float(_body_radius(shape, np.array([angle]))[0])
        frac = np.clip((along - edge) / max(length, 1e-6), 0.0, 1.0)
        half_width = ARM_HALF_WIDTH_BASE + (ARM_HALF_WIDTH_TIP - ARM_HALF_WIDTH_BASE) * frac
        mask |= (along >= 0) & (along <= edge + length) & (across <= half_width)
    return mask


def render_cell(shape: CellShape) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Render one cell in a square window around its centre.

    Returns
    -------
    y0, x0 : int
        Frame coordinates of the window's top-left pixel (may be negative).
    mask : numpy.ndarray of bool
        The cell (body and arms).
    delta : numpy.ndarray of float32
        Relative intensity change: ``-darkness`` inside, the halo outside.
    """
    half = int(math.ceil(shape.extent + 5 * HALO_WIDTH)) + 1
    y0, x0 = int(round(shape.y)) - half, int(round(shape.x)) - half
    offsets = np.arange(2 * half + 1, dtype=np.float64)
    yy, xx = np.meshgrid(offsets + y0 - shape.y, offsets + x0 - shape.x, indexing="ij")
    rho, theta = np.hypot(yy, xx), np.arctan2(yy, xx)
    mask = (rho <= _body_radius(shape, theta)) | _arm_mask(shape, yy, xx)
    outside = ndimage.distance_transform_edt(~mask)
    halo = shape.halo_gain * np.exp(-(outside - 0.5) / HALO_WIDTH)
    delta = np.where(mask, -shape.darkness, halo).astype(np.float32)
    return y0, x0, mask, delta


def _overlap(shape: tuple[int, int], y0: int, x0: int, patch_shape: tuple[int, ...]):
    """Slices of the frame and of a patch placed at ``(y0, x0)`` that overlap (or None)."""
    ty0, tx0 = max(y0, 0), max(x0, 0)
    ty1, tx1 = min(y0 + patch_shape[0], shape[0]), min(x0 + patch_shape[1], shape[1])
    if ty0 >= ty1 or tx0 >= tx1:
        return None
    frame_sl = (slice(ty0, ty1), slice(tx0, tx1))
    patch_sl = (slice(ty0 - y0, ty1 - y0), slice(tx0 - x0, tx1 - x0))
    return frame_sl, patch_sl


def render_frame(
    cells: Sequence[CellShape],
    size: tuple[int, int] = (64, 64),
    *,
    background: float | np.ndarray = 1000.0,
    rng: np.random.Generator | None = None,
    psf_sigma: float = PSF_SIGMA,
    read_noise: float = READ_NOISE,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one phase-contrast-like frame and its ground-truth labels.

    Parameters
    ----------
    cells
        Cells to draw; their masks must not overlap (later ones win).
    size
        ``(height, width)`` in px.
    background
        Background level in counts, scalar or a ``size`` array (uneven illumination).
    rng
        Noise source; ``None`` renders the noise-free expected image.
    psf_sigma
        Gaussian blur (px) standing in for the optics.
    read_noise
        Standard deviation of the additive camera noise, in counts.

    Returns
    -------
    frame : numpy.ndarray of uint16, shape ``size``
    labels : numpy.ndarray of uint16, shape ``size``
    """
    delta = np.zeros(size, dtype=np.float32)
    labels = np.zeros(size, dtype=np.uint16)
    for cell in cells:
        y0, x0, mask, patch = render_cell(cell)
        where = _overlap(size, y0, x0, mask.shape)
        if where is None:
            continue
        frame_sl, patch_sl = where
        delta[frame_sl] += patch[patch_sl]
        labels[frame_sl][mask[patch_sl]] = cell.label
    if psf_sigma > 0:
        delta = ndimage.gaussian_filter(delta, psf_sigma)
    expected = np.asarray(background, dtype=np.float32) * (1.0 + delta)
    if rng is not None:
        expected = rng.poisson(np.maximum(expected, 0)).astype(np.float32)
        expected += rng.normal(0.0, read_noise, size).astype(np.float32)
    frame = np.clip(np.rint(expected), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return frame, labels


def background_field(rng: np.random.Generator, size: tuple[int, int], level: float) -> np.ndarray:
    """Smooth uneven illumination: a tilt plus a few low-frequency waves, about +-15 %."""
    h, w = size
    yy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    field_ = 1.0 + rng.uniform(-0.1, 0.1) * yy + rng.uniform(-0.1, 0.1) * xx
    for _ in range(3):
        fy, fx = rng.uniform(-1.5, 1.5, 2)
        field_ = field_ + rng.uniform(0.01, 0.04) * np.cos(
            2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 2 * np.pi)
        )
    return (level * field_).astype(np.float32)


# ---------------------------------------------------------------- motion


def _fits(
    pos: np.ndarray, i: int, y: float, x: float, ext: np.ndarray, size: tuple[int, int]
) -> bool:
    """Inside the frame (whole extent) and clear of every other placed cell."""
    h, w = size
    if not (ext[i] <= y <= h - 1 - ext[i] and ext[i] <= x <= w - 1 - ext[i]):
        return False
    others = np.arange(len(pos)) != i
    placed = others & ~np.isnan(pos[:, 0])
    dist = np.hypot(pos[placed, 0] - y, pos[placed, 1] - x)
    return bool(np.all(dist >= ext[i] + ext[placed] + MIN_GAP))


def place_cells(
    rng: np.random.Generator, extents: np.ndarray, size: tuple[int, int], tries: int = 300
) -> np.ndarray:
    """Random sequential placement; returns ``(n, 2)`` centres, NaN where a cell did not fit."""
    pos = np.full((len(extents), 2), np.nan)
    for i in np.argsort(-extents, kind="stable"):
        for _ in range(tries):
            y, x = rng.uniform(0, size[0]), rng.uniform(0, size[1])
            if _fits(pos, int(i), y, x, extents, size):
                pos[i] = (y, x)
                break
    return pos


def _init_motion(rng: np.random.Generator, cell: CellParams, y: float, x: float) -> _Motion:
    return _Motion(
        y=y,
        x=x,
        angle_offsets=np.zeros(cell.n_arms),
        wobble_phase=rng.uniform(0, 2 * np.pi, 3),
        length_phase=rng.uniform(0, 2 * np.pi, cell.n_arms),
        length_period=rng.uniform(15, 40, cell.n_arms),
    )


def _step_motion(
    rng: np.random.Generator, motions: list[_Motion], ext: np.ndarray, size: tuple[int, int]
) -> None:
    """Move the cells one frame by a persistent random walk of a few px.

    A blocked move reverses the velocity.
    """
    pos = np.array([[m.y, m.x] for m in motions], dtype=np.float64).reshape(-1, 2)
    for i, m in enumerate(motions):
        v = 0.8 * np.array([m.vy, m.vx]) + rng.normal(0.0, 0.9, 2)
        speed = float(np.hypot(*v))
        if speed > 3.0:
            v *= 3.0 / speed
        if _fits(pos, i, m.y + v[0], m.x + v[1], ext, size):
            m.y, m.x = m.y + float(v[0]), m.x + float(v[1])
            pos[i] = (m.y, m.x)
            m.vy, m.vx = float(v[0]), float(v[1])
        else:
            m.vy, m.vx = -float(v[0]), -float(v[1])
        # Mean-reverting drift keeps arms apart however long the movie is.
        m.angle_offsets = 0.95 * m.angle_offsets + rng.normal(0.0, 0.03, m.angle_offsets.size)
        m.wobble_phase = m.wobble_phase + rng.normal(0.0, 0.05, 3)


def _shape_at(cell: CellParams, m: _Motion, t: int) -> CellShape:
    swing = 1 + ARM_LENGTH_SWING * np.sin(2 * np.pi * t / m.length_period + m.length_phase)
    return CellShape(
        label=cell.label,
        y=m.y,
        x=m.x,
        radius=cell.radius,
        darkness=cell.darkness,
        halo_gain=cell.halo_gain,
        wobble=cell.wobble,
        wobble_phase=tuple(float(p) for p in m.wobble_phase),
        arm_angles=tuple(float(a) for a in np.asarray(cell.arm_angles) + m.angle_offsets),
        arm_lengths=tuple(float(v) for v in np.asarray(cell.arm_lengths) * swing),
    )


# ---------------------------------------------------------------- movies and cohorts


@dataclass
class MovieSpec:
    """Everything needed to render one movie, frame by frame."""

    movie_id: str
    patient: PatientParams
    cells: list[CellParams]
    background_level: float
    seed: tuple[int, ...]


def plan_movie(
    seed: int,
    p_index: int,
    m_index: int,
    patient: PatientParams,
    movie_id: str,
    size: tuple[int, int],
) -> tuple[MovieSpec, np.ndarray, np.random.Generator]:
    """Draw a movie's cells and place them; returns the spec, centres and the movie's rng."""
    movie_seed = (seed, 1, p_index, m_index)
    rng = np.random.default_rng(movie_seed)
    n_target = max(1, int(round(CELLS_PER_PIXEL * size[0] * size[1])))
    candidates = [sample_cell(rng, patient, 0) for _ in range(n_target)]
    pos = place_cells(rng, np.array([c.extent for c in candidates]), size)
    placed = [i for i in range(n_target) if not np.isnan(pos[i, 0])]
    cells = [_relabel(candidates[i], k + 1) for k, i in enumerate(placed)]
    level = _r(rng.uniform(600.0, 1400.0))
    spec = MovieSpec(movie_id, patient, cells, level, movie_seed)
    return spec, pos[placed], rng


def _relabel(cell: CellParams, label: int) -> CellParams:
    return CellParams(**{**asdict(cell), "label": label})


def iter_movie(
    spec: MovieSpec,
    centres: np.ndarray,
    rng: np.random.Generator,
    frames: int,
    size: tuple[int, int],
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(frame, labels)`` one time point at a time (never the whole movie)."""
    background = background_field(rng, size, spec.background_level)
    motions = [
        _init_motion(rng, c, float(y), float(x))
        for c, (y, x) in zip(spec.cells, centres, strict=True)
    ]
    ext = np.array([c.extent for c in spec.cells])
    for t in range(frames):
        if t > 0:
            _step_motion(rng, motions, ext, size)
        shapes = [_shape_at(c, m, t) for c, m in zip(spec.cells, motions, strict=True)]
        flicker = 1.0 + rng.normal(0.0, 0.01)
        yield render_frame(shapes, size, background=background * flicker, rng=rng)


def _write_movie(
    spec: MovieSpec,
    centres: np.ndarray,
    rng: np.random.Generator,
    out_dir: Path,
    frames: int,
    size: tuple[int, int],
) -> None:
    raw = out_dir / "raw" / f"{spec.movie_id}.tif"
    truth = out_dir / "truth" / f"{spec.movie_id}_labels.tif"
    with tifffile.TiffWriter(raw) as tw_raw, tifffile.TiffWriter(truth) as tw_lab:
        for frame, labels in iter_movie(spec, centres, rng, frames, size):
            tw_raw.write(frame, contiguous=True)
            tw_lab.write(labels, contiguous=True)


def _manifest_entry(spec: MovieSpec) -> dict[str, Any]:
    return {
        "id": spec.movie_id,
        "path": f"raw/{spec.movie_id}.tif",
        "patient": spec.patient.patient,
        "cell_line": spec.patient.patient,
        "label": spec.patient.label,
        "pixel_size_um": PIXEL_SIZE_UM,
        "frame_interval_s": FRAME_INTERVAL_S,
    }


def _truth_entry(spec: MovieSpec) -> dict[str, Any]:
    cells = []
    for c in spec.cells:
        entry = asdict(c)
        entry = {k: list(v) if isinstance(v, tuple) else v for k, v in entry.items()}
        entry["n_arms"] = c.n_arms
        entry["mean_arm_length"] = _r(np.mean(c.arm_lengths)) if c.n_arms else 0.0
        cells.append(entry)
    return {
        "id": spec.movie_id,
        "patient": spec.patient.patient,
        "label": spec.patient.label,
        "labels_path": f"truth/{spec.movie_id}_labels.tif",
        "seed": list(spec.seed),
        "background_level": spec.background_level,
        "n_cells": len(spec.cells),
        "cells": cells,
    }


def _dump_yaml(data: Any, path: Path, *, flow_leaves: bool = False) -> None:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    style = None if flow_leaves else False
    with open(path, "w") as fh:
        yaml.dump(data, fh, Dumper=dumper, sort_keys=False, default_flow_style=style)


def make_cohort(
    out_dir: str | Path,
    *,
    name: str = "synth",
    patients: int = 6,
    movies_per_patient: int = 2,
    frames: int = 20,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
) -> Path:
    """Generate a synthetic cohort on disk and return the path of its ``cohort.yaml``.

    Parameters
    ----------
    out_dir
        Folder to write into (created if missing; existing files are overwritten).
    name
        Cohort name written in the manifest.
    patients
        Number of patients (cell lines); classes alternate high, low, ...
    movies_per_patient
        Movies per patient, each with its own cells.
    frames
        Time points per movie.
    size
        ``(height, width)`` of each frame; cells per frame scale with the area.
    seed
        Everything is a deterministic function of this seed.

    Returns
    -------
    pathlib.Path
        ``out_dir / "cohort.yaml"``.
    """
    _check_args(name, patients, movies_per_patient, frames, size)
    size = (int(size[0]), int(size[1]))
    out = Path(out_dir)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(max(patients, movies_per_patient) - 1)))
    patient_params, specs = [], []
    for p in range(patients):
        pid = f"p{p:0{width}d}"
        params = sample_patient(np.random.default_rng((seed, 0, p)), pid, class_of_patient(p))
        patient_params.append(params)
        for m in range(movies_per_patient):
            movie_id = f"{pid}-m{m:0{width}d}"
            spec, centres, rng = plan_movie(seed, p, m, params, movie_id, size)
            _write_movie(spec, centres, rng, out, frames, size)
            specs.append(spec)
    _dump_yaml({"cohort": name, "movies": [_manifest_entry(s) for s in specs]}, out / "cohort.yaml")
    truth = _truth_document(name, seed, frames, size, patient_params, specs)
    # Short lists stay on one line: truth.yaml can list thousands of cells.
    _dump_yaml(truth, out / "truth.yaml", flow_leaves=True)
    return out / "cohort.yaml"


def _truth_document(
    name: str,
    seed: int,
    frames: int,
    size: tuple[int, int],
    patient_params: list[PatientParams],
    specs: list[MovieSpec],
) -> dict[str, Any]:
    return {
        "generator": "lch.synth",
        "version": GENERATOR_VERSION,
        "cohort": name,
        "seed": seed,
        "frames": frames,
        "size": list(size),
        "pixel_size_um": PIXEL_SIZE_UM,
        "frame_interval_s": FRAME_INTERVAL_S,
        "image_model": {
            "halo_width_px": HALO_WIDTH,
            "psf_sigma_px": PSF_SIGMA,
            "read_noise": READ_NOISE,
            "arm_half_width_px": [ARM_HALF_WIDTH_BASE, ARM_HALF_WIDTH_TIP],
            "arm_length_swing": ARM_LENGTH_SWING,
        },
        "class_ranges": {k: {n: list(r) for n, r in v.items()} for k, v in CLASS_RANGES.items()},
        "cell_spread": dict(CELL_SPREAD),
        "patients": [{k: _plain(v) for k, v in asdict(p).items()} for p in patient_params],
        "movies": [_truth_entry(s) for s in specs],
    }


def _plain(value: Any) -> Any:
    return _r(value) if isinstance(value, float) else value


def _check_args(name: str, patients: int, movies: int, frames: int, size: Sequence[int]) -> None:
    if not is_valid_name(name):
        raise ValueError(f"cohort name {name!r} is not a valid name (letters, digits, . _ -)")
    for field_name, value in (("patients", patients), ("movies_per_patient", movies)):
        if value < 1:
            raise ValueError(f"{field_name} must be >= 1, got {value}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"size must be (height, width) with both >= 32, got {size!r}")


def read_truth(cohort_dir: str | Path) -> dict[str, Any]:
    """Load ``truth.yaml`` from a cohort folder (or from next to its ``cohort.yaml``)."""
    path = Path(cohort_dir)
    if path.is_file():
        path = path.parent
    truth = path / "truth.yaml"
    if not truth.exists():
        raise FileNotFoundError(f"{truth} not found: not a cohort written by lch.synth")
    with open(truth) as fh:
        return yaml.safe_load(fh)
