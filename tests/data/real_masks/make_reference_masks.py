"""Reference masks of tests/data/real: two outlining tools and a hand-set correction per image
(settings.json); writes one label PNG per image and the review montage. See README.md.

Run from the repository root: ``.venv/bin/python tests/data/real_masks/make_reference_masks.py``.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, segmentation
from skimage.util import montage

PX = 0.325  # µm per pixel of the real crops
# Crops whose centre cell could not be outlined with confidence (see README.md).
EXCLUDED = {12, 24, 25, 29, 30, 41}


def um(length: float) -> float:
    return length / PX


def texture(img: np.ndarray, win_um: float = 1.0, smooth_um: float = 0.5) -> np.ndarray:
    smooth = filters.gaussian(img, um(0.25), preserve_range=True)
    w = int(round(um(win_um))) | 1
    mean, mean_sq = ndi.uniform_filter(smooth, w), ndi.uniform_filter(smooth * smooth, w)
    sd = np.sqrt(np.maximum(mean_sq - mean * mean, 0))
    return np.log(filters.gaussian(sd, um(smooth_um), preserve_range=True) + 1e-3)


def _cut(fg: np.ndarray, line: list[int]) -> np.ndarray:
    """Remove a hand-drawn separating line (y0, x0, y1, x1) from a mask."""
    y0, x0, y1, x1 = line
    n = int(max(abs(y1 - y0), abs(x1 - x0))) + 1
    yy = np.linspace(y0, y1, n).round().astype(int).clip(0, fg.shape[0] - 1)
    xx = np.linspace(x0, x1, n).round().astype(int).clip(0, fg.shape[1] - 1)
    cut = np.zeros_like(fg)
    cut[yy, xx] = True
    return fg & ~ndi.binary_dilation(cut, iterations=1)


def foreground(img: np.ndarray, cfg: dict) -> np.ndarray:
    """Cells of one crop: the phase-bright body ("int") or a fine texture threshold ("tex")."""
    if cfg.get("mode", "int") == "int":
        smooth = filters.gaussian(img, um(cfg.get("sigma", 0.3)), preserve_range=True)
        fg = smooth > filters.threshold_otsu(smooth) * cfg.get("f", 1.0)
    else:
        lt = texture(img, cfg.get("win", 1.0), cfg.get("smooth", 0.5))
        fg = lt > filters.threshold_otsu(lt) + cfg.get("dt", 0.0)
    closing = morphology.disk(int(um(cfg.get("close", 0.6))))
    fg = ndi.binary_closing(np.pad(fg, 4), closing)[4:-4, 4:-4]
    fg = ndi.binary_fill_holes(fg)
    fg = ndi.binary_opening(fg, morphology.disk(cfg.get("open", 2)))
    for line in cfg.get("cuts", []):
        fg = _cut(fg, line)
    return fg


def reference(img: np.ndarray, cfg: dict) -> np.ndarray:
    """Label 1: the component at (or within 6 µm of) each seed, by default the crop's centre;
    labels 2...: every other component of at least ``min_nb_um2``."""
    img = img.astype(float)
    comps = measure.label(foreground(img, cfg))
    seeds = cfg.get("seeds", [[128, 128]])
    out = np.zeros(img.shape, np.uint8)
    yy, xx = np.nonzero(comps)
    for k, (y, x) in enumerate(seeds, start=1):
        if not len(yy):
            break
        c = comps[y, x]
        if not c:
            d = (yy - y) ** 2 + (xx - x) ** 2
            c = comps[yy[np.argmin(d)], xx[np.argmin(d)]] if d.min() < um(6) ** 2 else 0
        if c:
            out[(comps == c) & (out == 0)] = k
    if cfg.get("nb_tex"):  # neighbours too dim for the intensity threshold: from the texture
        tex = reference(img, {**cfg, "mode": "tex", "nb_tex": False, "seeds": []}) > 0
        near = ndi.binary_dilation(out > 0, morphology.disk(int(um(2))))
        comps = measure.label(ndi.binary_opening(tex & ~near, morphology.disk(int(um(1.5)))))
    k = len(seeds)
    for r in measure.regionprops(comps):
        if r.area * PX * PX >= cfg.get("min_nb_um2", 30) and not np.any(out[comps == r.label]):
            k += 1
            out[comps == r.label] = k
    return out


def render(img: np.ndarray, lab: np.ndarray, name: str = "") -> np.ndarray:
    """The crop with the centre cell's outline in green, the others' in red, and its index."""
    a = img.astype(float)
    a = (a - a.min()) / (np.ptp(a) + 1e-9)
    rgb = np.stack([np.clip(a * 1.6, 0, 1)] * 3, -1)
    rgb[segmentation.find_boundaries(lab, mode="inner") & (lab > 1)] = [1, 0.3, 0.3]
    rgb[segmentation.find_boundaries(lab == 1, mode="inner")] = [0.2, 1, 0.2]
    im = Image.fromarray((rgb * 255).astype(np.uint8))
    ImageDraw.Draw(im).text((3, 3), name, fill=(255, 255, 0))
    return np.asarray(im) / 255


if __name__ == "__main__":
    here = Path(__file__).parent
    cfgs = json.loads((here / "settings.json").read_text())
    files = sorted((here.parent / "real").glob("*.png"))
    tiles = []
    for i, f in enumerate(files):
        if i in EXCLUDED:
            continue
        a = np.asarray(Image.open(f))
        lab = reference(a, cfgs.get(str(i), {}))
        Image.fromarray(lab.astype(np.uint8)).save(here / f.name)
        tiles.append(render(a, lab, str(i)))
    tiles = np.stack(tiles)
    m = montage(tiles, grid_shape=(-(-len(tiles) // 8), 8), channel_axis=-1, fill=(0, 0, 0),
                padding_width=4)
    review = Image.fromarray((m * 255).astype(np.uint8)).quantize(64)
    review.save(here / "review.png", optimize=True)
