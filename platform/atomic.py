"""Atomic commits: what a run writes goes aside first, then moves into place whole.

It is written under a hidden name beside its destination, so a reader never sees a half-written
store and a killed run leaves only hidden leftovers. Every writer commits this way: movie
stores, their labels, the cell table and the crops.

Locally the move is a rename (an older version is renamed aside first and then deleted). An
object store has no rename: :func:`commit_aside` copies the store's objects with its root
marker last.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import fsspec

from lch.paths import Location, is_url
from lch.storage import filesystem

TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"


def aside_location(dest: Location, prefix: str = TMP_PREFIX) -> Location:
    """Return a fresh hidden location beside ``dest`` (``<prefix><name>-<tag>``) to write at."""
    tag = uuid.uuid4().hex[:8]
    if is_url(dest):
        parent, name = str(dest).rsplit("/", 1)
        return f"{parent}/{prefix}{name}-{tag}"
    dest = Path(dest)
    return dest.parent / f"{prefix}{dest.name}-{tag}"


def commit(tmp: Location, dest: Location, storage_options: dict | None = None) -> None:
    """Move the store or file written at ``tmp`` to ``dest``, replacing an older one whole."""
    if is_url(dest):
        fs, tmp_path = filesystem(tmp, storage_options)
        dest_path = filesystem(dest, storage_options)[1]
        if fs.isdir(tmp_path):
            commit_aside(fs, tmp_path, dest_path)
        else:
            fs.mv(tmp_path, dest_path)
        return
    dest = Path(dest)
    if dest.is_dir():
        old = aside_location(dest, OLD_PREFIX)
        os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def commit_aside(
    fs: fsspec.AbstractFileSystem, tmp: str, dest: str, marker: str = "zarr.json"
) -> None:
    """Move a Zarr store written at ``tmp`` to ``dest`` on an object store, marker last.

    An object store has no rename of a folder, only whole-object writes, so this gives the
    guarantee of the local rename another way: ``dest``'s root ``marker`` (the ``zarr.json``
    without which zarr does not open a store at all) is deleted first, the old objects next,
    then every new object is copied server-side and the marker last. A reader therefore sees
    either a complete store or no store, never a mixture, and a run killed half-way leaves a
    store without a marker, which no reader opens and the next run replaces. Copying (rather
    than writing ``dest`` in place) keeps the previous store readable for the whole write.
    """
    head = f"{dest}/{marker}"
    if fs.exists(head):
        fs.rm_file(head)
    if fs.exists(dest):
        fs.rm(dest, recursive=True)
    sources = [p for p in fs.find(tmp) if p != f"{tmp}/{marker}"]
    targets = [dest + p[len(tmp) :] for p in sources]
    if sources:
        fs.copy(sources, targets)
    fs.copy(f"{tmp}/{marker}", head)
    fs.rm(tmp, recursive=True)


def is_committed(fs: fsspec.AbstractFileSystem, store: str, marker: str = "zarr.json") -> bool:
    """Return True if the store at ``store`` has its root marker (see :func:`commit_aside`)."""
    return fs.exists(f"{store}/{marker}")
