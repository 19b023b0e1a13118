"""Small TIFF movies for tests, written with tifffile (independent of the synthetic generator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import yaml


def random_movie(frames: int = 6, height: int = 48, width: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 60_000, size=(frames, height, width), dtype=np.uint16)


def write_tiff(path: Path, data: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, photometric="minisblack", **kwargs)
    return path


def write_manifest(folder: Path, cohort: str, movies: list[dict]) -> Path:
    path = folder / "cohort.yaml"
    path.write_text(yaml.safe_dump({"cohort": cohort, "movies": movies}))
    return path


def entry(movie_id: str, path: str, patient: str = "p1", label: str = "high") -> dict:
    return {"id": movie_id, "path": path, "patient": patient, "label": label,
            "pixel_size_um": 0.65, "frame_interval_s": 60}


def write_ome_tiff(
    path: Path, positions: list[np.ndarray], channels: list[str], *,
    pixel_size_um: float | None = 0.65, interval_s: float | None = 300.0, z_axis: bool = False,
) -> Path:
    """An OME-TIFF as microscopes write them: one image per position, each T×C×Y×X (with
    ``z_axis``: T×Z×Y×X, one channel), with the physical pixel size and frame interval."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, ome=True) as tif:
        for index, data in enumerate(positions):
            metadata = {"axes": "TZYX" if z_axis else "TCYX", "Name": f"pos{index}",
                        "Channel": {"Name": channels}}
            if pixel_size_um is not None:
                metadata |= {"PhysicalSizeX": pixel_size_um, "PhysicalSizeY": pixel_size_um,
                             "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
            if interval_s is not None:
                metadata |= {"TimeIncrement": interval_s, "TimeIncrementUnit": "s"}
            tif.write(data, photometric="minisblack", metadata=metadata)
    return path
