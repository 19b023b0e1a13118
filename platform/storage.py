"""Reading and writing a location, local or on an object store, through fsspec.

Locations are :mod:`lch.paths`'. S3 is configured by the standard variables ``AWS_ENDPOINT_URL``
(or ``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN`` and ``AWS_DEFAULT_REGION`` (or ``AWS_REGION``).
:func:`storage_options_from_env` reads them once, in the driver, into the fsspec options that are
handed to Ray tasks and actors explicitly: a Ray worker's environment is the one its node started
with, not the driver's.
"""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs

from lch.paths import Location, is_url


class StorageError(OSError):
    """A remote data root that cannot be used; the message names the URL and what to check."""


def storage_options_from_env(location: Location) -> dict:
    """Read fsspec options for ``location`` from standard environment variables ({} if local).

    Explicit options (rather than letting botocore read the environment wherever the code runs)
    travel with the work to Ray workers whose environment lacks them; a variable that is not
    set is left to the worker's own credential chain (instance role, config files).
    """
    if not is_url(location):
        return {}
    protocol = str(location).split("://", 1)[0]
    if protocol not in ("s3", "s3a"):
        return {}
    env = os.environ
    options = {
        "endpoint_url": env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
        "key": env.get("AWS_ACCESS_KEY_ID"),
        "secret": env.get("AWS_SECRET_ACCESS_KEY"),
        "token": env.get("AWS_SESSION_TOKEN"),
    }
    options = {k: v for k, v in options.items() if v}
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        options["client_kwargs"] = {"region_name": region}
    # Other processes (Ray workers) write under the same prefixes: a cached listing would be
    # stale, and listings are few (one per cohort folder), so never cache them.
    options["use_listings_cache"] = False
    return options


def _options(location: Location, storage_options: dict | None) -> dict:
    return storage_options_from_env(location) if storage_options is None else storage_options


def filesystem(
    location: Location, storage_options: dict | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the fsspec file system holding ``location`` and the path within it.

    Parameters
    ----------
    location : Path or str
        A local path or a URL.
    storage_options : dict, optional
        fsspec options; default :func:`storage_options_from_env`.
    """
    if not is_url(location):
        return fsspec.filesystem("file"), str(Path(location))
    return url_to_fs(str(location), **_options(location, storage_options))


def zarr_store(location: Location, storage_options: dict | None = None, read_only: bool = False):
    """Return what to give zarr as ``store=``: the path itself if local, else a ``FsspecStore``."""
    if not is_url(location):
        return str(location)
    from zarr.storage import FsspecStore

    options = _options(location, storage_options)
    return FsspecStore.from_url(str(location), storage_options=options, read_only=read_only)


def pyarrow_filesystem(location: Location, storage_options: dict | None = None):
    """``(path, pyarrow filesystem or None)`` for Ray Train's ``RunConfig``.

    Ray Train takes ``storage_filesystem`` plus a path with the scheme stripped; the fsspec
    file system is wrapped so the same options (endpoint, credentials) serve both.
    """
    if not is_url(location):
        return str(location), None
    import pyarrow.fs

    fs, path = filesystem(location, storage_options)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def check_root(location: Location, storage_options: dict | None = None) -> None:
    """Fail early, naming the URL, if a remote data root cannot be listed.

    Raises
    ------
    StorageError
        The bucket does not exist, access is denied, or the endpoint cannot be reached.
    """
    if not is_url(location):
        return
    options = _options(location, storage_options)
    fs, path = filesystem(location, options)
    bucket = path.split("/", 1)[0]
    endpoint = options.get("endpoint_url", "the default endpoint")
    try:
        fs.ls(bucket, detail=False, refresh=True)
    except FileNotFoundError:
        raise StorageError(
            f"{location}: bucket {bucket!r} does not exist at {endpoint} (create it first)"
        ) from None
    except PermissionError as exc:
        raise StorageError(
            f"{location}: access denied at {endpoint} ({exc}); check AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
        ) from None
    except Exception as exc:  # connection errors arrive as botocore/aiohttp types
        raise StorageError(
            f"{location}: cannot reach the object store at {endpoint} "
            f"({type(exc).__name__}: {exc}); check AWS_ENDPOINT_URL"
        ) from None
