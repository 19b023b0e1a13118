"""Segmentation of single phase-contrast frames (scikit-image), its scales in micrometres.

Cells are found from texture, not from a fixed polarity: phase-bright rounded cells with bright
rims, phase-dark bodies, spread cells and thin arms all vary far more within a micrometre than the
flat background does. Every threshold is derived from the image and every length is in µm,
converted with the movie's pixel size, so the same settings serve 0.325 and 0.65 µm movies on any
intensity scale (raw counts or crops in [0, 1]):

1. texture: the log of the local standard deviation (1 µm window) of the lightly smoothed image;
2. detection: hysteresis thresholds set from the lower half of the texture (the background's
   level and spread), closing and hole filling, small objects dropped;
3. splitting: touching cells are separated by a watershed of the distance transform from its
   h-maxima, where a neck is narrower than the cells on either side;
4. outline, cell by cell: the texture's Otsu threshold within the cell's neighbourhood; a compact
   phase-bright cell (a solid bright body filling a good part of a compact textured region) is
   outlined by its bright body instead, which leaves out the halo around it;
5. objects smaller than the minimum area, or no more textured than the background, are dropped.

Where pixels are coarser than an arm is wide (a model's crops), the texture outline stops at the
body; :func:`attach_dark_lines` adds the thin dark lines leaving a cell to it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import filters, measure, morphology, segmentation
from skimage.transform import resize

from lch.pixel_size import DEFAULT_PIXEL_SIZE_UM, check_pixel_size, um_to_px

BACKGROUND_BLOCK = 32
# Lengths in µm (areas in µm²): the scales of the method above.
PRESMOOTH_UM = 0.25
TEXTURE_WINDOW_UM = 1.0
TEXTURE_SMOOTH_UM = 0.5
# The texture's floor, a fraction of the image's range: noise-free (decoded) images have a
# background of almost no variation, whose log would otherwise spread over decades.
TEXTURE_FLOOR = 5e-3
# A crop's fill has a texture this close to the floor (log units): smoothing leaves it ~1e-6
# above, never exactly on it; cameras' backgrounds lie ~1 above.
FILL_TEXTURE = 1e-3
BODY_SMOOTHING_UM = 0.3
DETECT_CLOSING_UM = 1.0
OUTLINE_CLOSING_UM = 1.5
OUTLINE_REACH_UM = 1.5
OPENING_UM = 0.5
BACKGROUND_RING_UM = 4.0
WINDOW_MARGIN_UM = 4.0
SPLIT_DEPTH_UM = 3.0
MIN_AREA_UM2 = 25.0
# The background is judged from the least textured part of the image (a cell with its arms and
# halo may fill more than half of a crop).
BACKGROUND_QUANTILE = 0.5
# Thresholds in background spreads (robust SDs of the background's log texture).
LOW_SPREADS, HIGH_SPREADS, CELL_SPREADS = 3.0, 6.0, 4.0
# Real backgrounds' texture varies at least this much (log units); a purely noisy one less.
MIN_SPREAD = 0.05
# ... and at most this much (the real crops: up to 0.16); a wider lower half holds cells or their
# halos (a decoded cell exaggerated far: a bright glow over most of the crop).
MAX_SPREAD = 0.3
COMPACT_SOLIDITY = 0.85
BRIGHT_FRACTION = 0.2
DARK_FRACTION = 0.25
NOISE_SDS = 3.0
EDGE_SIGMA_UM = 0.65
DARK_SMOOTHING_UM = 0.65
EDGE_BAND_UM = 1.3
# Thin dark lines (arms a coarse image's texture misses): narrower than about twice this radius,
# darker than their surroundings by more than the background's spread and than this share of the
# image's range, reaching this far past a band as wide round the cell (where dark rings lie).
LINE_RADIUS_UM = 2.6
LINE_FLOOR = 0.05
LINE_MIN_REACH_UM = 2.6


def check_frame(frame: np.ndarray) -> np.ndarray:
    """Validate one 2-D frame and return it as float64.

    Raises
    ------
    ValueError
        If the frame is not 2-D, contains NaN/inf, or is constant.
    """
    arr = np.asarray(frame)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D frame, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("frame is empty (zero pixels)")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("frame contains NaN or infinite values")
    if arr.max() == arr.min():
        raise ValueError(f"frame is constant (every pixel = {arr.flat[0]!r}); nothing to segment")
    return arr


def _block_edges(n: int, block: int) -> np.ndarray:
    n_blocks = max(1, n // block)
    return np.linspace(0, n, n_blocks + 1).round().astype(int)


def estimate_background(
    image: np.ndarray, mask: np.ndarray | None = None, *, block: int = BACKGROUND_BLOCK
) -> np.ndarray:
    """Smooth background: medians of ``block``-sized tiles, bilinearly upsampled.

    Parameters
    ----------
    image
        2-D image.
    mask
        Optional boolean image of pixels to ignore (e.g. dilated cells). Tiles left without
        pixels take the median of the other tiles.
    block
        Tile size in px; images smaller than two tiles get one tile (a constant background).

    Returns
    -------
    numpy.ndarray of float64, same shape as ``image``.
    """
    img = np.asarray(image, dtype=np.float64)
    values = img if mask is None else np.where(mask, np.nan, img)
    ye, xe = _block_edges(img.shape[0], block), _block_edges(img.shape[1], block)
    grid = np.full((len(ye) - 1, len(xe) - 1), np.nan)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            tile = values[ye[i] : ye[i + 1], xe[j] : xe[j + 1]]
            if np.any(~np.isnan(tile)):
                grid[i, j] = np.nanmedian(tile)
    if np.all(np.isnan(grid)):
        grid[:] = np.median(img)
    grid[np.isnan(grid)] = np.nanmedian(grid)
    if grid.size == 1:
        return np.full(img.shape, grid.flat[0])
    return resize(grid, img.shape, order=1, mode="edge", anti_aliasing=False)


def local_sd(image: np.ndarray, size: int) -> np.ndarray:
    """Compute the SD of ``image`` in a ``size`` x ``size`` window around each pixel."""
    mean = ndimage.uniform_filter(image, size)
    mean_sq = ndimage.uniform_filter(image * image, size)
    return np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))


def log_texture(image: np.ndarray, pixel_size_um: float) -> np.ndarray:
    """Log of the local standard deviation in a :data:`TEXTURE_WINDOW_UM` window, smoothed.

    Parameters
    ----------
    image : ndarray
        2-D float image.
    pixel_size_um : float
        Side of one pixel in µm.

    Returns
    -------
    ndarray of float64, same shape.
    """
    smooth = filters.gaussian(image, PRESMOOTH_UM / pixel_size_um, preserve_range=True)
    window = max(3, int(round(TEXTURE_WINDOW_UM / pixel_size_um)) | 1)
    sd = filters.gaussian(local_sd(smooth, window), TEXTURE_SMOOTH_UM / pixel_size_um,
                          preserve_range=True)
    return np.log(sd + _texture_floor(image))


def _texture_floor(image: np.ndarray) -> float:
    return TEXTURE_FLOOR * float(np.ptp(image))


def _disk(radius_px: float) -> np.ndarray:
    return morphology.disk(max(1, int(round(radius_px))))


def _closed_filled(mask: np.ndarray, radius_px: float) -> np.ndarray:
    # Padded so that closing does not erode objects cut by the image edge.
    pad = int(round(radius_px)) + 2
    closed = ndimage.binary_closing(np.pad(mask, pad, mode="edge"), _disk(radius_px))
    return ndimage.binary_fill_holes(closed[pad:-pad, pad:-pad])


def largest_object(mask: np.ndarray) -> np.ndarray:
    """Return the largest connected object of a boolean mask (the mask itself if empty)."""
    labels = measure.label(mask)
    if labels.max() == 0:
        return mask
    return labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1


def mask_solidity(mask: np.ndarray) -> float:
    """Return the solidity (area over convex hull area) of a one-object mask, 0 if empty."""
    return float(measure.regionprops(mask.astype(np.uint8))[0].solidity) if mask.any() else 0.0


def robust_spread(values: np.ndarray) -> float:
    """Return the median absolute deviation of ``values``, scaled to a normal SD."""
    # Imported on first use: scipy.stats takes ~0.5 s to import, paid by every Ray worker that
    # loads lch, and most of them never measure a spread.
    from scipy.stats import median_abs_deviation

    return float(median_abs_deviation(values, scale="normal"))


def padding(image: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """Return the pixels of ``image`` without texture: a crop's fill beyond the frame edge.

    ``texture`` is the image's :func:`log_texture`; a pixel is fill where it lies within
    :data:`FILL_TEXTURE` of the floor. A camera's background, even quantised at a low gain, or
    a decoded one lies far above it.
    """
    return texture < np.log(_texture_floor(image)) + FILL_TEXTURE


def _background_level(texture: np.ndarray, fill: np.ndarray) -> tuple[float, float]:
    """Return the median and robust spread of the texture's lower half (the background's).

    The spread is at most :data:`MAX_SPREAD`.

    ``fill`` pixels (:func:`padding`) are left out: their texture, at the floor, would put the
    level below any camera background and the camera's background would read as cells.
    """
    varied = texture[~fill]
    varied = varied if varied.size else texture.ravel()
    low = varied[varied <= np.quantile(varied, BACKGROUND_QUANTILE)]
    level = float(np.median(low))
    return level, min(robust_spread(low), MAX_SPREAD)


def _detect(texture: np.ndarray, px: float, level: float, spread: float) -> np.ndarray:
    """Cell regions, generously: hysteresis on the texture, closed and filled."""
    high = level + HIGH_SPREADS * max(spread, MIN_SPREAD)
    found = filters.apply_hysteresis_threshold(texture, level + LOW_SPREADS * spread, high)
    found = _closed_filled(found, DETECT_CLOSING_UM / px)
    return morphology.remove_small_objects(found, max_size=int(MIN_AREA_UM2 / px**2))


def _split(found: np.ndarray, px: float) -> np.ndarray:
    """One basin per cell: a watershed of the smoothed distance transform from its h-maxima."""
    distance = filters.gaussian(ndimage.distance_transform_edt(found), 1, preserve_range=True)
    markers = measure.label(_h_maxima_by_region(distance, SPLIT_DEPTH_UM / px))
    return segmentation.watershed(-distance, markers, mask=found)


def _h_maxima_by_region(image: np.ndarray, h: float) -> np.ndarray:
    """Return ``skimage.morphology.h_maxima`` of a non-negative image, one region at a time.

    The same maxima (regions of positive values are separated by zeros, which carry nothing
    between them), without sorting the whole frame's background.
    """
    peaks = np.zeros(image.shape, np.uint8)
    regions, _ = ndimage.label(image > 0, structure=np.ones((3, 3)))
    for index, box in enumerate(ndimage.find_objects(regions), start=1):
        inside = regions[box] == index
        peaks[box] |= morphology.h_maxima(np.where(inside, image[box], 0.0), h) & inside
    return peaks


def steepest_edge_outline(
    image: np.ndarray, mask: np.ndarray, sigma: float = 1.0, band: int = 2
) -> np.ndarray:
    """Move the outline of dark objects to the steepest edge of ``image``.

    The optics blur a bright halo into a dark cell's rim, so a darkness threshold alone puts the
    outline further inside the brighter the halo, and loses thin arms between bright halos; the
    Laplacian of Gaussian's zero crossing stays at the edge.

    Parameters
    ----------
    image : ndarray
        Background-flattened 2-D image (objects darker than 0).
    mask : ndarray of bool
        The dark objects from a threshold.
    sigma : float
        Gaussian sigma (px) of the Laplacian of Gaussian.
    band : int
        Pixels deeper than ``band`` px inside ``mask`` are kept; within ``band`` px of its
        edge, on either side, a pixel is in the object where the LoG is positive.

    Returns
    -------
    numpy.ndarray of bool
    """
    footprint = morphology.disk(band)
    core = ndimage.binary_erosion(mask, footprint)
    rim = ndimage.binary_dilation(mask, footprint) & (ndimage.gaussian_laplace(image, sigma) > 0)
    return core | rim


def _outline(
    cell: np.ndarray, others: np.ndarray, maps: dict, px: float
) -> tuple[np.ndarray, bool]:
    """Outline one cell within its window; tell whether it rests on texture alone.

    ``maps`` are the images, cut to that window. Texture alone means not on a dark or bright
    body.
    """
    texture, smooth, flat = maps["texture"], maps["smooth"], maps["flat"]
    region = ndimage.binary_dilation(cell, _disk(OUTLINE_REACH_UM / px)) & ~others
    textured = texture > filters.threshold_otsu(texture[region])
    mask = largest_object(_closed_filled(textured & region, OUTLINE_CLOSING_UM / px))
    mask = ndimage.binary_opening(mask, _disk(OPENING_UM / px))
    dark = largest_object(region & (flat < -maps["darkness"]))
    if dark.sum() > DARK_FRACTION * max(mask.sum(), 1):  # a phase-dark body
        edge = steepest_edge_outline(maps["flattened"], dark, EDGE_SIGMA_UM / px,
                                     um_to_px(EDGE_BAND_UM, px))
        return largest_object(_closed_filled(edge & region, 1)), False
    bright_level = filters.threshold_otsu(smooth[region])
    if bright_level <= maps["background"]:
        return mask, True
    bright = largest_object(
        _closed_filled((smooth > bright_level) & region, DETECT_CLOSING_UM / px)
    )
    compact = mask_solidity(mask) > COMPACT_SOLIDITY and mask_solidity(bright) > COMPACT_SOLIDITY
    if compact and bright.sum() > BRIGHT_FRACTION * max(mask.sum(), 1):
        return bright, False
    return mask, True


def segment_frame(
    frame: np.ndarray,
    *,
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM,
    min_area_um2: float = MIN_AREA_UM2,
) -> np.ndarray:
    """Label the cells of one phase-contrast frame.

    Parameters
    ----------
    frame : ndarray
        2-D image on any intensity scale (uint16 counts, float in [0, 1], ...).
    pixel_size_um : float
        Side of one pixel in µm (the movie's; the paper's microscope: 0.325).
    min_area_um2 : float
        Objects smaller than this are dropped (debris).

    Returns
    -------
    numpy.ndarray of int32
        Label image, 0 = background, cells numbered 1..N.

    Raises
    ------
    ValueError
        If the frame is not 2-D, contains NaN/inf, or is constant, or the pixel size is not a
        positive number.
    """
    img = check_frame(frame)
    px = check_pixel_size(pixel_size_um)
    texture = log_texture(img, px)
    fill = padding(img, texture)
    level, spread = _background_level(texture, fill)
    basins = _split(_detect(texture, px, level, spread), px)
    found = basins > 0
    smooth = filters.gaussian(img, BODY_SMOOTHING_UM / px, preserve_range=True)
    away = ~ndimage.binary_dilation(found, _disk(OUTLINE_REACH_UM / px)) & ~fill
    flattened = img - estimate_background(img, mask=~away)
    flat = filters.gaussian(flattened, DARK_SMOOTHING_UM / px, preserve_range=True)
    noise = robust_spread(flat[away]) if away.any() else 0.0
    darkest = float(-np.percentile(flat[found], 1)) if found.any() else 0.0
    maps = {
        "texture": texture, "smooth": smooth, "flat": flat, "flattened": flattened,
        "background": float(np.median(smooth[away])) if away.any() else float(np.median(smooth)),
        # Floor for noise-free (decoded) images: 5 % of the darkest contrast.
        "darkness": max(NOISE_SDS * noise, 0.05 * max(darkest, 0.0)),
    }
    labels = np.zeros(img.shape, np.int32)
    pad = int(round(WINDOW_MARGIN_UM / px))
    for region in measure.regionprops(basins):
        window = tuple(slice(max(0, s.start - pad), s.stop + pad) for s in region.slice)
        cell = basins[window] == region.label
        cut = {k: v[window] if isinstance(v, np.ndarray) else v for k, v in maps.items()}
        mask, by_texture = _outline(cell, found[window] & ~cell, cut, px)
        if mask.sum() * px * px < min_area_um2:
            continue
        if by_texture and np.median(texture[window][mask]) < level + CELL_SPREADS * spread:
            continue  # no more textured than the background
        free = labels[window] == 0
        labels[window][mask & free] = labels.max() + 1
    return labels


def attach_dark_lines(
    image: np.ndarray, labels: np.ndarray, target: int, pixel_size_um: float
) -> np.ndarray:
    """Add to one cell the thin dark lines that leave it: its arms where texture misses them.

    At a coarse pixel size (a model's 64 px crops: 1.3 µm) an arm is one or two pixels wide and
    darker than its surroundings; the texture window is wider than the arm, so the outline stops
    at the body. A line is a connected part of the image's black top-hat (disk of
    :data:`LINE_RADIUS_UM`) above the background's level by :data:`NOISE_SDS` of its spread
    and by :data:`LINE_FLOOR` of the image's range, touching the cell. Of it, the parts past a
    band :data:`LINE_MIN_REACH_UM` wide round the cell that reach that far again and are thin
    are added, with their bases in the band (a dark ring hugging a body, or an arc of it past the
    band, is not an arm).

    Parameters
    ----------
    image : numpy.ndarray
        2-D image (any intensity scale).
    labels : numpy.ndarray of int
        Its labels (:func:`segment_frame`).
    target : int
        The cell to extend (a label > 0).
    pixel_size_um : float
        Side of one pixel in µm.

    Returns
    -------
    numpy.ndarray of int32
        A copy of ``labels`` with the lines on background pixels labelled ``target``.
    """
    px = check_pixel_size(pixel_size_um)
    out = np.array(labels, dtype=np.int32)
    cell = out == target
    away = ~ndimage.binary_dilation(out > 0, _disk(WINDOW_MARGIN_UM / px))
    if not cell.any() or not away.any():
        return out
    smooth = filters.gaussian(image, DARK_SMOOTHING_UM / px, preserve_range=True)
    hat = morphology.black_tophat(smooth, _disk(LINE_RADIUS_UM / px))
    spread = robust_spread(hat[away])
    floor = LINE_FLOOR * float(np.ptp(smooth))
    lines = (hat > np.median(hat[away]) + max(NOISE_SDS * spread, floor)) & (out == 0)
    parts, _ = ndimage.label(lines, structure=np.ones((3, 3)))
    touching = np.unique(parts[ndimage.binary_dilation(cell, np.ones((3, 3))) & lines])
    attached = np.isin(parts, touching)
    distance = ndimage.distance_transform_edt(~cell) * px
    # Judged beyond the band where a ring around the body would lie: only a line gets far.
    band = LINE_MIN_REACH_UM
    far, n = ndimage.label(attached & (distance > band), structure=np.ones((3, 3)))
    if n == 0:
        return out
    index = np.arange(1, n + 1)
    beyond = np.asarray(ndimage.maximum(distance, far, index=index)) - band
    width = np.bincount(far.ravel(), minlength=n + 1)[1:] * px * px / np.maximum(beyond, px)
    arms = np.isin(far, index[(width <= 2 * LINE_RADIUS_UM) & (beyond >= band)])
    bases = attached & (distance <= band) & ndimage.binary_dilation(arms, _disk(band / px + 1))
    out[arms | bases] = target
    return out
