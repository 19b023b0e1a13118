"""One single-cell image → the model's crop: normalised crops as sent, raw windows and picked
cells cut as ingestion cuts them."""

from __future__ import annotations

import numpy as np
import pytest

from lch.cells import frame_cells
from lch.crops import DEFAULT_FIELD_OF_VIEW_UM
from lch.segmentation import segment_frame
from lch.single_cell import (
    NORMALISED,
    RAW,
    cell_at,
    centre_cell,
    looks_normalised,
    model_crop,
    normalised_crop,
)
from lch.synth import PIXEL_SIZE_UM, CellShape, render_frame

from real_cells import PIXEL_SIZE_UM as REAL_PIXEL_SIZE_UM
from real_cells import real_images

FOV = DEFAULT_FIELD_OF_VIEW_UM


def test_what_looks_normalised():
    crop = np.full((32, 32), 0.5, np.float32)
    assert looks_normalised(crop) and looks_normalised((crop * 255).astype(np.uint8))
    assert not looks_normalised(crop * 300)  # floats in counts
    assert not looks_normalised(np.full((32, 32), 30, np.uint8))  # a dark 8-bit window
    assert not looks_normalised(np.full((32, 32), 32768, np.uint16))  # 16-bit: always raw


def test_a_normalised_crop_is_used_as_sent():
    crop = np.random.default_rng(0).uniform(0.3, 0.7, (32, 32)).astype(np.float32)
    made, kind = model_crop(crop, 32, field_of_view_um=FOV, pixel_size_um=0.325)
    assert kind == NORMALISED and np.array_equal(made, crop)
    eight_bit = normalised_crop((crop * 255).round().astype(np.uint8), 32)
    assert np.allclose(eight_bit, crop, atol=1 / 255)
    with pytest.raises(ValueError, match="uint16 pixels are not a normalised crop"):
        normalised_crop((crop * 65535).astype(np.uint16), 32)
    with pytest.raises(ValueError, match="crop is 16x16, the model takes 32x32"):
        normalised_crop(crop[:16, :16], 32, resize=False)


def test_a_raw_window_becomes_the_crop_ingestion_cuts():
    name, image, _ = next(item for item in real_images() if item[2] is not None)
    expected = centre_cell(image, 64, pixel_size_um=REAL_PIXEL_SIZE_UM, field_of_view_um=FOV)[1]
    for window in (image, image.astype(np.uint16) * 257, image.astype(np.float64) * 3.0):
        crop, kind = model_crop(window, 64, field_of_view_um=FOV, pixel_size_um=REAL_PIXEL_SIZE_UM)
        assert kind == RAW and np.allclose(crop, expected, atol=1e-4), (name, window.dtype)
    with pytest.raises(ValueError, match="pixels of dtype <U1 are not an image"):
        model_crop(np.full((8, 8), "a"), 64, field_of_view_um=FOV, pixel_size_um=0.325)


def test_the_cell_at_a_point_is_picked():
    shapes = [CellShape(label=i + 1, y=y, x=x, radius=10, arm_angles=(0.5,), arm_lengths=(12,))
              for i, (y, x) in enumerate([(60, 60), (60, 180), (180, 70), (170, 190)])]
    frame, _ = render_frame(shapes, size=(256, 256), rng=np.random.default_rng(0))
    labels = segment_frame(frame, pixel_size_um=PIXEL_SIZE_UM)
    table, crops = frame_cells(frame, 64, pixel_size_um=PIXEL_SIZE_UM, labels=labels)
    kept = table[table["drop_reason"] == ""].reset_index(drop=True)
    for y, x in ((60, 180), (180, 70)):
        expected = crops[int(np.flatnonzero(kept["label"] == labels[y, x])[0])]
        picked = cell_at(frame, y, x, 64, pixel_size_um=PIXEL_SIZE_UM, field_of_view_um=FOV)
        assert np.array_equal(picked, expected)
    with pytest.raises(ValueError, match="no cell at x=5, y=5"):
        cell_at(frame, 5, 5, 64, pixel_size_um=PIXEL_SIZE_UM, field_of_view_um=FOV)
    with pytest.raises(ValueError, match=r"\(300, 10\) lies outside the 256x256 frame"):
        cell_at(frame, 10, 300, 64, pixel_size_um=PIXEL_SIZE_UM, field_of_view_um=FOV)
