"""The cohort manifest (``cohort.yaml``): parsing and validation.

A cohort is a list of ``movies``, or a ``crops`` folder of pre-cut single-cell images named as
in IDR idr0109 (:mod:`lch.crop_folder`), with a mapping from cell line to label.

A manifest that is not YAML, or lacks the cohort name or its movies/crops, fails as a whole
(:class:`ManifestError`). A single bad movie entry (missing field, bad label, duplicate id) does
not: it is returned as an :class:`EntryError` so that the other movies of the cohort still land.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lch.movie_io import Selection
from lch.paths import NAME_PATTERN, is_valid_name
from lch.pixel_size import DEFAULT_PIXEL_SIZE_UM, MAX_PIXEL_SIZE_UM


class ManifestError(ValueError):
    """The manifest as a whole cannot be used; the message names the file and the field."""


class MovieEntry(BaseModel):
    """One movie of a cohort, as written in the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=NAME_PATTERN.pattern)
    path: str = Field(min_length=1)
    patient: str = Field(min_length=1)
    cell_line: str | None = None
    label: Literal["high", "low", "unknown"] = "unknown"
    pixel_size_um: float | None = Field(default=None, gt=0, le=MAX_PIXEL_SIZE_UM)
    frame_interval_s: float | None = Field(default=None, gt=0)
    labels: str | None = Field(default=None, min_length=1)
    """A label movie made elsewhere (T×Y×X like the movie, integer ids, 0 = background), relative
    to the manifest like ``path``; it replaces LCH's segmentation of this movie."""
    position: int | str | list[int | str] | None = None
    """The file's position(s) (bioio scenes), by index or name; None: every position. Each
    position is one stored movie; with several, movie ``<id>_p<index>``."""
    channel: int | str | None = None
    """The phase-contrast channel, by index or name; None: the file's only channel."""
    first_frame: int = Field(default=0, ge=0)
    last_frame: int | None = Field(default=None, ge=0)
    """The frames to store, 0-based and inclusive; None: to the movie's last frame."""

    @field_validator("id")
    @classmethod
    def _id_is_a_name(cls, value: str) -> str:
        if not is_valid_name(value):
            raise ValueError("must not contain '..' (it becomes a folder name)")
        return value

    @field_validator("position")
    @classmethod
    def _positions_are_distinct(cls, value):
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError("must be a non-empty list without repeats")
        listed = value if isinstance(value, list) else [value]
        if any(isinstance(v, int) and v < 0 for v in listed):
            raise ValueError("a position index is 0 or more")
        return value

    @model_validator(mode="after")
    def _frames_in_order(self):
        if self.last_frame is not None and self.last_frame < self.first_frame:
            raise ValueError(
                f"last_frame ({self.last_frame}) is before first_frame ({self.first_frame})"
            )
        return self

    def stored_movies(self, positions: list[str]) -> list[tuple[str, Selection]]:
        """List the stored movies this entry makes from a file with ``positions``.

        ``positions`` are their names, in the file's order; each selected position gives
        (movie id, what to read).

        One position keeps the entry's id; several are named ``<id>_p<index>``. A position
        not in the file is left for the reader to refuse, naming what the file holds.

        Raises
        ------
        ValueError
            The entry has a label movie and selects several positions.
        """
        if self.position is None:
            wanted: list[int | str] = list(range(len(positions)))
        elif isinstance(self.position, list):
            wanted = list(self.position)
        else:
            wanted = [self.position]
        if self.labels and len(wanted) > 1:
            raise ValueError(
                f"movie {self.id!r}: a label movie ('labels') fits one position and "
                f"{len(wanted)} are selected: pick one with 'position'"
            )
        selections = []
        for position in wanted:
            index = positions.index(position) if position in positions else position
            movie = self.id if len(wanted) == 1 else f"{self.id}_p{index}"
            selections.append((movie, Selection(position, self.channel, self.first_frame,
                                                self.last_frame)))
        return selections

    @field_validator("patient", "cell_line", mode="before")
    @classmethod
    def _ids_are_text(cls, value):
        # YAML reads `patient: 481` as an int; ids are names, keep them as text.
        return str(value) if isinstance(value, int) else value

    @property
    def line(self) -> str:
        """The cell line, defaulting to the patient (the README's manifest format)."""
        return self.cell_line or self.patient


class CropFolder(BaseModel):
    """A folder of single-cell crops (``crops:`` in the manifest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: str = Field(min_length=1)
    """Relative to the manifest, like a movie's ``path``."""
    pixel_size_um: float = Field(default=DEFAULT_PIXEL_SIZE_UM, gt=0, le=MAX_PIXEL_SIZE_UM)
    labels: dict[str, Literal["high", "low", "unknown"]] = {}
    """Cell line → label; lines not named are ``unknown``."""

    @field_validator("labels", mode="before")
    @classmethod
    def _lines_are_text(cls, value):
        if isinstance(value, dict):
            return {str(k).lower(): v for k, v in value.items()}
        return value


@dataclass(frozen=True)
class EntryError:
    """A movie entry that failed validation: ``movie`` is its id (or ``movies[i]``)."""

    movie: str
    message: str


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: the cohort name, its valid movies and the entries that failed."""

    path: Path
    cohort: str
    movies: tuple[MovieEntry, ...]
    errors: tuple[EntryError, ...]
    crops: CropFolder | None = None

    def crops_path(self) -> Path:
        """Return the crop folder, resolved relative to the manifest's folder."""
        if self.crops is None:
            raise ValueError(f"{self.path}: no 'crops' folder in this manifest")
        return (self.path.parent / self.crops.folder).resolve()

    def source_path(self, movie: MovieEntry) -> Path:
        """Return the movie file, resolved relative to the manifest's folder."""
        return (self.path.parent / movie.path).resolve()

    def labels_path(self, movie: MovieEntry) -> Path | None:
        """Return the movie's own label movie (``labels``), resolved like its path, or None."""
        return (self.path.parent / movie.labels).resolve() if movie.labels else None

    def to_dict(self) -> dict:
        """Return the valid part of the manifest, with absolute paths (as stored per cohort)."""
        movies = []
        for m in self.movies:
            entry = m.model_dump(exclude_none=True)
            entry["path"] = str(self.source_path(m))
            if m.labels:
                entry["labels"] = str(self.labels_path(m))
            movies.append(entry)
        return {"cohort": self.cohort, "movies": movies}


def _describe(error: ValidationError, prefix: str) -> str:
    parts = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"])
        parts.append(f"{prefix}.{where}: {e['msg']}" if where else f"{prefix}: {e['msg']}")
    return "; ".join(parts)


def _load_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a mapping with 'cohort' and 'movies' at the top")
    return data


def _cohort_name(path: Path, data: dict) -> str:
    cohort = data.get("cohort")
    if cohort is None:
        raise ManifestError(f"{path}: missing field 'cohort'")
    cohort = str(cohort)
    if not is_valid_name(cohort):
        raise ManifestError(
            f"{path}: field 'cohort' = {cohort!r} must match {NAME_PATTERN.pattern} without "
            "'..' (it becomes a folder name)"
        )
    return cohort


def _check_fields(path: Path, data: dict) -> None:
    unknown = set(data) - {"cohort", "movies", "crops", "description"}
    if unknown:
        raise ManifestError(f"{path}: unknown top-level field(s) {sorted(unknown)}")
    if "movies" in data and "crops" in data:
        raise ManifestError(f"{path}: give either 'movies' or 'crops', not both")


def _movie_list(path: Path, data: dict) -> list:
    movies = data.get("movies")
    if movies is None:
        raise ManifestError(f"{path}: missing field 'movies' (or 'crops', a crop folder)")
    if not isinstance(movies, list) or not movies:
        raise ManifestError(f"{path}: field 'movies' must be a non-empty list")
    return movies


def _crop_folder(path: Path, data: dict) -> CropFolder:
    try:
        crops = CropFolder.model_validate(data["crops"])
    except ValidationError as exc:
        raise ManifestError(_describe(exc, f"{path}: crops")) from None
    if not (path.parent / crops.folder).is_dir():
        raise ManifestError(f"{path}: crops.folder {crops.folder!r} is not a folder")
    return crops


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a cohort manifest.

    Parameters
    ----------
    path : str or Path
        The ``cohort.yaml`` file. Movie paths inside it are relative to its folder.

    Returns
    -------
    Manifest
        The valid movies, and one :class:`EntryError` per entry that failed (duplicate ids fail
        every entry that carries them: which one was meant cannot be told).

    Raises
    ------
    ManifestError
        If the file is unreadable, not YAML, or lacks a valid ``cohort`` or ``movies`` (or a
        valid ``crops`` folder).
    """
    path = Path(path).resolve()
    data = _load_yaml(path)
    cohort = _cohort_name(path, data)
    _check_fields(path, data)
    if "crops" in data:
        return Manifest(path=path, cohort=cohort, movies=(), errors=(),
                        crops=_crop_folder(path, data))
    raw_movies = _movie_list(path, data)

    valid: list[MovieEntry] = []
    errors: list[EntryError] = []
    for i, raw in enumerate(raw_movies):
        name = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
        prefix = f"{path.name}: movies[{i}]"
        if not isinstance(raw, dict):
            errors.append(EntryError(f"movies[{i}]", f"{prefix}: expected a mapping"))
            continue
        try:
            valid.append(MovieEntry.model_validate(raw))
        except ValidationError as exc:
            errors.append(EntryError(name or f"movies[{i}]", _describe(exc, prefix)))

    counts = Counter(m.id for m in valid)
    duplicated = {movie_id for movie_id, n in counts.items() if n > 1}
    for movie_id in sorted(duplicated):
        errors.append(
            EntryError(
                movie_id,
                f"{path.name}: movie id {movie_id!r} appears {counts[movie_id]} times "
                "(ids must be unique within a cohort)",
            )
        )
    valid = [m for m in valid if m.id not in duplicated]
    return Manifest(path=path, cohort=cohort, movies=tuple(valid), errors=tuple(errors))
