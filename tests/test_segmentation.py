"""Segmentation, morphometrics and crops against the synthetic cohort's ground truth."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage
from scipy.stats import mannwhitneyu, spearmanr

from lch.cells import frame_cells
from lch.crops import (
    BACKGROUND_VALUE,
    DEFAULT_CROP_SIZE,
    DEFAULT_FIELD_OF_VIEW_UM,
    align_crop,
    compress_contrast,
    crop_pixel_size,
    cut_crops,
    farthest_angle,
    relative_contrast,
)
from lch.morphology import FEATURE_COLUMNS, central_mask, measure_cells, measure_crop
from lch.segmentation import _h_maxima_by_region, segment_frame
from lch.segmentation_scores import object_f1
from lch.synth import (
    PIXEL_SIZE_UM,
    REAL,
    CellShape,
    make_cohort,
    read_truth,
    render_frame,
    render_look_frame,
)
from lch.synth import PLAIN_PIXEL_SIZE_UM as PX

from real_cells import PIXEL_SIZE_UM as REAL_PX
from real_cells import real_images


def _segment_cohort(root, px: float, outlines: str) -> tuple[dict[str, int], pd.DataFrame]:
    """Segment every frame of a synthetic cohort: F1 counts against the truth, and the cells
    measured within LCH's outlines (``outlines="lch"``) or the true masks (``"truth"``)."""
    counts = {"matched": 0, "n_pred": 0, "n_true": 0}
    tables = []
    for movie in read_truth(root)["movies"]:
        raw = tifffile.imread(root / "raw" / f"{movie['id']}.tif")
        truth = tifffile.imread(root / movie["labels_path"])
        for t, (frame, true_labels) in enumerate(zip(raw, truth, strict=True)):
            labels = segment_frame(frame, pixel_size_um=px)
            score = object_f1(labels, true_labels)
            for key in counts:
                counts[key] += score[key]
            table = measure_cells(frame, labels if outlines == "lch" else true_labels,
                                  pixel_size_um=px)
            table["patient"], table["cls"], table["t"] = movie["patient"], movie["label"], t
            tables.append(table)
    return counts, pd.concat(tables, ignore_index=True)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Segment and measure every frame of a 4-patient cohort in the plain look (the primitives'
    px at PX); F1 counts and a cell table."""
    root = tmp_path_factory.mktemp("cohort")
    make_cohort(root, patients=4, movies_per_patient=1, frames=6, seed=11, look="plain",
                size=(256, 256))
    return (*_segment_cohort(root, PX, "lch"), root)


@pytest.fixture(scope="module")
def real_look(tmp_path_factory):
    """The same cohort in the default (real) look at 0.325 µm: F1 counts of LCH's segmenter, and
    the cells measured within its outlines."""
    root = tmp_path_factory.mktemp("real-look")
    make_cohort(root, patients=4, movies_per_patient=1, frames=6, seed=11)
    return _segment_cohort(root, PIXEL_SIZE_UM, "lch")


def _f1(counts: dict[str, int]) -> float:
    precision = counts["matched"] / counts["n_pred"]
    recall = counts["matched"] / counts["n_true"]
    return 2 * precision * recall / (precision + recall)


def test_object_f1_in_the_real_look(real_look):
    counts, _ = real_look
    print(f"\nreal look: object F1 @ IoU 0.5: {_f1(counts):.3f} ({counts})")
    assert _f1(counts) >= 0.95


@pytest.mark.parametrize("feature", ["protrusion_count", "protrusion_length", "halo_intensity"])
def test_real_look_shows_the_planted_features(real_look, feature):
    """Measured within LCH's own outlines: the planted phenotype is drawn visibly and the
    outlines keep it."""
    _, table = real_look
    by_patient = table.groupby(["cls", "patient"])[feature].mean()
    print(f"\n{feature}: {by_patient.to_dict()} cell AUC {_auc(table, feature):.3f}")
    assert _auc(table, feature) > 0.7
    assert by_patient["high"].min() > by_patient["low"].max()


def _auc(table: pd.DataFrame, feature: str) -> float:
    high = table.loc[table.cls == "high", feature].dropna()
    low = table.loc[table.cls == "low", feature].dropna()
    return float(mannwhitneyu(high, low).statistic / (len(high) * len(low)))


def test_object_f1_against_ground_truth(measured):
    counts, _, _ = measured
    precision = counts["matched"] / counts["n_pred"]
    recall = counts["matched"] / counts["n_true"]
    f1 = 2 * precision * recall / (precision + recall)
    print(f"\nobject F1 @ IoU 0.5: {f1:.3f} (P {precision:.3f}, R {recall:.3f}, {counts})")
    assert f1 >= 0.95


@pytest.mark.parametrize(
    ("feature", "min_auc"),
    [("protrusion_count", 0.75), ("protrusion_length", 0.75), ("halo_intensity", 0.7)],
)
def test_planted_features_separate_classes(measured, feature, min_auc):
    _, table, _ = measured
    means = table.groupby("cls")[feature].mean()
    auc = _auc(table, feature)
    print(f"\n{feature}: high {means['high']:.3f} low {means['low']:.3f} cell AUC {auc:.3f}")
    assert means["high"] > 1.2 * means["low"]
    assert auc > min_auc
    # Populations separate cleanly: every high patient above every low patient.
    by_patient = table.groupby(["cls", "patient"])[feature].mean()
    assert by_patient["high"].min() > by_patient["low"].max()


def test_size_separates_less_than_planted_features(measured):
    _, table, _ = measured
    aucs = {f: _auc(table, f) for f in ("area", "body_area", "protrusion_count")}
    print(f"\ncell AUCs: {aucs}")
    assert abs(aucs["body_area"] - 0.5) < abs(aucs["protrusion_count"] - 0.5)
    assert abs(aucs["body_area"] - 0.5) < 0.25


def _single_cell(halo_gain: float, seed: int, arm_lengths: tuple[float, ...] = ()) -> np.ndarray:
    """A 10-px-radius cell (true area 314 px) in a 64x64 crop, normalised like lch.crops."""
    shape = CellShape(
        label=1,
        y=31.5,
        x=31.5,
        radius=10.0,
        halo_gain=halo_gain,
        wobble=(0.05, 0.02, 0.01),
        wobble_phase=(0.0, 1.0, 2.0),
        arm_angles=(0.0,) * len(arm_lengths),
        arm_lengths=arm_lengths,
    )
    frame, _ = render_frame([shape], (64, 64), background=1000.0, rng=np.random.default_rng(seed))
    return np.clip(0.5 * frame / 1000.0, 0.0, 1.0)


def test_outline_does_not_move_with_the_halo():
    # The PSF blurs the halo into the cell's rim; a darkness threshold alone measured this cell
    # 386 px at halo gain 0.1 and 303 px at 0.6, which made area track the planted halo.
    area = {
        gain: np.mean([measure_crop(_single_cell(gain, seed), pixel_size_um=PX)["area"]
                       for seed in range(4)])
        for gain in (0.1, 0.6)
    }
    print(f"\narea at halo gain 0.1 / 0.6: {area[0.1]:.0f} / {area[0.6]:.0f} px (true 314)")
    for value in area.values():
        assert value == pytest.approx(math.pi * 10**2, rel=0.05)
    assert area[0.1] - area[0.6] < 0.03 * math.pi * 10**2


def test_thin_arm_keeps_its_reach():
    # The darkness test alone measured 9.3 px: the arm's tip between bright halos blurs positive.
    crops = [_single_cell(0.3, seed, arm_lengths=(14.0,)) for seed in range(4)]
    reach = np.mean([measure_crop(crop, pixel_size_um=PX)["protrusion_reach"] for crop in crops])
    print(f"\nreach of a 14-px arm: {reach:.1f} px")
    assert 12.0 <= reach <= 15.0


CROP_PX = crop_pixel_size(DEFAULT_FIELD_OF_VIEW_UM, DEFAULT_CROP_SIZE)  # 1.3 µm


def _coarse_crop(seed: int, arm_px: int = 0, ring: bool = False) -> np.ndarray:
    """A bright textured body (8 px radius) with a glow, at a model crop's pixel size; on request
    a dark arm 2 px wide reaching ``arm_px`` beyond it along +x, and a dark ring hugging it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 31.5, xx - 31.5)
    image = 0.5 + rng.normal(0.0, 0.02, r.shape)
    body = r <= 8
    image[body] = 0.85 + rng.normal(0.0, 0.08, body.sum())
    image += np.where(body, 0.0, 0.2 * np.exp(-np.clip(r - 8, 0, None) / 2))
    if ring:
        image[(r > 9) & (r <= 10.5)] = 0.35
    if arm_px:
        image[31:33, 40 : 40 + arm_px] = 0.3
    return ndimage.gaussian_filter(image, 0.5)


def _crop_features(**kwargs) -> pd.DataFrame:
    return pd.DataFrame([measure_crop(_coarse_crop(seed, **kwargs), pixel_size_um=CROP_PX)
                         for seed in range(3)])


def test_crop_measure_follows_a_thin_arm_the_outline_misses():
    # At 1.3 µm pixels the texture window is wider than the arm and the outline stops at the
    # compact bright body: the reach of this 9-px arm read 1 px, and of the demo's held-out crops
    # of cells with a true arm over 15 µm, three in four read at most 1.4 px.
    bare, armed = _crop_features(), _crop_features(arm_px=9)
    print(f"\nreach bare {bare.protrusion_reach.tolist()}, armed {armed.protrusion_reach.tolist()}")
    assert (bare.protrusion_reach == 0).all()
    assert armed.protrusion_reach.between(7.5, 9.5).all()
    assert (armed.body_area - bare.body_area).abs().max() <= 0.03 * bare.body_area.mean()


def test_a_dark_ring_round_the_body_is_not_an_arm():
    # Phase contrast rings some real cells (the m405c2 crops) with a dark band inside the halo;
    # taken as lines it read as a 3-px arm all round. An arm crossing the ring still counts.
    bare, ringed = _crop_features(), _crop_features(ring=True)
    crossed = _crop_features(ring=True, arm_px=9)
    assert (ringed.protrusion_reach == 0).all()
    assert (ringed.area - bare.area).abs().max() <= 0.03 * bare.area.mean()
    assert crossed.protrusion_reach.between(7.5, 9.5).all()


def test_crop_measures_follow_the_planted_truth_of_a_real_look_cohort(tmp_path):
    # Each cell of one frame a movie, cut as the pipeline cuts it and measured on its model
    # crop, against the generator's truth. With the outline alone the crop's reach followed
    # the longest true arm at rho 0.40 (the frame's own measure: 0.81).
    root = tmp_path / "cohort"
    make_cohort(root, patients=6, movies_per_patient=3, frames=1, seed=5)
    rows = []
    for movie in read_truth(root)["movies"]:
        frame = tifffile.imread(root / "raw" / f"{movie['id']}.tif", key=0)
        truth = tifffile.imread(root / movie["labels_path"], key=0)
        cells = {cell["label"]: cell for cell in movie["cells"]}
        table, crops = frame_cells(frame, crop_size=DEFAULT_CROP_SIZE,
                                   pixel_size_um=PIXEL_SIZE_UM,
                                   field_of_view_um=DEFAULT_FIELD_OF_VIEW_UM)
        kept = table[table.drop_reason == ""]
        for row, crop in zip(kept.itertuples(), crops, strict=True):
            cell = cells.get(truth[round(row.centroid_y), round(row.centroid_x)])
            if cell is not None:
                got = measure_crop(crop, pixel_size_um=CROP_PX)
                rows.append({"arm": max(cell["arm_lengths"], default=0.0),
                             "halo": cell["halo_gain"], "reach": got["protrusion_reach"],
                             "halo_intensity": got["halo_intensity"]})
    got = pd.DataFrame(rows)
    arms = spearmanr(got.arm, got.reach, nan_policy="omit")[0]
    halo = spearmanr(got.halo, got.halo_intensity, nan_policy="omit")[0]
    print(f"\n{len(got)} cells: rho(reach, longest true arm) {arms:.2f}, (halo, gain) {halo:.2f}")
    assert len(got) >= 60
    assert arms >= 0.6 and halo >= 0.7


def test_cell_filling_most_of_its_crop_is_measured():
    # Five long arms and a bright halo texture more than half of the crop, as in decoded cells
    # exaggerated to s = +3..+4. Measured against the median texture the crop held no cell
    # (NaN), which dropped the most exaggerated steps from the trends.
    arms = 5
    shape = CellShape(
        label=1,
        y=31.5,
        x=31.5,
        radius=12.0,
        halo_gain=1.2,
        arm_angles=tuple(2 * math.pi * k / arms for k in range(arms)),
        arm_lengths=(16.0,) * arms,
    )
    for seed in range(3):
        frame, truth = render_frame([shape], (64, 64), rng=np.random.default_rng(seed))
        got = measure_crop(np.clip(0.5 * frame / 1000.0, 0.0, 1.0), pixel_size_um=PX)
        assert got["protrusion_count"] == arms
        assert got["area"] == pytest.approx((truth > 0).sum(), rel=0.15)


def test_dim_cell_beside_a_bright_one_is_found():
    # A frame-wide Otsu threshold on the texture sits between a bright rounded cell and the
    # rest, so a faint cell in the same field was never detected.
    bright = CellShape(label=1, y=48.0, x=40.0, radius=12.0, darkness=0.6, halo_gain=1.5)
    dim = CellShape(label=2, y=48.0, x=120.0, radius=12.0, darkness=0.12, halo_gain=0.08)
    for seed in range(3):
        frame, truth = render_frame([bright, dim], (96, 160), rng=np.random.default_rng(seed))
        score = object_f1(segment_frame(frame, pixel_size_um=PX), truth)
        assert score["matched"] == 2, score


def _halo(frame: np.ndarray, labels: np.ndarray) -> float:
    return float(measure_cells(frame, labels, pixel_size_um=PX)["halo_intensity"].iloc[0])


def test_halo_ring_follows_the_body_not_the_arms():
    # Flat arms without a halo of their own: a ring around the whole mask ran along them and
    # read the background there, so the more arms, the weaker the measured halo.
    def cell(arm_lengths: tuple[float, ...]) -> CellShape:
        return CellShape(label=1, y=63.5, x=63.5, radius=10.0, halo_gain=0.5,
                         arm_angles=tuple(2 * math.pi * k / 3 for k in range(len(arm_lengths))),
                         arm_lengths=arm_lengths)

    frame, bare = render_frame([cell(())], (128, 128))
    _, armed = render_frame([cell((30.0, 30.0, 30.0))], (128, 128))
    painted = frame.copy()
    painted[(armed > 0) & (bare == 0)] = 500  # dark arms on the bare cell's image
    halo = {"bare": _halo(frame, bare), "armed": _halo(painted, armed)}
    print(f"\nhalo without arms {halo['bare']:.3f}, with three 30-px arms {halo['armed']:.3f}")
    assert halo["armed"] == pytest.approx(halo["bare"], rel=0.1)


def test_body_and_halo_do_not_grow_with_an_outline_that_took_in_the_halo():
    # A texture outline takes in ~1 µm of a bright halo, more the brighter it is: measured from
    # the outline, the brighter-halo class had the larger bodies and the weaker halos.
    measured = {}
    for gain in (0.7, 1.7):
        shape = CellShape(label=1, y=99.5, x=99.5, radius=28.0, darkness=0.6, halo_gain=gain,
                          brightness=2.8, rim_gain=1.7)
        frame, truth = render_look_frame([shape], (200, 200), REAL, PIXEL_SIZE_UM,
                                         background=3000.0, rng=np.random.default_rng(0))
        for um in (1, 2):  # outlines 1 and 2 µm beyond the body
            wide = ndimage.binary_dilation(truth > 0, iterations=3 * um).astype(np.int32)
            measured[gain, um] = measure_cells(frame, wide, pixel_size_um=PIXEL_SIZE_UM).iloc[0]
    true_area = int((truth > 0).sum())
    areas = {k: int(row.body_area) for k, row in measured.items()}
    halos = {k: round(float(row.halo_intensity), 3) for k, row in measured.items()}
    print(f"\nbody areas {areas} (true {true_area}), halos {halos}")
    for gain in (0.7, 1.7):
        assert areas[gain, 2] == pytest.approx(areas[gain, 1], rel=0.03)
        assert halos[gain, 2] == pytest.approx(halos[gain, 1], rel=0.05)
    # The optics blur a brighter halo into the rim: the brighter halo's body is a little larger.
    assert areas[1.7, 1] == pytest.approx(areas[0.7, 1], rel=0.12)
    assert areas[0.7, 1] == pytest.approx(true_area, rel=0.1)
    assert halos[1.7, 1] > 1.5 * halos[0.7, 1]


def test_body_stays_the_bright_core_when_the_outline_takes_in_a_wide_blur():
    # A decoded cell pushed towards "high" is drawn with a blurred halo that the outline takes
    # in as a wide lobe; when the core was under 30 % of the opened outline it was not taken as
    # the body, so the body and the halo ring jumped outwards on the most exaggerated images.
    shape = CellShape(label=1, y=99.5, x=79.5, radius=28.0, darkness=0.6, halo_gain=1.7,
                      brightness=2.8, rim_gain=1.7)
    frame, truth = render_look_frame([shape], (200, 240), REAL, PIXEL_SIZE_UM,
                                     background=3000.0, rng=np.random.default_rng(0))
    yy, xx = np.ogrid[:200, :240]
    lobe = (yy - 99.5) ** 2 + (xx - 150) ** 2 <= 50**2
    tight = ndimage.binary_dilation(truth > 0, iterations=3)
    bodies = {}
    for name, outline in (("tight", tight), ("with lobe", tight | lobe)):
        row = measure_cells(frame, outline.astype(np.int32), pixel_size_um=PIXEL_SIZE_UM).iloc[0]
        bodies[name] = (int(row.body_area), int(row.area))
    print(f"\nbody and outline areas {bodies} (true body {int((truth > 0).sum())})")
    assert bodies["with lobe"][0] < 0.3 * bodies["with lobe"][1]
    assert bodies["with lobe"][0] == pytest.approx(bodies["tight"][0], rel=0.03)


def test_body_contrast_is_the_bodys_whatever_its_arms():
    # Arms (a dim core within bright edges) inside the outline pulled the outline's mean down:
    # measured over the outline, "body contrast" fell with the planted arms.
    arms = {"angles": tuple(2 * math.pi * k / 3 for k in range(3)), "lengths": (60.0,) * 3}
    means = {}
    for name, (angles, lengths) in (("bare", ((), ())), ("armed", arms.values())):
        shape = CellShape(label=1, y=99.5, x=99.5, radius=28.0, darkness=0.6, halo_gain=1.0,
                          brightness=2.8, rim_gain=1.7, arm_angles=angles, arm_lengths=lengths,
                          arm_half_width=tuple(w / PIXEL_SIZE_UM for w in REAL.arm_half_width_um))
        frame, truth = render_look_frame([shape], (200, 200), REAL, PIXEL_SIZE_UM,
                                         background=3000.0, rng=np.random.default_rng(0))
        row = measure_cells(frame, truth.astype(np.int32), pixel_size_um=PIXEL_SIZE_UM).iloc[0]
        means[name] = ((row.body_contrast + 1) * row.background, row.mean_intensity)
    print(f"\nmean intensity of the body and of the outline {means}")
    assert means["armed"][0] == pytest.approx(means["bare"][0], rel=0.01)
    assert means["armed"][1] < 0.9 * means["bare"][1]


def test_measure_table_has_documented_columns(measured):
    _, table, _ = measured
    assert list(table.columns[: len(FEATURE_COLUMNS)]) == FEATURE_COLUMNS
    assert (table.area >= table.body_area).all()
    assert (table.body_contrast < 0).all()  # dark bodies
    assert (table.halo_intensity > 0).all()  # bright halos


def test_split_markers_are_skimages_h_maxima():
    """Markers found region by region are exactly skimage's h-maxima of the whole frame."""
    from skimage import filters, morphology

    rng = np.random.default_rng(3)
    found = np.zeros((120, 160), bool)
    yy, xx = np.ogrid[:120, :160]
    # Touching pairs (two maxima in one region), lone discs, and cells cut by the frame edge.
    for y, x, r in [(30, 30, 12), (30, 52, 10), (90, 40, 14), (60, 110, 9), (5, 150, 11),
                    (115, 80, 8), (60, 133, 9)]:
        found |= (yy - y) ** 2 + (xx - x) ** 2 <= r**2
    # A diagonal cell joined to the disc at (68, 78): their bounding box takes in part of the
    # disc at (90, 40), but not that disc's peak.
    found |= (np.abs(yy - xx) <= 4) & (yy > 55) & (yy < 110) & (xx < 70)
    found |= (yy - 68) ** 2 + (xx - 78) ** 2 <= 7**2
    distance = filters.gaussian(ndimage.distance_transform_edt(found), 1, preserve_range=True)
    distance += rng.uniform(0, 0.05, distance.shape) * (distance > 0)
    for h in (0.5, 1.5, 3.0):
        expected = morphology.h_maxima(distance, h)
        assert expected.sum() > 0
        np.testing.assert_array_equal(_h_maxima_by_region(distance, h), expected)


def test_constant_and_nan_frames_raise():
    with pytest.raises(ValueError, match="constant"):
        segment_frame(np.full((32, 32), 7, np.uint16))
    frame = np.ones((32, 32))
    frame[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        segment_frame(frame, pixel_size_um=PX)
    with pytest.raises(ValueError, match="2-D"):
        segment_frame(np.ones((2, 8, 8)))


def test_frame_without_cells_gives_no_labels():
    rng = np.random.default_rng(0)
    frame, _ = render_frame([], (128, 128), background=800.0, rng=rng)
    labels = segment_frame(frame, pixel_size_um=PX)
    assert labels.dtype == np.int32 and labels.shape == (128, 128) and labels.max() == 0
    assert segment_frame(rng.normal(0.5, 0.02, (64, 64)), pixel_size_um=PX).max() == 0


def test_segmentation_does_not_depend_on_intensity_scale():
    cell = CellShape(label=1, y=32, x=30, radius=10, arm_angles=(1.0,), arm_lengths=(12.0,))
    frame, truth = render_frame([cell], (64, 64), rng=np.random.default_rng(4))
    raw = segment_frame(frame, pixel_size_um=PX) > 0
    scaled = segment_frame(frame / 65535.0, pixel_size_um=PX) > 0
    assert np.array_equal(raw, scaled)
    assert object_f1(segment_frame(frame, pixel_size_um=PX), truth)["f1"] == 1.0


def test_object_f1_counts():
    a = np.zeros((20, 20), int)
    a[2:8, 2:8], a[12:18, 12:18] = 1, 2
    b = np.zeros_like(a)
    b[2:8, 3:9] = 5  # IoU 30 / 42 with object 1
    assert object_f1(a, a) == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "matched": 2,
        "n_pred": 2,
        "n_true": 2,
    }
    score = object_f1(b, a)
    assert (score["matched"], score["precision"], score["recall"]) == (1, 1.0, 0.5)
    assert object_f1(b, a, iou_threshold=0.8)["matched"] == 0
    assert object_f1(np.zeros_like(a), np.zeros_like(a))["f1"] == 1.0


def _one_cell_frame(y: float, x: float, size=(96, 96)):
    cell = CellShape(label=1, y=y, x=x, radius=10, arm_angles=(0.5, 2.9), arm_lengths=(13.0, 8.0))
    frame, _ = render_frame([cell], size, background=900.0, rng=np.random.default_rng(2))
    labels = segment_frame(frame, pixel_size_um=PX)
    return frame, labels, measure_cells(frame, labels, pixel_size_um=PX)


# Crops showing 64 frame pixels: the geometry tests below read positions in frame pixels.
NATIVE = {"pixel_size_um": PX, "field_of_view_um": 64 * PX}


def test_crops_are_normalised_fixed_size():
    frame, labels, table = _one_cell_frame(48, 47)
    crops, keep, reasons = cut_crops(frame, labels, table, size=64, **NATIVE)
    assert crops.shape == (1, 64, 64) and crops.dtype == np.float32
    assert keep.tolist() == [True] and reasons.tolist() == [""]
    assert crops.min() >= 0 and crops.max() <= 1
    corners = np.concatenate([crops[0, :6, :6].ravel(), crops[0, -6:, -6:].ravel()])
    assert abs(float(np.median(corners)) - BACKGROUND_VALUE) < 0.02
    assert crops[0, 32, 32] < 0.4  # dark body at the centre


@pytest.mark.parametrize("angle", [0.5, 2.0, -2.4])
def test_crops_turn_the_longest_arm_to_plus_x(angle):
    cell = CellShape(label=1, y=47.3, x=48.6, radius=10, arm_angles=(angle, angle + 2.5),
                     arm_lengths=(14.0, 7.0))
    frame, _ = render_frame([cell], (96, 96), background=900.0, rng=np.random.default_rng(2))
    labels = segment_frame(frame, pixel_size_um=PX)
    table = measure_cells(frame, labels, pixel_size_um=PX)
    crops, keep, _ = cut_crops(frame, labels, table, size=64, **NATIVE)
    assert keep.tolist() == [True]
    crop = crops[0]
    mask = crop < 0.45  # the dark cell
    centre = (31.5, 31.5)
    assert abs(farthest_angle(mask, centre)) < 0.15  # the long arm's tip on +x
    assert crop[32, 32 + 10 + 8] < 0.45 and crop[32, 32 - 10 - 8] > 0.45  # arm right, not left
    # Rotation-invariant features survive the resampling.
    got, source = measure_crop(crop, pixel_size_um=PX), table.iloc[0]
    assert source["protrusion_count"] == 2
    assert got["protrusion_count"] >= 1  # the short arm may fall just below the minimum length
    assert got["area"] == pytest.approx(source["area"], rel=0.05)
    # A crop turned some other way is brought back to the same orientation.
    turned = np.rot90(crop).copy()
    assert abs(farthest_angle(align_crop(turned, pixel_size_um=PX) < 0.45, centre)) < 0.15


def test_crops_drop_border_and_size_outliers():
    frame, labels, table = _one_cell_frame(6, 47)  # cut by the top edge
    crops, keep, reasons = cut_crops(frame, labels, table, size=64, **NATIVE)
    assert crops.shape == (0, 64, 64) and keep.tolist() == [False]
    assert reasons.tolist() == ["border"]
    frame, labels, table = _one_cell_frame(20, 47)  # its window leaves the frame: padded
    crops, keep, reasons = cut_crops(frame, labels, table, size=64, **NATIVE)
    assert keep.tolist() == [True] and reasons.tolist() == [""]
    # The ~10 rows above the frame, turned with the crop, are filled with the background.
    assert 8 * 64 <= np.sum(crops[0] == BACKGROUND_VALUE) <= 13 * 64
    area_um2 = table["area"].iloc[0] * PX**2
    _, _, reasons = cut_crops(frame, labels, table, pixel_size_um=PX, min_area_um2=area_um2 + 1)
    assert reasons.tolist() == ["too_small"]
    _, _, reasons = cut_crops(frame, labels, table, pixel_size_um=PX, max_area_um2=area_um2 - 1)
    assert reasons.tolist() == ["too_large"]


def _centre_crop(frame: np.ndarray, px: float) -> np.ndarray | None:
    labels = segment_frame(frame, pixel_size_um=px)
    table = measure_cells(frame, labels, pixel_size_um=PX)
    centre = int(np.argmin(np.hypot(table["centroid_y"] - frame.shape[0] / 2,
                                    table["centroid_x"] - frame.shape[1] / 2)))
    crops, keep, _ = cut_crops(frame, labels, table.iloc[[centre]], pixel_size_um=px)
    return crops[0] if keep[0] else None


def test_crops_show_the_same_field_of_view_at_any_pixel_size():
    """Real cells at 0.325 µm and the same images binned to 0.65 µm give the same crops."""
    agreement = []
    for _, image, _ in real_images()[:8]:
        fine = image.astype(np.float64) + 1.0  # a background above 0, as the ratio needs
        coarse = fine.reshape(128, 2, 128, 2).mean(axis=(1, 3))
        a, b = _centre_crop(fine, REAL_PX), _centre_crop(coarse, 2 * REAL_PX)
        assert a.shape == b.shape == (DEFAULT_CROP_SIZE, DEFAULT_CROP_SIZE)
        agreement.append(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    # A round cell may turn its farthest point, hence the whole crop, another way at one size.
    assert np.median(agreement) > 0.95 and np.sum(np.array(agreement) > 0.9) >= 6, agreement
    # 83.2 µm in 64 px: a cell of 10-30 µm spans 8-23 crop pixels.
    assert crop_pixel_size(DEFAULT_FIELD_OF_VIEW_UM, DEFAULT_CROP_SIZE) == pytest.approx(1.3)


def test_a_crop_filled_beyond_the_frame_edge_is_measured_on_its_cell():
    """A cell near the frame edge: its crop's corner beyond the edge is filled with the
    background value. That fill must not set the background's texture level (it did: the
    camera's background then read as a cell and was measured instead, on 14 % of the demo
    cohort's crops)."""
    rows, cols = np.mgrid[:DEFAULT_CROP_SIZE, :DEFAULT_CROP_SIZE]
    beyond = rows + cols > DEFAULT_CROP_SIZE + 20  # a frame edge turned with the crop, 20 µm out
    px = crop_pixel_size(DEFAULT_FIELD_OF_VIEW_UM, DEFAULT_CROP_SIZE)
    overlap = []
    for _, image, _ in real_images()[:12]:
        crop = _centre_crop(image.astype(np.float64) + 1.0, REAL_PX)
        filled = crop.copy()
        filled[beyond] = BACKGROUND_VALUE
        whole, cut = central_mask(crop, px), central_mask(filled, px)
        overlap.append((whole & cut).sum() / (whole | cut).sum())
    # Measured on the cell (before: a patch of background on 7 of the 12, median overlap 0.08).
    assert min(overlap) > 0.5 and np.median(overlap) > 0.9, np.round(overlap, 2)


def test_measure_crop_recovers_source_cell(measured):
    _, _, root = measured
    movie = read_truth(root)["movies"][0]
    frame = tifffile.imread(root / "raw" / f"{movie['id']}.tif", key=0)
    labels = segment_frame(frame, pixel_size_um=PX)
    table = measure_cells(frame, labels, pixel_size_um=PX)
    crops, keep, _ = cut_crops(frame, labels, table, **NATIVE)
    assert len(crops) >= 3
    _, spread = relative_contrast(frame, labels, pixel_size_um=PX)

    def on_crop_scale(contrast: float) -> float:  # a crop's (value - 0.5) / 0.5
        return 2 * float(compress_contrast(contrast, spread)) - 1

    same_count = []
    for crop, (_, source) in zip(crops, table[keep].iterrows(), strict=True):
        got = measure_crop(crop, pixel_size_um=PX)
        assert got["area"] == pytest.approx(source["area"], rel=0.1)
        # An arm reaching just about the minimum length may be counted on one side only.
        assert abs(got["protrusion_count"] - source["protrusion_count"]) <= 1
        same_count.append(got["protrusion_count"] == source["protrusion_count"])
        halo, body = on_crop_scale(source["halo_intensity"]), on_crop_scale(source["body_contrast"])
        assert got["halo_intensity"] == pytest.approx(halo, abs=0.04)
        assert got["body_contrast"] == pytest.approx(body, abs=0.04)
        assert got["background"] == pytest.approx(BACKGROUND_VALUE, abs=0.03)
    assert np.mean(same_count) >= 0.75


def test_measure_crop_without_object_gives_nans():
    for crop in (np.full((64, 64), 0.5), np.random.default_rng(1).normal(0.5, 0.01, (64, 64))):
        got = measure_crop(crop, pixel_size_um=PX)
        assert set(got) == set(FEATURE_COLUMNS)
        assert all(math.isnan(v) for v in got.values())
    with pytest.raises(ValueError, match="NaN"):
        measure_crop(np.full((64, 64), np.nan))
