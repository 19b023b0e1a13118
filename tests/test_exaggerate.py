"""Exaggeration along the discriminant direction: planted phenotype, controls, inputs, montage.

A small AAE trained on single-cell crops rendered with :mod:`lch.synth` (high patients:
more/longer arms and brighter halos; body size not planted; tests/exaggeration_model.py keeps
its weights), an LDA is fit on its codes with the true labels and, as the control, with
shuffled labels, and one cell of every patient is exaggerated from s = -4 to +4. The trends
are measured on the decoded images with :func:`lch.morphology.measure_crop`, the function used
on real segmented cells.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import zarr
from exaggeration_model import (
    CELLS_PER_PATIENT,
    CROP,
    N_PATIENTS,
    SEED,
    load_model,
    model_config,
    synthetic_crops,
)
from PIL import Image, ImageFont

from lch.classify import fit_linear_classifier
from lch.crop_files import load_crop
from lch.crops import DEFAULT_FIELD_OF_VIEW_UM
from lch.exaggerate import (
    DEFAULT_SIGMAS,
    METHOD_TITLES,
    check_classifier,
    class_mean_codes,
    discriminant_scores,
    exaggerate,
    exaggerate_class_means,
    exaggerate_codes,
    exaggerate_stored_cells,
    measure_real_cells,
    measure_reconstructions,
)
from lch.exaggeration_report import montage, save_montage, write_report
from lch.model import AAE, AAEConfig, LCHModel
from lch.single_cell import centre_cell
from lch.trends import judge_trends, spearman_table, trend_report

from real_cells import PIXEL_SIZE_UM, real_images


@pytest.fixture(scope="module")
def trained(single_thread):
    """The stored small AAE (tests/exaggeration_model.py), its codes of the synthetic crops it
    was trained on, and those crops and labels."""
    crops, labels = synthetic_crops()
    try:
        aae = load_model(crops)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    with torch.no_grad():
        codes = aae.encode(torch.from_numpy(crops[:, None])).numpy()
    return {"aae": aae, "codes": codes, "crops": crops, "labels": labels}


def test_stored_model_is_refused_for_other_crops(trained):
    # Weights made from other cells (a changed generator) must be made again, not used.
    with pytest.raises(RuntimeError, match="crops_sha256.*exaggeration_model.py"):
        load_model(trained["crops"][::-1])


def _lch_model(trained: dict, labels: np.ndarray) -> LCHModel:
    weight, bias, _ = fit_linear_classifier(trained["codes"], labels)
    return LCHModel.from_aae(trained["aae"], weight, bias, trained["codes"])


def _exaggerated_cells(trained: dict) -> np.ndarray:
    """The first cell of every patient, both classes (not hand-picked)."""
    return trained["crops"][::CELLS_PER_PATIENT]


@pytest.fixture(scope="module")
def model(trained) -> LCHModel:
    return _lch_model(trained, trained["labels"])


@pytest.fixture(scope="module")
def result(model, trained):
    return exaggerate(model, _exaggerated_cells(trained))


@pytest.fixture(scope="module")
def latent_shift_result(model, trained):
    return exaggerate(model, _exaggerated_cells(trained), method="latent-shift")


@pytest.fixture(scope="module")
def shuffled_model(trained) -> LCHModel:
    # The same AAE (it never saw labels); only the classifier sees shuffled labels.
    shuffled = np.random.default_rng(SEED + 1).permutation(trained["labels"])
    return _lch_model(trained, shuffled)


@pytest.fixture(scope="module")
def shuffled_result(shuffled_model, trained):
    return exaggerate(shuffled_model, _exaggerated_cells(trained))


def _report(name: str, result) -> None:
    table = spearman_table(result.table)
    print(f"\n{name}: Spearman rho of s vs feature, pooled over {len(result.cells)} cells")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


@pytest.fixture(scope="module")
def real_features(model, trained) -> pd.DataFrame:
    """The training crops measured as the decoded images are (they do not depend on a model)."""
    return measure_real_cells(model, trained["crops"])[0]


def _judged(name: str, model: LCHModel, result, trained,
            real_features) -> tuple[pd.DataFrame, list[str]]:
    """:func:`lch.trends.trend_report` of ``result``, the bound taken from the training cells'
    scores under ``model``, and what :func:`lch.trends.judge_trends` finds short; prints both."""
    scores = discriminant_scores(model, trained["crops"])
    reconstructed = measure_reconstructions(model, trained["crops"])
    report = trend_report(result.table, real_features, scores, result.sigmas,
                          reconstructed=reconstructed)
    _report(name, result)
    print(report.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return report, judge_trends(report)


# ---------------------------------------------------------------- the planted phenotype


@pytest.mark.slow
def test_planted_features_trend_as_far_as_the_data_allow(model, result, trained, real_features):
    # Crops turned so the longest extension points along +x (lch.crops) give the arm one
    # place in the latent space; unaligned, the arms did not grow at all (rho -0.2).
    report, faults = _judged("true labels", model, result, trained, real_features)
    assert faults == []
    # The bound is no free pass: the training cells do carry both planted features.
    assert (report.loc[report["role"] == "planted", "c"] > 0.5).all()
    # And the decoder draws every feature it is judged on: each cell's reconstruction measures
    # as the cell does (0.93-0.97 here; a 64 px demo model's arms: below 0.1).
    assert (report["fidelity"] > 0.9).all()


@pytest.mark.slow
def test_latent_shift_takes_the_same_logit_steps_another_way(model, result, latent_shift_result,
                                                            trained, real_features, tmp_path):
    """Both methods move each code's logit by the same amounts; Latent Shift along the gradient
    of the re-encoded image's logit instead of the direction. Their trends side by side."""
    np.testing.assert_allclose(latent_shift_result.probability, result.probability, atol=1e-4)
    assert not np.allclose(latent_shift_result.images, result.images, atol=1e-3)
    again = np.median(latent_shift_result.probability_reencoded, axis=0)
    assert again[-1] > 0.9 and again[0] < 0.1
    # Both draw the planted features within the criterion on this model; the linear method's
    # controls stay flatter (body contrast rho -0.01 against 0.18).
    for name, res in (("linear", result), ("latent-shift", latent_shift_result)):
        assert _judged(name, model, res, trained, real_features)[1] == []
        save_montage(res, tmp_path / f"{name}.png")


@pytest.mark.slow
def test_every_decoded_image_holds_one_cell(result):
    measured = spearman_table(result.table, ["area", "body_area", "halo_intensity"])
    assert (measured["n"] == len(result.table)).all()


@pytest.mark.slow
def test_shuffled_labels_fail_the_criterion(shuffled_model, shuffled_result, trained,
                                            real_features):
    assert _judged("shuffled labels", shuffled_model, shuffled_result, trained, real_features)[1]


@pytest.mark.slow
def test_untrained_model_fails_the_criterion(trained, real_features):
    # Same pipeline, same true labels, but an AAE that was never trained.
    torch.manual_seed(SEED)
    aae = AAE(model_config()).eval()
    with torch.no_grad():
        codes = aae.encode(torch.from_numpy(trained["crops"][:, None])).numpy()
    weight, bias, _ = fit_linear_classifier(codes, trained["labels"])
    untrained = LCHModel.from_aae(aae, weight, bias, codes)
    out = exaggerate(untrained, _exaggerated_cells(trained))
    report, faults = _judged("untrained AAE", untrained, out, trained, real_features)
    assert faults
    # Its reconstructions hold no cell to measure: no fidelity at all.
    assert not (report["fidelity"] > 0.5).any()


@pytest.mark.slow
def test_probability_rises_monotonically(result):
    # The shifted code's probability rises by construction (until float32 saturates at 0 or
    # 1); the re-encoded decoded image's rises only if the decoder drew what the classifier
    # reads as "high".
    # Saturated re-encoded probabilities wobble in the 4th decimal (float32 through a CNN).
    for p, wobble in ((result.probability, 1e-6), (result.probability_reencoded, 1e-3)):
        assert np.all(np.diff(p, axis=1) >= -wobble)
        assert np.all(p[:, 0] < 0.5) and np.all(p[:, -1] > 0.5)
    logit = np.log(result.probability) - np.log1p(-result.probability)
    unsaturated = np.isfinite(logit[:, 1:]) & np.isfinite(logit[:, :-1])
    assert np.all(np.diff(logit, axis=1)[unsaturated] > 0)


# ---------------------------------------------------------------- behaviour


@pytest.mark.slow
def test_result_layout(result):
    n, k = N_PATIENTS, len(DEFAULT_SIGMAS)
    assert result.images.shape == (n, k, CROP, CROP) and result.images.dtype == np.float32
    assert 0.0 <= result.images.min() and result.images.max() <= 1.0
    assert result.probability.shape == result.probability_reencoded.shape == (n, k)
    assert list(result.sigmas) == list(DEFAULT_SIGMAS)
    table = result.table
    assert len(table) == n * k
    assert list(table.columns[:4]) == ["cell", "sigma", "probability", "probability_reencoded"]
    assert {"protrusion_count", "protrusion_length", "halo_intensity", "area"} <= set(table)
    assert "centroid_y" not in table
    assert np.allclose(table["probability"], result.probability.reshape(-1))


@pytest.mark.slow
def test_report_holds_montage_tables_and_trend_figure(result, tmp_path):
    paths = write_report(result, tmp_path / "report")
    assert {p.name for p in (tmp_path / "report").iterdir()} == {
        "exaggeration_montage.png", "exaggeration_morphology.csv", "exaggeration_spearman.csv",
        "exaggeration_trends.png"}
    figure = Image.open(paths["figure"])
    assert figure.size[0] > 800 and figure.size[1] > 500  # 3 rows of 4 panels


@pytest.mark.slow
def test_deterministic_and_survives_save_load(model, trained, result, tmp_path):
    cells = _exaggerated_cells(trained)
    again = exaggerate(model, cells, measure=False)
    assert np.array_equal(again.images, result.images)
    assert np.array_equal(again.probability_reencoded, result.probability_reencoded)
    path = tmp_path / "model.pt"
    torch.save(model.to_state(), path)
    loaded = LCHModel.from_state(torch.load(path, weights_only=True))
    assert np.allclose(exaggerate(loaded, cells, measure=False).images, result.images, atol=1e-6)


@pytest.mark.slow
def test_zero_shift_is_the_reconstruction(model, trained):
    crops = _exaggerated_cells(trained)[:2]
    out = exaggerate(model, crops, sigmas=[0.0], measure=False)
    with torch.no_grad():
        recon = model.decode(model.encode(torch.from_numpy(crops[:, None])))[:, 0].numpy()
    assert np.allclose(out.images[:, 0], recon, atol=1e-6)


@pytest.mark.slow
def test_stored_cells_are_named_by_id_and_label(model, trained):
    # A cohort's crops.zarr and cells table, as lch.cellstore.open_cells returns them.
    crops = zarr.array(trained["crops"][:60], chunks=(16, CROP, CROP))
    table = pd.DataFrame({"label": trained["labels"][:60]})
    out = exaggerate_stored_cells(model, table, crops, [3, 55], sigmas=[0.0])
    assert out.cells == ["cell 3 (high)", "cell 55 (low)"]
    direct = exaggerate(model, trained["crops"][[3, 55]], sigmas=[0.0], measure=False)
    assert np.array_equal(out.images, direct.images)
    with pytest.raises(ValueError, match=r"cell ids must lie in 0\.\.59"):
        exaggerate_stored_cells(model, table, crops, [60])


@pytest.mark.slow
def test_class_means(model, trained):
    out = exaggerate_class_means(model, trained["codes"], trained["labels"], measure=False)
    assert out.cells == ["mean_high", "mean_low"]
    zero = list(out.sigmas).index(0.0)
    assert out.probability[0, zero] > 0.5 > out.probability[1, zero]
    means = class_mean_codes(trained["codes"], trained["labels"])
    assert np.allclose(out.codes[0], means["high"], atol=1e-6)
    with pytest.raises(ValueError, match="no 'low' cells"):
        class_mean_codes(trained["codes"][:3], ["high"] * 3)


# ---------------------------------------------------------------- inputs and models (no training)


@pytest.fixture(scope="module")
def tiny_model() -> LCHModel:
    torch.manual_seed(0)
    aae = AAE(AAEConfig(crop_size=32, latent_dim=8, width=1 / 16, disc_hidden=(16, 16, 8)))
    codes = np.random.default_rng(0).normal(size=(40, 8))
    return LCHModel.from_aae(aae, np.linspace(-1.0, 1.0, 8), 0.1, codes)


def _crop(size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size / 4) ** 2
    return np.where(disc, 0.3, 0.5).astype(np.float32)


def test_load_crop_from_array_png_and_tiff(tmp_path):
    crop = _crop()
    assert np.array_equal(load_crop(crop, 32), crop)
    assert load_crop(crop[None], 32).shape == (32, 32)  # singleton axis squeezed
    png = tmp_path / "cell.png"
    Image.fromarray((crop * 255).round().astype(np.uint8)).save(png)
    assert np.allclose(load_crop(png, 32), crop, atol=1 / 255)
    assert np.allclose(load_crop(str(png), 32), crop, atol=1 / 255)
    tif_float = tmp_path / "cell.tif"
    tifffile.imwrite(tif_float, crop)
    assert np.array_equal(load_crop(tif_float, 32), crop)


def test_a_raw_window_is_cut_as_ingestion_cuts_it(tmp_path):
    # A real cell as a 16-bit window from a movie: not divided by 65535 (a near-black image)
    # but segmented, its centre cell cut, normalised and turned as ingestion does.
    name, image, _ = next(item for item in real_images() if item[2] is not None)
    window = image.astype(np.uint16) * 257
    tif = tmp_path / "window16.tif"
    tifffile.imwrite(tif, window)
    expected = centre_cell(image, 32, pixel_size_um=PIXEL_SIZE_UM,
                           field_of_view_um=DEFAULT_FIELD_OF_VIEW_UM)[1]
    crop = load_crop(tif, 32, pixel_size_um=PIXEL_SIZE_UM)
    assert np.allclose(crop, expected, atol=1e-5), name
    assert abs(float(np.median(crop[:4])) - 0.5) < 0.1  # the background at 0.5
    # The window as the 8-bit image it is, and as floats in counts: the same cell.
    assert np.allclose(load_crop(image, 32, pixel_size_um=PIXEL_SIZE_UM), expected, atol=1e-5)
    floats = image.astype(np.float32) * 3.0
    assert np.allclose(load_crop(floats, 32, pixel_size_um=PIXEL_SIZE_UM), expected, atol=1e-4)
    with pytest.raises(ValueError, match="uint16 pixels are not a normalised crop"):
        load_crop(tif, 32, normalised=True)
    with pytest.raises(ValueError, match="without a usable cell at its centre"):
        load_crop(np.random.default_rng(0).integers(100, 110, (64, 64)).astype(np.uint16), 32)


def test_wrong_size_is_resized_or_rejected():
    big = _crop(64)
    resized = load_crop(big, 32)
    assert resized.shape == (32, 32) and resized.dtype == np.float32
    assert np.allclose(resized, _crop(32), atol=0.2)
    with pytest.raises(ValueError, match="64x64, the model takes 32x32"):
        load_crop(big, 32, resize=False)
    with pytest.raises(ValueError, match="non-square"):
        load_crop(np.full((32, 40), 0.5, np.float32), 32)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.full((2, 32, 32), 0.5), "2-D"),
        (np.zeros(32), "2-D"),
        (np.where(np.eye(32, dtype=bool), np.nan, 0.5), "NaN"),
        (np.full((32, 32), 3.0), "constant"),  # a raw window: nothing in it
        (np.full((32, 32), "a"), "not an image"),
        ({"pixels": 1}, "2-D array or the path"),
    ],
)
def test_bad_crops_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        load_crop(bad, 32)


def test_a_crop_said_to_be_normalised_is_held_to_it():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_crop(np.full((32, 32), 3.0), 32, normalised=True)


def test_bad_files_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_crop(tmp_path / "missing.png", 32)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"\.png, \.tif"):
        load_crop(text, 32)
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        load_crop(fake, 32)


def test_exaggerate_accepts_paths_lists_and_resizes(tiny_model, tmp_path):
    png = tmp_path / "cell.png"
    Image.fromarray((_crop(64) * 255).astype(np.uint8)).save(png)
    out = exaggerate(tiny_model, [png, _crop()], sigmas=[-1, 0, 1], cells=["a", "b"])
    assert out.images.shape == (2, 3, 32, 32)
    assert list(out.table["cell"].unique()) == ["a", "b"]
    with pytest.raises(ValueError, match="64x64"):
        exaggerate(tiny_model, png, resize=False)
    with pytest.raises(ValueError, match="sigmas"):
        exaggerate(tiny_model, _crop(), sigmas=[])
    with pytest.raises(ValueError, match="2 cell ids for 1"):
        exaggerate(tiny_model, _crop(), cells=["a", "b"])


def test_model_without_classifier_is_refused(tiny_model):
    config = tiny_model.config
    with pytest.raises(ValueError, match="no classifier"):
        exaggerate(LCHModel(config), _crop())  # weight and direction never set
    no_sigma = LCHModel(config)
    no_sigma.load_state_dict(tiny_model.state_dict())
    no_sigma.sigma.zero_()
    with pytest.raises(ValueError, match="sigma"):
        check_classifier(no_sigma)
    no_direction = LCHModel(config)
    no_direction.load_state_dict(tiny_model.state_dict())
    no_direction.direction.zero_()
    with pytest.raises(ValueError, match="direction"):
        exaggerate_codes(no_direction, np.zeros((1, 8)))
    with pytest.raises(ValueError, match="missing"):
        check_classifier(AAE(config))


def test_spearman_table_pools_cells_and_skips_missing():
    table = pd.DataFrame(
        {
            "sigma": [-1.0, 0.0, 1.0] * 2,
            "up": [1.0, 2.0, 3.0, 1.5, 2.5, np.nan],
            "flat": [1.0] * 6,
        }
    )
    out = spearman_table(table, ["up", "flat"]).set_index("feature")
    assert out.loc["up", "n"] == 5 and out.loc["up", "rho"] > 0.8
    assert math.isnan(out.loc["flat", "rho"])
    with pytest.raises(ValueError, match="not in the table"):
        spearman_table(table, ["area"])


def test_montage_grid(tiny_model, tmp_path):
    out = exaggerate(tiny_model, [_crop(), _crop()], sigmas=[-2, 0, 2], measure=False)
    image = montage(out, scale=2)
    tile = 32 * 2
    assert image.mode == "RGB"
    title = math.ceil(ImageFont.load_default().getlength(METHOD_TITLES["linear"])) + 4
    assert image.width == max(64 + 3 * (tile + 2), title)
    assert image.height == 28 + 2 * (tile + 12 + 2)
    path = save_montage(out, tmp_path / "sub" / "montage.png")
    with Image.open(path) as saved:
        assert saved.size == image.size and saved.format == "PNG"
    with pytest.raises(ValueError, match=r"\.png"):
        save_montage(out, tmp_path / "montage.jpg")
    # The first line names the method: only it differs between the two methods' montages.
    other = np.asarray(montage(dataclasses.replace(out, method="latent-shift"), scale=2))
    drawn = np.asarray(image)
    assert (drawn[:14] < 128).any() and not np.array_equal(drawn[:14], other[:14])
    grid = 64 + 3 * (tile + 2)
    np.testing.assert_array_equal(drawn[14:, :grid], other[14:, :grid])


def test_tiles_past_the_natural_range_are_framed(tiny_model):
    # The training codes' scores (about their mean, in SDs) end at their 1st/99th percentiles.
    codes = np.random.default_rng(0).normal(size=(40, 8))
    direction = tiny_model.direction.double().numpy()
    scores = codes @ direction
    scores = (scores - scores.mean()) / scores.std(ddof=1)
    np.testing.assert_allclose(tiny_model.natural_range.numpy(),
                               np.quantile(scores, [0.01, 0.99]), atol=1e-5)
    # A code at the training mean: past the range only where |s| exceeds it.
    low, high = tiny_model.natural_range.tolist()
    sigmas = [-4, -1, 0, 1, 4]
    out = exaggerate_codes(tiny_model, tiny_model.latent_mean.numpy(), sigmas, measure=False)
    expected = (np.array(sigmas) < low) | (np.array(sigmas) > high)
    assert expected.tolist() == [True, False, False, False, True]
    assert out.beyond_range[0].tolist() == expected.tolist()
    # Framed in orange, and only those tiles.
    image = np.asarray(montage(out, scale=2))
    orange = np.all(image == (255, 140, 0), axis=-1)
    tile = 64
    framed = [orange[28:28 + tile, 64 + j * (tile + 2): 64 + j * (tile + 2) + tile].sum()
              for j in range(len(sigmas))]
    assert [f > 4 * tile for f in framed] == expected.tolist()
    legend = image[14:28, :64].astype(int)  # antialiased text: orange-ish, not exact
    assert ((legend[..., 0] - legend[..., 2] > 120) & (legend[..., 1] > 60)).any()


def test_a_model_saved_before_the_range_existed_loads_without_marks(tiny_model):
    state = tiny_model.to_state()
    del state["state_dict"]["natural_range"]
    old = LCHModel.from_state(state)
    assert torch.isnan(old.natural_range).all()
    out = exaggerate_codes(old, old.latent_mean.numpy(), [-4, 0, 4], measure=False)
    assert out.beyond_range is None
    image = np.asarray(montage(out))
    assert not np.all(image == (255, 140, 0), axis=-1).any()
