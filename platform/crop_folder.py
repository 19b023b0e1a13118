"""A folder of pre-cut single-cell crops as a cohort: the paper's released images.

IDR study idr0109 (Zaritsky et al. 2021) publishes crops, not movies, each centred on one tracked
cell and named ``<date>_<line>_s<series>_t<start>_x<x>_y<y>_t<end>_t7Ready_f<frame>.png``. The
name says everything LCH's cell table needs besides the image: the cell line, the track (date,
line, series, first frame, position, last frame) and the frame. The cell in each crop is found
and cut as ingestion cuts cells from movies (:func:`lch.single_cell.centre_cell`), so a model
trained on these crops reads the same kind of input as one trained on a lab's movies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CROP_NAME = re.compile(
    r"(?P<date>\d{6})_(?P<line>[A-Za-z0-9]+)_s(?P<series>\d+)_t(?P<start>\d+)"
    r"_x(?P<x>\d+)_y(?P<y>\d+)_t(?P<end>\d+)_t7Ready_f(?P<frame>\d+)"
)
CROP_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass(frozen=True)
class CropName:
    """What an idr0109 crop's file name says (the line in lower case)."""

    date: str
    line: str
    series: int
    start: int
    x: int
    y: int
    end: int
    frame: int

    @property
    def movie(self) -> str:
        """The field of view the track was filmed in: date, line and series."""
        return f"{self.date}_{self.line}_s{self.series:02d}"

    @property
    def track(self) -> str:
        """The tracked cell: its movie, first frame, position and last frame."""
        return f"{self.movie}_t{self.start}_x{self.x}_y{self.y}_t{self.end}"


def parse_crop_name(path: str | Path) -> CropName:
    """Read a crop's file name.

    Raises
    ------
    ValueError
        If the name does not follow the idr0109 pattern; the message gives the pattern.
    """
    stem = Path(path).stem
    match = CROP_NAME.fullmatch(stem)
    if match is None:
        raise ValueError(
            f"{Path(path).name}: not named <date>_<line>_s<series>_t<start>_x<x>_y<y>_t<end>"
            "_t7Ready_f<frame>"
        )
    parts = match.groupdict()
    return CropName(parts.pop("date"), parts.pop("line").lower(),
                    **{k: int(v) for k, v in parts.items()})


def list_crops(folder: str | Path) -> tuple[list[tuple[Path, CropName]], list[str]]:
    """List the crops of ``folder`` (PNG/TIFF, sorted by name) with their parsed names.

    Also return one message per image file whose name does not parse.
    """
    parsed, bad = [], []
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() not in CROP_SUFFIXES or path.name.startswith("."):
            continue
        try:
            parsed.append((path, parse_crop_name(path)))
        except ValueError as exc:
            bad.append(str(exc))
    return parsed, bad


def read_crop(path: str | Path) -> np.ndarray:
    """Read a crop image as a 2-D array in its own dtype (a colour image turns grey)."""
    with Image.open(path) as image:
        grey = image if image.mode in ("L", "I", "I;16", "F") else image.convert("L")
        return np.asarray(grey)
