"""TIFF → OME-Zarr conversion of one movie, atomic and idempotent.

The store is written aside (``.tmp-<movie>-<uuid>`` in the same folder) and committed with a
rename, so a reader never sees a half-written movie and a killed run leaves only a hidden folder
that the next run removes. The source's SHA-256 is stored in the provenance: converting the same
file again is a no-op.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from lch.movie_io import MovieError, file_sha256, iter_frames, read_movie_info
from lch.omezarr import (
    create_movie_store,
    ngff_metadata,
    read_provenance,
    store_bytes,
    write_frames,
)

TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"


@dataclass(frozen=True)
class ConversionResult:
    """What happened to one movie: ``status`` is "ok", "skipped" (already stored) or "failed"."""

    movie: str
    status: str
    frames: int = 0
    source_bytes: int = 0
    stored_bytes: int = 0
    seconds: float = 0.0
    message: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _aside(dest: Path, prefix: str) -> Path:
    return dest.parent / f"{prefix}{dest.name}-{uuid.uuid4().hex[:8]}"


def _commit(tmp: Path, dest: Path) -> None:
    """Move a finished store into place, replacing an older version of it if there is one."""
    if dest.exists():
        old = _aside(dest, OLD_PREFIX)
        os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, dest)


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete hidden stores left by killed runs in ``folder``; return what was removed.

    Only call this when no other ingestion of the same cohort is running.
    """
    removed = []
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith((TMP_PREFIX, OLD_PREFIX)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def convert_movie(
    source: str | Path,
    dest: str | Path,
    *,
    movie: str,
    provenance: dict,
    pixel_size_um: float | None = None,
    frame_interval_s: float | None = None,
) -> ConversionResult:
    """Convert one TIFF movie into an OME-Zarr store at ``dest``.

    Parameters
    ----------
    source : path
        The TIFF / OME-TIFF movie (T×Y×X or Y×X, one channel).
    dest : path
        The ``<movie>.ome.zarr`` folder to create or replace.
    movie : str
        The movie id (used in messages and the NGFF ``name``).
    provenance : dict
        Attributes stored under ``lch`` (patient, cell line, label, ...); the source path, its
        SHA-256, size, shape and the conversion time are added.
    pixel_size_um, frame_interval_s : float, optional
        Physical scale of y/x and t, written to the NGFF coordinate transformations.

    Returns
    -------
    ConversionResult
        "skipped" if ``dest`` already holds this exact source, "ok" after a conversion, or
        "failed" with a message naming the file; a failure leaves ``dest`` as it was.
    """
    source, dest = Path(source), Path(dest)
    started = time.perf_counter()
    tmp = _aside(dest, TMP_PREFIX)
    try:
        info = read_movie_info(source)
        sha = file_sha256(source)
        existing = read_provenance(dest)
        if existing and existing.get("source_sha256") == sha:
            return ConversionResult(
                movie, "skipped", existing.get("frames", info.frames), source.stat().st_size,
                store_bytes(dest), time.perf_counter() - started, "already stored",
            )
        attrs = {
            **provenance,
            "source_path": str(source),
            "source_sha256": sha,
            "source_bytes": source.stat().st_size,
            "source_axes": info.source_axes,
            "frames": info.frames,
            "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        dest.parent.mkdir(parents=True, exist_ok=True)
        array = create_movie_store(
            tmp,
            frames=info.frames,
            height=info.height,
            width=info.width,
            dtype=info.dtype,
            ome=ngff_metadata(
                movie, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s
            ),
            provenance=attrs,
        )
        written = write_frames(array, iter_frames(source))
        if written != info.frames:
            raise MovieError(f"{source}: {written} frames read, {info.frames} declared")
        _commit(tmp, dest)
    except (MovieError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return ConversionResult(
            movie, "failed", seconds=time.perf_counter() - started, message=str(exc)
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ConversionResult(
        movie, "ok", info.frames, attrs["source_bytes"], store_bytes(dest),
        time.perf_counter() - started,
    )
