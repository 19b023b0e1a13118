"""Where things live under the data root (``LCH_HOME``), per DESIGN.md's data model."""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_HOME = ".lch"
# Names become folder names: keep them portable and free of path separators.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def lch_home() -> Path:
    """The data root: ``$LCH_HOME`` or ``./.lch``, as an absolute path."""
    return Path(os.environ.get("LCH_HOME", DEFAULT_HOME)).expanduser().resolve()


def cohort_dir(cohort: str, home: Path | None = None) -> Path:
    return (home or lch_home()) / "cohorts" / cohort


def movies_dir(cohort: str, home: Path | None = None) -> Path:
    return cohort_dir(cohort, home) / "movies"


def movie_store(cohort: str, movie: str, home: Path | None = None) -> Path:
    return movies_dir(cohort, home) / f"{movie}.ome.zarr"


def is_valid_name(name: str) -> bool:
    """True if ``name`` can be used as a cohort or movie id (and so as a folder name)."""
    return bool(NAME_PATTERN.match(name)) and ".." not in name
