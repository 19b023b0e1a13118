"""Where things live under the data root (``LCH_HOME``), per ARCHITECTURE.md's data model.

``LCH_HOME`` is a local folder (default ``./.lch``) or an fsspec URL such as
``s3://bucket/prefix``. A *location* is then a :class:`~pathlib.Path` for a local root and a URL
string for a remote one: the path helpers return the same kind as the root they are given, so
local code keeps using ``pathlib`` and only the code that reads or writes goes through
:mod:`lch.storage` (the one way to reach either kind).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_HOME = ".lch"
# Names become folder names: keep them portable and free of path separators.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Location = Path | str
"""A local path, or the URL of a remote one (``s3://bucket/key``)."""


def is_url(location: Location) -> bool:
    """Return True for a remote location such as ``s3://bucket/prefix`` (``file://`` is local)."""
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def as_location(location: str | Path) -> Location:
    """Keep a URL a string; make anything else an absolute :class:`~pathlib.Path`."""
    if is_url(location):
        return str(location).rstrip("/")
    return Path(str(location).removeprefix("file://")).expanduser().resolve()


def lch_home() -> Location:
    """Return the data root: ``$LCH_HOME`` or ``./.lch``; an absolute path, or a URL as written."""
    return as_location(os.environ.get("LCH_HOME", DEFAULT_HOME))


def join(base: Location, *parts: str) -> Location:
    """Join ``base / part / ...`` for a path, ``base/part/...`` for a URL."""
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return Path(base).joinpath(*parts)


def cohort_dir(cohort: str, home: Location | None = None) -> Location:
    """Return a cohort's folder under ``home`` (default :func:`lch_home`)."""
    return join(home or lch_home(), "cohorts", cohort)


def movies_dir(cohort: str, home: Location | None = None) -> Location:
    """Return the folder of a cohort's stored movies."""
    return join(cohort_dir(cohort, home), "movies")


def movie_store(cohort: str, movie: str, home: Location | None = None) -> Location:
    """Return the OME-Zarr store of one stored movie of a cohort."""
    return join(movies_dir(cohort, home), f"{movie}.ome.zarr")


def is_valid_name(name: str) -> bool:
    """Return True if ``name`` can be a cohort or movie id (and so a folder name)."""
    return bool(NAME_PATTERN.match(name)) and ".." not in name
