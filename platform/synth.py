"""Synthetic phase-contrast cohorts with a planted metastatic phenotype.

Each patient (cell line) is "high" or "low" metastatic. Following Zaritsky et al. (Cell Systems
2021), high lines get more and longer arm-like protrusions and a brighter halo ("light
scattering"); body size is drawn from the same distribution for both classes so that it can serve
as a negative control. Per-patient and per-cell variability make single cells overlap between the
classes, while populations of about 20 cells separate cleanly.

In the real look the control is matched by design, not only in distribution: each low line has
the size and brightness means of the high line before it (:func:`matched_controls`), and a frame's
cells are placed first and given their sizes after (:func:`fit_sizes`), sizes spread evenly over
that distribution with its mean (:func:`movie_radii`). Otherwise crowded frames (the high lines'
long arms) keep their larger cells, and a cohort of eight lines differs in size by chance: a size
difference the classifier learns and the exaggeration then shows.

Written layout (paths in the manifest are relative to it)::

    out_dir/cohort.yaml                   manifest (the format in README.md)
    out_dir/truth.yaml                    every planted parameter, seed and generator version
    out_dir/raw/<movie>.tif               T x Y x X uint16 phase-contrast-like movie
    out_dir/truth/<movie>_labels.tif      T x Y x X uint16 ground-truth labels (0 = background)

Two looks draw the same kind of cohort (``make_cohort(look=...)``):

- ``"real"`` (the default, :class:`Appearance`, every length in µm, 0.325 µm pixels by default):
  drawn to look like the paper's phase-contrast crops (tests/data/real) as judged by
  :mod:`lch.domain_gap`: bright granular bodies with a brighter rim and a halo fading out from
  the body, round, oval and elongated cells, thin arms with a dark core and bright edges, a dark
  mottled background with fine grain, small bright debris that is not a cell, uneven
  illumination, Poisson and read noise.
- ``"plain"``: the first image model, the primitive :func:`render_frame` draws (px units at
  :data:`PLAIN_PIXEL_SIZE_UM`): per pixel ``counts = background(y, x) * (1 + blur(delta))`` plus
  Poisson and Gaussian read noise, where ``delta`` is ``-darkness`` inside a cell and
  ``halo_gain * exp(-(d - 0.5) / HALO_WIDTH)`` at distance ``d`` outside it: solid dark discs on a
  light background.

Intensities are proportional to light (no camera offset), so ratios to the background are
meaningful.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import yaml
from scipy import ndimage, special

from lch.paths import is_valid_name

# 2.3 (real look): size matched between the classes by design (the module docstring).
GENERATOR_VERSION = "2.3"
# make_cohort's default pixel size (the paper's microscope).
PIXEL_SIZE_UM = 0.325
# The scale of the plain primitives' px values (CellShape, render_frame, sample_cell,
# CLASS_RANGES): the plain look is drawn at it.
PLAIN_PIXEL_SIZE_UM = 0.65
LOOKS = ("real", "plain")
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
# Real-look frames placed afresh until every cell takes the size it was given (fit_sizes).
PLACEMENT_TRIES = 5
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
    brightness_mean: float = 0.0


@dataclass(frozen=True)
class CellParams:
    """Constant parameters of one cell in one movie (its shape still drifts over time).

    Lengths are px at :data:`PLAIN_PIXEL_SIZE_UM` in the plain look, µm in the real one (where
    the body is bright: ``brightness`` relative to the background, its interior dimmed by
    ``darkness`` below a rim ``rim_gain`` brighter, an elongation ``aspect`` along
    ``orientation``).
    """

    label: int
    radius: float
    darkness: float
    halo_gain: float
    wobble: tuple[float, ...]
    arm_angles: tuple[float, ...]
    arm_lengths: tuple[float, ...]
    aspect: float = 1.0
    orientation: float = 0.0
    brightness: float = 0.0
    rim_gain: float = 0.0

    @property
    def n_arms(self) -> int:
        """Number of arms the cell has."""
        return len(self.arm_lengths)

    def body_reach(self, radius: float | None = None) -> float:
        """Largest distance from the centre the body reaches, at ``radius`` (default its own)."""
        radius = self.radius if radius is None else radius
        return radius * math.sqrt(self.aspect) * (1 + sum(self.wobble)) + 1.0

    def reach(self, radius: float | None = None) -> float:
        """Largest distance from the centre the body and the longest arm reach, at ``radius``."""
        arm = max(self.arm_lengths, default=0.0) * (1 + ARM_LENGTH_SWING)
        return self.body_reach(radius) + arm


@dataclass(frozen=True)
class CellShape:
    """One cell at one instant: everything :func:`render_frame` draws.

    ``wobble[k]`` is the relative amplitude of the body outline's harmonic ``k + 2``;
    ``arm_angles`` are in radians (0 = +x, pi/2 = +y); ``arm_lengths`` are px beyond the body edge.
    An ``aspect`` above 1 stretches the body into an ellipse of the same area, its long axis at
    ``orientation``; ``arm_half_width`` is the arms' half-width at the body and at the tip, px.
    ``brightness`` and ``rim_gain`` are used by the real look only (:func:`render_look_frame`).
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
    aspect: float = 1.0
    orientation: float = 0.0
    arm_half_width: tuple[float, float] = (ARM_HALF_WIDTH_BASE, ARM_HALF_WIDTH_TIP)
    brightness: float = 0.0
    rim_gain: float = 0.0

    @property
    def extent(self) -> float:
        """Largest distance from the centre that this shape's mask reaches, in px."""
        body = self.radius * math.sqrt(self.aspect) * (1 + sum(self.wobble))
        return body + max(self.arm_lengths, default=0.0) + 1.0


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


def _spread_angles(
    rng: np.random.Generator, n: int, first: Sequence[float] = ()
) -> tuple[float, ...]:
    """Random arm directions at least ~50 degrees apart, so arms never merge (after ``first``)."""
    min_sep = 2 * math.pi / 7
    angles: list[float] = list(first[:n])
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
    if shape.aspect != 1.0:
        # An ellipse of the disc's area: semi-axes radius * sqrt(aspect) and radius / sqrt(aspect).
        phi = theta - shape.orientation
        root = math.sqrt(shape.aspect)
        r = r / np.sqrt((np.cos(phi) / root) ** 2 + (np.sin(phi) * root) ** 2)
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
        base, tip = shape.arm_half_width
        half_width = base + (tip - base) * frac
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


# ---------------------------------------------------------------- the real look


def _real_class_ranges() -> dict[str, dict[str, tuple[float, float]]]:
    # Lengths in µm. Radius and brightness are controls: the same in both classes.
    return {
        "high": {
            "arm_rate": (1.9, 2.6),
            "arm_length_mean": (16.0, 22.0),
            "halo_gain_mean": (1.5, 1.8),
            "radius_mean": (8.5, 9.5),
            "brightness_mean": (2.4, 3.2),
        },
        "low": {
            "arm_rate": (0.6, 1.1),
            "arm_length_mean": (5.0, 7.0),
            "halo_gain_mean": (0.6, 0.8),
            "radius_mean": (8.5, 9.5),
            "brightness_mean": (2.4, 3.2),
        },
    }


def _real_cell_spread() -> dict[str, float]:
    return {
        "arm_length_log_sd": 0.3,
        "halo_gain_log_sd": 0.2,
        "radius_log_sd": 0.3,
        "brightness_sd": 0.6,
    }


@dataclass(frozen=True)
class Appearance:
    """The real look: what :func:`make_cohort` draws around the planted cells.

    Every length is in µm (converted with the movie's pixel size), every intensity relative to
    the local background level. All of it is recorded in truth.yaml's ``image_model``.
    """

    # Field
    cells_per_mm2: float = 200.0
    min_gap_um: float = 3.0
    # Body: level = brightness * (1 - darkness + rim_gain * exp(-depth / rim_width_um)) times
    # (1 + granule_sd * a unit texture); darkness dims the interior below the rim.
    granule_um: float = 1.0
    granule_sd: float = 0.35
    rim_width_um: float = 0.9
    rim_gain: tuple[float, float] = (1.0, 2.5)
    interior_darkness: tuple[float, float] = (0.4, 0.95)
    # Halo: halo_gain * (exp(-d / halo_width_um) + skirt * exp(-d / skirt_width_um)) at distance
    # d out from the body (light scattered further out: the skirt).
    halo_width_um: float = 3.0
    skirt: float = 0.25
    skirt_width_um: float = 10.0
    # Shape: one cell in elongated_fraction stretched (same area), the others round or oval.
    elongated_fraction: float = 1 / 3
    aspect_elongated: tuple[float, float] = (1.6, 2.6)
    aspect_round: tuple[float, float] = (1.0, 1.3)
    radius_um: tuple[float, float] = (4.5, 22.0)
    # Cells are placed at this quantile of their line's sizes, then given sizes (fit_sizes).
    placed_radius_quantile: float = 0.75
    wobble: tuple[tuple[float, float], ...] = ((0.03, 0.10), (0.0, 0.05), (0.0, 0.04))
    # Arms: tapered processes, a dim core within bright edges, no halo of their own; wide enough
    # at the base to show at the crops' 1.3 µm pixels.
    arm_half_width_um: tuple[float, float] = (2.0, 0.6)
    arm_length_um: tuple[float, float] = (2.0, 22.0)
    arm_core: float = -0.55
    arm_edge_gain: float = 1.0
    arm_edge_um: float = 0.3
    max_arms: int = MAX_ARMS
    # Background: mottling (static per movie), grain (per frame), debris (small bright specks).
    mottle_um: float = 3.0
    mottle_sd: float = 0.05
    grain_um: float = 0.4
    grain_sd: float = 0.04
    debris_per_mm2: float = 400.0
    debris_radius_um: tuple[float, float] = (0.3, 0.9)
    debris_gain: tuple[float, float] = (0.3, 1.2)
    # Optics and camera.
    psf_sigma_um: float = 0.8
    # Arms are thin and flat, in focus where the body's bulk is not: a sharper blur.
    arm_psf_sigma_um: float = 0.35
    read_noise: float = READ_NOISE
    background_level: tuple[float, float] = (2000.0, 5000.0)
    class_ranges: dict[str, dict[str, tuple[float, float]]] = field(
        default_factory=_real_class_ranges
    )
    cell_spread: dict[str, float] = field(default_factory=_real_cell_spread)

    def record(self) -> dict[str, Any]:
        """Return the settings as plain values for truth.yaml."""
        out = {}
        for key, value in asdict(self).items():
            if key in ("class_ranges", "cell_spread"):
                continue
            out[key] = _plain_nested(value)
        return out


REAL = Appearance()


def _plain_nested(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain_nested(v) for v in value]
    return _r(value) if isinstance(value, float) else value


def sample_real_patient(
    rng: np.random.Generator, patient: str, label: str, look: Appearance = REAL
) -> PatientParams:
    """Draw one patient's means from the real look's class ranges (lengths in µm)."""
    ranges = look.class_ranges[label]
    means = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in ranges.items()}
    return PatientParams(patient=patient, label=label, darkness_mean=0.0, **means)


def sample_real_cell(
    rng: np.random.Generator,
    patient: PatientParams,
    label: int,
    look: Appearance = REAL,
    radius_quantile: float = 0.5,
) -> CellParams:
    """Draw one real-look cell around its patient's means (lengths in µm).

    Its radius is at ``radius_quantile`` of the patient's size distribution (:func:`real_radius`):
    :func:`plan_movie` gives the cells that fit a frame sizes spread over it.
    """
    spread = look.cell_spread
    n_arms = min(int(rng.poisson(patient.arm_rate)), look.max_arms)
    elongated = rng.uniform() < look.elongated_fraction
    orientation = rng.uniform(0, math.pi)
    # Spindle cells' extensions leave from their ends.
    ends = [float((orientation + math.pi * k + rng.normal(0, 0.2)) % (2 * math.pi))
            for k in range(2)] if elongated else []
    angles = _spread_angles(rng, n_arms, ends)
    lengths = patient.arm_length_mean * rng.lognormal(
        0.0, spread["arm_length_log_sd"], len(angles)
    )
    lengths = np.clip(lengths, *look.arm_length_um)
    halo = patient.halo_gain_mean * rng.lognormal(0.0, spread["halo_gain_log_sd"])
    radius = real_radius(patient, look, radius_quantile)
    brightness = np.clip(rng.normal(patient.brightness_mean, spread["brightness_sd"]), 0.8, 6.0)
    aspect = rng.uniform(*(look.aspect_elongated if elongated else look.aspect_round))
    wobble = tuple(rng.uniform(lo, hi) for lo, hi in look.wobble)
    return CellParams(
        label=label,
        radius=_r(radius),
        darkness=_r(rng.uniform(*look.interior_darkness)),
        halo_gain=_r(halo),
        wobble=tuple(_r(w) for w in wobble),
        arm_angles=tuple(_r(a) for a in angles),
        arm_lengths=tuple(_r(length) for length in lengths),
        aspect=_r(aspect),
        orientation=_r(orientation),
        brightness=_r(brightness),
        rim_gain=_r(rng.uniform(*look.rim_gain)),
    )


def real_radius(patient: PatientParams, look: Appearance, quantile: float) -> float:
    """Return the radius at ``quantile`` of the patient's lognormal size distribution, in µm."""
    z = float(special.ndtri(quantile))
    radius = patient.radius_mean * math.exp(look.cell_spread["radius_log_sd"] * z)
    return float(np.clip(radius, *look.radius_um))


def movie_radii(
    rng: np.random.Generator, patient: PatientParams, look: Appearance, n: int
) -> list[float]:
    """Return ``n`` radii spread evenly over the patient's sizes, with its mean size exactly.

    One quantile from the middle half of each of ``n`` equal strata, shuffled, scaled to the
    lognormal's mean: every movie's cells then have the same mean size whatever their number,
    so the classes' sizes do not differ by the luck of the draw or by how many cells fit.
    """
    quantiles = (rng.permutation(n) + rng.uniform(0.25, 0.75, n)) / n
    radii = np.array([real_radius(patient, look, q) for q in quantiles])
    mean = patient.radius_mean * math.exp(look.cell_spread["radius_log_sd"] ** 2 / 2)
    return [_r(r) for r in np.clip(radii * mean / radii.mean(), *look.radius_um)]


def matched_controls(patient: PatientParams, partner: PatientParams) -> PatientParams:
    """``patient`` with ``partner``'s means of the controls (size, brightness).

    A low line takes the high line before it as its partner: the classes then differ in the
    planted features only, not by which patients happened to be larger.
    """
    return replace(patient, radius_mean=partner.radius_mean,
                   brightness_mean=partner.brightness_mean)


def _unit_texture(rng: np.random.Generator, size: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    noise = rng.standard_normal(size).astype(np.float32)
    if sigma_px > 0:
        noise = ndimage.gaussian_filter(noise, sigma_px)
    return noise / max(float(noise.std()), 1e-12)


def _look_cell(
    shape: CellShape, look: Appearance, px: float
) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw one real-look cell in a window around its centre.

    Returns ``(y0, x0, mask, smooth, granular, arm)``: ``smooth`` is the body and halo,
    ``granular`` the amplitude of the body's granules and ``arm`` the arms' signal.
    """
    halo_px = look.halo_width_um / px
    skirt_px = look.skirt_width_um / px
    reach = max(5 * halo_px, 3 * skirt_px if look.skirt > 0 else 0.0)
    half = int(math.ceil(shape.extent + reach)) + 1
    y0, x0 = int(round(shape.y)) - half, int(round(shape.x)) - half
    offsets = np.arange(2 * half + 1, dtype=np.float64)
    yy, xx = np.meshgrid(offsets + y0 - shape.y, offsets + x0 - shape.x, indexing="ij")
    rho, theta = np.hypot(yy, xx), np.arctan2(yy, xx)
    body = rho <= _body_radius(shape, theta)
    arms = _arm_mask(shape, yy, xx) & ~body
    inside = ndimage.distance_transform_edt(body)
    outside = ndimage.distance_transform_edt(~body)
    rim = shape.rim_gain * np.exp(-(inside - 0.5) / (look.rim_width_um / px))
    smooth = np.where(body, shape.brightness * (1 - shape.darkness + rim), 0.0)
    granular = shape.brightness * look.granule_sd * np.where(body, 1.0, 0.0)
    halo = np.exp(-(outside - 0.5) / halo_px) + look.skirt * np.exp(-(outside - 0.5) / skirt_px)
    smooth += np.where(body | arms, 0.0, shape.halo_gain * halo)
    if arms.any():
        # The bright edges lie inside the arm, as a real process's bright border lies inside
        # the outline a person draws around it.
        edge = np.exp(-(ndimage.distance_transform_edt(arms) - 0.5) / (look.arm_edge_um / px))
        bright = look.arm_edge_gain * shape.brightness * edge
        arm_signal = np.where(arms, look.arm_core * (1 - edge) + bright, 0.0)
    else:
        arm_signal = np.zeros_like(smooth)
    return (y0, x0, body | arms, smooth.astype(np.float32), granular.astype(np.float32),
            arm_signal.astype(np.float32))


def debris_field(
    rng: np.random.Generator, size: tuple[int, int], look: Appearance, px: float
) -> np.ndarray:
    """Draw small bright specks (relative intensity), not cells: never in the truth labels."""
    area_mm2 = size[0] * size[1] * (px / 1000) ** 2
    n = int(rng.poisson(look.debris_per_mm2 * area_mm2))
    out = np.zeros(size, dtype=np.float32)
    ys, xs = rng.integers(0, size[0], n), rng.integers(0, size[1], n)
    out[ys, xs] = rng.uniform(*look.debris_gain, n)
    sigma = float(np.mean(look.debris_radius_um)) / px
    # A unit speck's peak after the blur is 1 / (2 pi sigma^2): restore it.
    return ndimage.gaussian_filter(out, sigma) * (2 * math.pi * sigma**2)


def render_look_frame(
    cells: Sequence[CellShape],
    size: tuple[int, int],
    look: Appearance,
    pixel_size_um: float,
    *,
    background: np.ndarray | float,
    static: np.ndarray | float = 0.0,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one real-look frame and its ground-truth labels (cells in px, ``look`` in µm).

    ``background`` is the illumination in counts, ``static`` the movie's mottling and debris
    (relative); granules, grain and noise are drawn from ``rng`` for this frame.
    """
    px = pixel_size_um
    smooth = np.zeros(size, dtype=np.float32)
    granular = np.zeros(size, dtype=np.float32)
    arm = np.zeros(size, dtype=np.float32)
    labels = np.zeros(size, dtype=np.uint16)
    for cell in cells:
        y0, x0, mask, s_patch, g_patch, a_patch = _look_cell(cell, look, px)
        where = _overlap(size, y0, x0, mask.shape)
        if where is None:
            continue
        frame_sl, patch_sl = where
        smooth[frame_sl] += s_patch[patch_sl]
        granular[frame_sl] += g_patch[patch_sl]
        arm[frame_sl] += a_patch[patch_sl]
        labels[frame_sl][mask[patch_sl]] = cell.label
    signal = smooth + granular * _unit_texture(rng, size, look.granule_um / px / 2)
    signal = ndimage.gaussian_filter(signal, look.psf_sigma_um / px)
    signal += ndimage.gaussian_filter(arm, look.arm_psf_sigma_um / px)
    grain = look.grain_sd * _unit_texture(rng, size, look.grain_um / px / 2)
    expected = np.asarray(background, dtype=np.float32) * (1.0 + static + signal + grain)
    expected = rng.poisson(np.maximum(expected, 0)).astype(np.float32)
    expected += rng.normal(0.0, look.read_noise, size).astype(np.float32)
    frame = np.clip(np.rint(expected), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return frame, labels


def static_field(
    rng: np.random.Generator, size: tuple[int, int], look: Appearance, px: float
) -> np.ndarray:
    """Draw a movie's fixed relative texture: background mottling plus debris."""
    mottle = look.mottle_sd * _unit_texture(rng, size, look.mottle_um / px / 2)
    return (mottle + debris_field(rng, size, look, px)).astype(np.float32)



# ---------------------------------------------------------------- motion


def _fits(
    pos: np.ndarray,
    i: int,
    y: float,
    x: float,
    ext: np.ndarray,
    size: tuple[int, int],
    gap: float = MIN_GAP,
    inner: np.ndarray | None = None,
) -> bool:
    """Inside the frame and clear of every other placed cell.

    ``inner`` is how far from the edge a centre must stay (default: the whole extent).
    """
    h, w = size
    edge = ext[i] if inner is None else inner[i]
    if not (edge <= y <= h - 1 - edge and edge <= x <= w - 1 - edge):
        return False
    others = np.arange(len(pos)) != i
    placed = others & ~np.isnan(pos[:, 0])
    dist = np.hypot(pos[placed, 0] - y, pos[placed, 1] - x)
    return bool(np.all(dist >= ext[i] + ext[placed] + gap))


def place_cells(
    rng: np.random.Generator,
    extents: np.ndarray,
    size: tuple[int, int],
    tries: int = 300,
    gap: float = MIN_GAP,
    inner: np.ndarray | None = None,
) -> np.ndarray:
    """Random sequential placement; returns ``(n, 2)`` centres, NaN where a cell did not fit.

    Cells stay ``extents`` (plus ``gap``) apart and ``inner`` (default ``extents``) inside the
    frame; the largest extents are placed first.
    """
    pos = np.full((len(extents), 2), np.nan)
    for i in np.argsort(-extents, kind="stable"):
        for _ in range(tries):
            y, x = rng.uniform(0, size[0]), rng.uniform(0, size[1])
            if _fits(pos, int(i), y, x, extents, size, gap, inner):
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
    rng: np.random.Generator,
    motions: list[_Motion],
    ext: np.ndarray,
    size: tuple[int, int],
    scale: float = 1.0,
    gap: float = MIN_GAP,
    inner: np.ndarray | None = None,
) -> None:
    """Move the cells one frame by a persistent random walk of a few px.

    Steps are times ``scale`` (px at :data:`PLAIN_PIXEL_SIZE_UM` per px of the movie); a blocked
    move reverses the velocity.
    """
    pos = np.array([[m.y, m.x] for m in motions], dtype=np.float64).reshape(-1, 2)
    for i, m in enumerate(motions):
        v = 0.8 * np.array([m.vy, m.vx]) + rng.normal(0.0, 0.9 * scale, 2)
        speed = float(np.hypot(*v))
        if speed > 3.0 * scale:
            v *= 3.0 * scale / speed
        if _fits(pos, i, m.y + v[0], m.x + v[1], ext, size, gap, inner):
            m.y, m.x = m.y + float(v[0]), m.x + float(v[1])
            pos[i] = (m.y, m.x)
            m.vy, m.vx = float(v[0]), float(v[1])
        else:
            m.vy, m.vx = -float(v[0]), -float(v[1])
        # Mean-reverting drift keeps arms apart however long the movie is.
        m.angle_offsets = 0.95 * m.angle_offsets + rng.normal(0.0, 0.03, m.angle_offsets.size)
        m.wobble_phase = m.wobble_phase + rng.normal(0.0, 0.05, 3)


def _mean_offset(m: _Motion) -> float:
    return 0.5 * float(m.angle_offsets.mean()) if m.angle_offsets.size else 0.0


def _shape_at(
    cell: CellParams, m: _Motion, t: int, look: Appearance | None = None, px: float = 1.0
) -> CellShape:
    """Return the cell's shape at frame ``t``; a real-look cell's µm become px of ``px`` µm."""
    swing = 1 + ARM_LENGTH_SWING * np.sin(2 * np.pi * t / m.length_period + m.length_phase)
    extra: dict[str, Any] = {}
    scale = 1.0
    if look is not None:
        scale = 1.0 / px
        extra = {
            "aspect": cell.aspect,
            "orientation": cell.orientation + _mean_offset(m),
            "arm_half_width": tuple(w / px for w in look.arm_half_width_um),
            "brightness": cell.brightness,
            "rim_gain": cell.rim_gain,
        }
    return CellShape(
        label=cell.label,
        y=m.y,
        x=m.x,
        radius=cell.radius * scale,
        darkness=cell.darkness,
        halo_gain=cell.halo_gain,
        wobble=cell.wobble,
        wobble_phase=tuple(float(p) for p in m.wobble_phase),
        arm_angles=tuple(float(a) for a in np.asarray(cell.arm_angles) + m.angle_offsets),
        arm_lengths=tuple(float(v) * scale for v in np.asarray(cell.arm_lengths) * swing),
        **extra,
    )


# ---------------------------------------------------------------- movies and cohorts


@dataclass
class MovieSpec:
    """Everything needed to render one movie, frame by frame.

    ``look`` None is the plain look (px units); otherwise cells are in µm, drawn at
    ``pixel_size_um``.
    """

    movie_id: str
    patient: PatientParams
    cells: list[CellParams]
    background_level: float
    seed: tuple[int, ...]
    look: Appearance | None = None
    pixel_size_um: float = PLAIN_PIXEL_SIZE_UM

    def reaches_px(self) -> tuple[np.ndarray, np.ndarray]:
        """How far apart the cells stay and how far inside the frame, in px of the movie.

        See :func:`placement_reaches`.
        """
        return placement_reaches(self.cells, self.look, self.pixel_size_um)

    @property
    def gap_px(self) -> float:
        """Least gap between two cells' extents, in px of the movie."""
        return MIN_GAP if self.look is None else self.look.min_gap_um / self.pixel_size_um

    @property
    def motion_scale(self) -> float:
        """Steps in px of the movie for the plain look's px at 0.65 µm (the same µm/min)."""
        return 1.0 if self.look is None else PLAIN_PIXEL_SIZE_UM / self.pixel_size_um


def placement_reaches(
    cells: Sequence[CellParams], look: Appearance | None, pixel_size_um: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's reach with its arms (kept apart) and the reach kept inside the frame, in px.

    The plain look keeps whole cells inside the frame; the real look keeps the body inside and
    lets arms leave it, as in a microscope's field.
    """
    scale = 1.0 if look is None else 1.0 / pixel_size_um
    ext = np.array([c.reach() * scale for c in cells])
    if look is None:
        return ext, ext
    return ext, np.array([c.body_reach() * scale for c in cells])


def fit_sizes(
    rng: np.random.Generator,
    cells: Sequence[CellParams],
    centres: np.ndarray,
    radii: Sequence[float],
    gap: float,
    size: tuple[float, float],
) -> list[CellParams]:
    """Give placed cells the body radii ``radii``, each to a cell where it fits.

    The largest first, each to a random one of the cells still without a size that it fits
    beside the others (those without a size yet taken at it, the most they will get) and inside
    the frame; one that fits none shrinks to the most the roomiest takes, but not below the
    smallest of ``radii`` (:func:`plan_movie` places such a frame afresh). Which cells a frame
    keeps is then settled before sizes are given, so crowded frames do not keep their larger
    cells. Lengths in the cells' units, ``centres`` and ``size`` in the same units.
    """
    out = list(cells)
    centres = np.asarray(centres, dtype=float).reshape(-1, 2)
    dist = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
    edge = np.min(np.c_[centres, size[0] - 1 - centres[:, 0], size[1] - 1 - centres[:, 1]],
                  axis=1)
    given = np.full(len(out), np.nan)
    for radius in sorted(radii, reverse=True):
        room = np.full(len(out), -np.inf)
        for i in np.flatnonzero(np.isnan(given)):
            others = np.arange(len(out)) != i
            reach = np.array([out[j].reach(radius if np.isnan(given[j]) else given[j])
                              for j in np.flatnonzero(others)])
            # Reaches grow linearly with the radius, from their values at radius 0.
            per_unit = out[i].body_reach(1.0) - out[i].body_reach(0.0)
            by_others = (dist[i, others] - reach - gap - out[i].reach(0.0)) / per_unit
            room[i] = min(by_others.min(initial=np.inf),
                          (edge[i] - out[i].body_reach(0.0)) / per_unit)
        fits = np.flatnonzero(room >= radius)
        i = int(rng.choice(fits)) if fits.size else int(np.argmax(room))
        given[i] = max(min(radius, room[i]), min(radii))
        out[i] = replace(out[i], radius=_r(given[i]))
    return out


def plan_movie(
    seed: int,
    p_index: int,
    m_index: int,
    patient: PatientParams,
    movie_id: str,
    size: tuple[int, int],
    look: Appearance | None = None,
    pixel_size_um: float = PLAIN_PIXEL_SIZE_UM,
) -> tuple[MovieSpec, np.ndarray, np.random.Generator]:
    """Draw a movie's cells and place them; returns the spec, centres and the movie's rng."""
    movie_seed = (seed, 1, p_index, m_index)
    rng = np.random.default_rng(movie_seed)
    if look is None:
        n_target = max(1, int(round(CELLS_PER_PIXEL * size[0] * size[1])))
        candidates = [sample_cell(rng, patient, 0) for _ in range(n_target)]
        gap, levels = MIN_GAP, (600.0, 1400.0)
    else:
        area_mm2 = size[0] * size[1] * (pixel_size_um / 1000) ** 2
        n_target = max(1, int(round(look.cells_per_mm2 * area_mm2)))
        candidates = [sample_real_cell(rng, patient, 0, look, look.placed_radius_quantile)
                      for _ in range(n_target)]
        gap = look.min_gap_um / pixel_size_um
        levels = look.background_level
    ext, inner = placement_reaches(candidates, look, pixel_size_um)
    for _ in range(PLACEMENT_TRIES):
        pos = place_cells(rng, ext, size, gap=gap, inner=inner)
        placed = [i for i in range(n_target) if not np.isnan(pos[i, 0])]
        cells = [_relabel(candidates[i], k + 1) for k, i in enumerate(placed)]
        if look is None:
            break
        # Sizes are given to the cells that fit: every movie spans the size distribution.
        radii = movie_radii(rng, patient, look, len(cells))
        cells = fit_sizes(rng, cells, pos[placed] * pixel_size_um, radii, look.min_gap_um,
                          (size[0] * pixel_size_um, size[1] * pixel_size_um))
        if sorted(c.radius for c in cells) == sorted(radii):
            break
    level = _r(rng.uniform(*levels))
    spec = MovieSpec(movie_id, patient, cells, level, movie_seed, look, pixel_size_um)
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
    look, px = spec.look, spec.pixel_size_um
    static = 0.0 if look is None else static_field(rng, size, look, px)
    motions = [
        _init_motion(rng, c, float(y), float(x))
        for c, (y, x) in zip(spec.cells, centres, strict=True)
    ]
    ext, inner = spec.reaches_px()
    for t in range(frames):
        if t > 0:
            _step_motion(rng, motions, ext, size, spec.motion_scale, spec.gap_px, inner)
        shapes = [_shape_at(c, m, t, look, px) for c, m in zip(spec.cells, motions, strict=True)]
        flicker = 1.0 + rng.normal(0.0, 0.01)
        if look is None:
            yield render_frame(shapes, size, background=background * flicker, rng=rng)
        else:
            yield render_look_frame(shapes, size, look, px, background=background * flicker,
                                    static=static, rng=rng)


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
        "pixel_size_um": spec.pixel_size_um,
        "frame_interval_s": FRAME_INTERVAL_S,
    }


def _truth_entry(spec: MovieSpec) -> dict[str, Any]:
    cells = []
    for c in spec.cells:
        entry = asdict(c)
        if spec.look is None:
            for key in ("aspect", "orientation", "brightness", "rim_gain"):
                entry.pop(key)
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
    size: tuple[int, int] = (512, 512),
    seed: int = 0,
    pixel_size_um: float | None = None,
    look: str = "real",
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
        ``(height, width)`` of each frame in px; cells per frame scale with the area (the
        default, 512 px at 0.325 µm, is a 166 µm square holding about six cells).
    seed
        Everything is a deterministic function of this seed.
    pixel_size_um
        The movies' pixel size; None: :data:`PIXEL_SIZE_UM` (0.325 µm) for the real look,
        :data:`PLAIN_PIXEL_SIZE_UM` for the plain one (which is drawn at that scale only). The
        real look draws the same cells in µm at any pixel size.
    look
        ``"real"`` (:class:`Appearance`, made to look like the paper's phase-contrast cells) or
        ``"plain"`` (the first image model: dark discs on a light background).

    Returns
    -------
    pathlib.Path
        ``out_dir / "cohort.yaml"``.
    """
    _check_args(name, patients, movies_per_patient, frames, size)
    appearance, px = _look_and_scale(look, pixel_size_um)
    size = (int(size[0]), int(size[1]))
    out = Path(out_dir)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(max(patients, movies_per_patient) - 1)))
    patient_params, specs = [], []
    for p in range(patients):
        pid = f"p{p:0{width}d}"
        patient_rng = np.random.default_rng((seed, 0, p))
        if appearance is None:
            params = sample_patient(patient_rng, pid, class_of_patient(p))
        else:
            params = sample_real_patient(patient_rng, pid, class_of_patient(p), appearance)
            if p % 2:
                params = matched_controls(params, patient_params[p - 1])
        patient_params.append(params)
        for m in range(movies_per_patient):
            movie_id = f"{pid}-m{m:0{width}d}"
            spec, centres, rng = plan_movie(seed, p, m, params, movie_id, size, appearance, px)
            _write_movie(spec, centres, rng, out, frames, size)
            specs.append(spec)
    _dump_yaml({"cohort": name, "movies": [_manifest_entry(s) for s in specs]}, out / "cohort.yaml")
    truth = _truth_document(name, seed, frames, size, patient_params, specs, appearance, px)
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
    appearance: Appearance | None,
    pixel_size_um: float,
) -> dict[str, Any]:
    if appearance is None:
        image_model: dict[str, Any] = {
            "look": "plain",
            "halo_width_px": HALO_WIDTH,
            "psf_sigma_px": PSF_SIGMA,
            "read_noise": READ_NOISE,
            "arm_half_width_px": [ARM_HALF_WIDTH_BASE, ARM_HALF_WIDTH_TIP],
            "arm_length_swing": ARM_LENGTH_SWING,
        }
        ranges, spread, units = CLASS_RANGES, CELL_SPREAD, f"px at {PLAIN_PIXEL_SIZE_UM} µm"
        patients = [{k: _plain(v) for k, v in asdict(p).items() if k != "brightness_mean"}
                    for p in patient_params]
    else:
        image_model = {"look": "real", **appearance.record(), "arm_length_swing": ARM_LENGTH_SWING}
        ranges, spread, units = appearance.class_ranges, appearance.cell_spread, "µm"
        patients = [{k: _plain(v) for k, v in asdict(p).items() if k != "darkness_mean"}
                    for p in patient_params]
    return {
        "generator": "lch.synth",
        "version": GENERATOR_VERSION,
        "cohort": name,
        "seed": seed,
        "frames": frames,
        "size": list(size),
        "pixel_size_um": pixel_size_um,
        "frame_interval_s": FRAME_INTERVAL_S,
        "length_units": units,
        "image_model": image_model,
        "class_ranges": {k: {n: list(r) for n, r in v.items()} for k, v in ranges.items()},
        "cell_spread": dict(spread),
        "patients": patients,
        "movies": [_truth_entry(s) for s in specs],
    }


def _look_and_scale(look: str, pixel_size_um: float | None) -> tuple[Appearance | None, float]:
    """Return the look's :class:`Appearance` (None: plain) and the movies' pixel size."""
    if look not in LOOKS:
        raise ValueError(f"look must be one of {', '.join(LOOKS)}, got {look!r}")
    if look == "plain":
        if pixel_size_um not in (None, PLAIN_PIXEL_SIZE_UM):
            raise ValueError(f"the plain look is drawn at {PLAIN_PIXEL_SIZE_UM} µm/px only, "
                             f"got pixel_size_um={pixel_size_um!r}")
        return None, PLAIN_PIXEL_SIZE_UM
    px = PIXEL_SIZE_UM if pixel_size_um is None else float(pixel_size_um)
    if not (math.isfinite(px) and 0.05 <= px <= 2.0):
        raise ValueError(f"pixel_size_um must be between 0.05 and 2 µm, got {pixel_size_um!r}")
    return REAL, px


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
