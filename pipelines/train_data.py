"""The training crops as a Ray Dataset: short row ranges of ``crops.zarr`` read in ``map_batches``.

Zarr v3 stores are read by listing the units of work with ``ray.data.from_items`` and decoding
them in ``map_batches`` (Ray Data's own ``read_zarr`` reads Zarr v2 only).
"""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import ray
import zarr
from ray.data import RandomSeedConfig

from lch.storage import zarr_store
from lch.training import CellSet, crop_items

# Rows per work item: divides the cell store's 256-row chunks, so an item decodes one chunk,
# and gives the shuffle of items plenty of pieces to mix.
ITEM_ROWS = 32
ITEMS_PER_READ = 4
# Training crops taking at most this share of the object store are read once and kept there.
CACHE_FRACTION = 0.25


@cache
def _open_crops(store: str, options: str) -> zarr.Array:
    """One open array per store per worker process (opening reads its metadata).

    ``options`` are the fsspec storage options as JSON (a hashable cache key).
    """
    return zarr.open_array(zarr_store(store, json.loads(options), read_only=True), mode="r")


def read_crop_items(
    batch: dict[str, np.ndarray], storage_options: dict | None = None
) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` function: row-range items → ``{"crop": (n, S, S) float32}``.

    ``storage_options`` open stores on an object store (a Ray worker's environment is not the
    driver's); None takes them from the worker's environment.
    """
    options = json.dumps(storage_options, sort_keys=True)
    parts = [
        _open_crops(str(store), options)[int(start) : int(stop)]
        for store, start, stop in zip(batch["store"], batch["start"], batch["stop"], strict=True)
    ]
    return {"crop": np.concatenate(parts).astype(np.float32, copy=False)}


def _fits_in_memory(n_bytes: int) -> bool:
    """Return True if ``n_bytes`` take at most :data:`CACHE_FRACTION` of the object store."""
    return n_bytes <= CACHE_FRACTION * ray.cluster_resources().get("object_store_memory", 0)


def crop_dataset(
    cells: CellSet, mask: np.ndarray, seed: int = 0, in_memory: bool | None = None
) -> ray.data.Dataset:
    """Build a Ray Dataset of the ``mask`` rows' crops, with one column ``crop``.

    Work items (short row ranges) are shuffled, so every block mixes several movies; each pass
    (epoch) then visits the blocks in a new order, and the workers' local shuffle buffers mix
    crops across blocks. Only the small items or whole blocks are shuffled, never single crops,
    which keeps it cheap at any cohort size.

    Parameters
    ----------
    cells : CellSet
    mask : np.ndarray
        Rows of ``cells.table`` to include.
    seed : int
        Seed of the orders (a different order every epoch, the same run after run).
    in_memory : bool, optional
        Read the crops once into the object store (then an epoch costs ~0.1 s of Ray Data
        overhead instead of ~1 s for re-running the reads on 2 cores). Default: when they take
        at most :data:`CACHE_FRACTION` of the object store; otherwise they stream from Zarr on
        every epoch.
    """
    items = crop_items(cells, mask, ITEM_ROWS)
    items = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
    if in_memory is None:
        side = cells.crop_size
        in_memory = _fits_in_memory(int(mask.sum()) * side * side * 4)
    every_epoch = RandomSeedConfig(seed=seed, reseed_after_execution=True)
    read = {"fn_kwargs": {"storage_options": cells.storage_options}}
    ds = ray.data.from_items(items)
    # The workers print the Train loop's own progress; per-operator bars would flood the log.
    ds.context.enable_progress_bars = False
    # Blocks in the items' order, not in the order the reads finish: the same run run after run.
    ds.context.execution_options.preserve_order = True
    if in_memory:
        ds = ds.map_batches(
            read_crop_items, batch_size=ITEMS_PER_READ, batch_format="numpy", **read
        )
        ds = ds.materialize().randomize_block_order(seed=every_epoch)
    else:
        ds = ds.random_shuffle(seed=every_epoch)
        ds = ds.map_batches(
            read_crop_items, batch_size=ITEMS_PER_READ, batch_format="numpy", **read
        )
    return ds
