"""What every Ray Train worker runs: the AAE's DDP training loop, its checkpoints and logging.

World rank 0 logs to the MLflow run whose id is in the loop's config (plain ``MlflowClient``
calls: Ray's MLflow callback is a Tune callback that Train V2 rejects), and attaches the
checkpoint to its report; every worker reports once per epoch.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from skimage.util import montage

from lch.model import AAE, MODE_AUTOENCODE, AAEConfig, aae_train_step, make_optimizers, unwrap

if TYPE_CHECKING:
    from mlflow import MlflowClient

# Crops each worker mixes before batching (at least this, and at least 8 batches): well-mixed
# batches matter for batch norm, whose statistics are per batch; one movie's cells in a batch
# would normalise away the very per-patient differences the classifier needs. ~8 MB at 64 px.
SHUFFLE_CROPS = 512
GRID_CELLS = 8
CHECKPOINT_FILE = "checkpoint.pt"
LOSSES = ("recon", "disc", "gen")
# DDP for the three-phase AAE step (lch.model.aae_train_step): each phase uses part of the
# network (find_unused_parameters); batch-norm buffers are not re-broadcast, as their statistics
# are recomputed after training (lch.evaluation.evaluate); bucket-view gradients save a copy a step.
DDP_OPTIONS = {
    "find_unused_parameters": True,
    "skip_all_reduce_unused_params": True,
    "forward_sync_buffers": False,
    "gradient_as_bucket_view": True,
}


def _restore(model: torch.nn.Module) -> dict:
    """Load the latest checkpoint into ``model`` (bare); return its state or ``{}``."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return state


def _global_mean(sums: torch.Tensor, count: int, device: torch.device) -> torch.Tensor:
    """Turn sums over this worker's steps into means over every worker's steps."""
    both = torch.cat([sums, torch.tensor([float(count)])]).to(device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(both)
    both = both.cpu()
    return both[:-1] / max(float(both[-1]), 1.0)


def _mlflow(config: dict) -> MlflowClient | None:
    """Return the tracking client on world rank 0 when the run is tracked, else None."""
    if config.get("run_id") is None or ray.train.get_context().get_world_rank() != 0:
        return None
    # Imported by rank 0 alone: the other workers and Train's controller, which unpickles this
    # loop, never log (MLflow takes ~0.8 s to import).
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=config["tracking_uri"])


def _log_params(client: MlflowClient, config: dict, world_size: int) -> None:
    from mlflow.entities import Param

    aae = config["aae"]
    params = {f"aae.{k}": v for k, v in aae.items()}
    params |= {"epochs": config["epochs"], "world_size": world_size,
               "worker_batch": config["worker_batch"], "global_batch": config["global_batch"]}
    client.log_batch(config["run_id"], params=[Param(k, str(v)) for k, v in params.items()])


def reconstruction_grid(crops: np.ndarray, recons: np.ndarray, pad: int = 2) -> np.ndarray:
    """Crops over their reconstructions: a uint8 image (2 rows of n tiles, white gaps)."""
    n, side = crops.shape[0], crops.shape[-1]
    tiles = np.concatenate([np.reshape(images, (n, side, side)) for images in (crops, recons)])
    grid = montage(np.clip(tiles, 0, 1), fill=1.0, grid_shape=(2, n), padding_width=pad)
    return (grid * 255).round().astype(np.uint8)


@torch.no_grad()
def _log_grid(client: MlflowClient, run_id: str, model: torch.nn.Module, crops, epoch: int):
    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    recon, _ = inner(crops, mode=MODE_AUTOENCODE)
    inner.train(was_training)
    grid = reconstruction_grid(crops.squeeze(1).cpu().numpy(), recon.squeeze(1).cpu().numpy())
    client.log_image(run_id, grid, key="reconstructions", step=epoch)


def _save_checkpoint(folder: Path, model, optimizers, epoch: int, totals: dict) -> None:
    state = {
        "model": unwrap(model).state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "epoch": epoch,
        **totals,
    }
    torch.save(state, folder / CHECKPOINT_FILE)


def train_loop_per_worker(config: dict) -> None:
    """Train the AAE on this worker's shard of ``"train"``; Ray Train calls it on every worker.

    ``config`` (``train_loop_config``): ``aae`` (:meth:`AAEConfig.to_dict`), ``epochs``,
    ``global_batch``, ``worker_batch``, ``seed``, ``image_every``, and for tracking
    ``run_id`` and ``tracking_uri`` (``run_id`` None: nothing is logged).

    Every worker runs the same number of steps (the shards are split equally and the last
    short batch is dropped) and reports once per epoch; rank 0 attaches the checkpoint.
    """
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    aae_config = AAEConfig.from_dict(config["aae"])
    torch.manual_seed(config["seed"])
    model = AAE(aae_config)
    state = _restore(model)
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=DDP_OPTIONS)
    first_epoch = state.get("epoch", 0)
    # Same weights everywhere (DDP broadcasts rank 0's), but each worker, and each attempt
    # after a restart, draws its own prior samples for the discriminator.
    torch.manual_seed(config["seed"] + 1 + rank + world_size * first_epoch)
    optimizers = make_optimizers(model, aae_config)
    for name, opt in optimizers.items():
        if name in state.get("optimizers", {}):
            opt.load_state_dict(state["optimizers"][name])
    totals = {"samples": state.get("samples", 0), "seconds": state.get("seconds", 0.0)}
    client = _mlflow(config)
    if client is not None and first_epoch == 0:
        _log_params(client, config, world_size)

    shard = ray.train.get_dataset_shard("train")
    epochs = config["epochs"]
    # An epoch's time runs from the end of the previous report, so the throughput includes
    # each epoch's checkpoint and logging, not only its steps.
    started = time.perf_counter()
    for epoch in range(first_epoch + 1, epochs + 1):
        # Each worker's local shuffle is seeded too: a run is repeatable for its seed.
        shuffle_seed = config["seed"] + rank + world_size * epoch
        sums, steps, preview = _train_epoch(model, optimizers, shard, config, device, shuffle_seed)
        seconds = time.perf_counter() - started
        means = _global_mean(sums, steps, device)
        samples = steps * config["worker_batch"] * world_size
        totals = {"samples": totals["samples"] + samples, "seconds": totals["seconds"] + seconds}
        metrics = {name: float(v) for name, v in zip(LOSSES, means, strict=True)}
        metrics |= {
            "epoch": epoch,
            "first_epoch": first_epoch + 1,
            "samples_per_s": samples / max(seconds, 1e-9),
            **{f"total_{k}": v for k, v in totals.items()},
        }
        if client is not None:
            _log_epoch(client, config, model, preview, metrics, epoch)
        if rank == 0:
            _report_with_checkpoint(client, config, model, optimizers, metrics, totals)
        else:
            ray.train.report(metrics)
        started = time.perf_counter()


def _train_epoch(model, optimizers, shard, config: dict, device, shuffle_seed: int) -> tuple:
    """One pass over this worker's shard: (loss sums, steps, first crops for the preview)."""
    unwrap(model).train()
    sums, steps, preview = torch.zeros(len(LOSSES)), 0, None
    batches = shard.iter_torch_batches(
        batch_size=config["worker_batch"],
        dtypes=torch.float32,
        device=device,
        drop_last=True,  # every worker takes the same number of steps (DDP)
        local_shuffle_buffer_size=max(SHUFFLE_CROPS, 8 * config["worker_batch"]),
        local_shuffle_seed=shuffle_seed,
    )
    for batch in batches:
        x = batch["crop"].unsqueeze(1)
        losses = aae_train_step(model, optimizers, x)
        sums += torch.tensor([losses[k] for k in LOSSES])
        steps += 1
        if preview is None:
            preview = x[:GRID_CELLS].detach().clone()
    return sums, steps, preview


def _report_with_checkpoint(client, config, model, optimizers, metrics: dict, totals: dict):
    """Rank 0's report: the metrics and this epoch's checkpoint (also to MLflow after the last)."""
    epoch = metrics["epoch"]
    with tempfile.TemporaryDirectory() as folder:
        _save_checkpoint(Path(folder), model, optimizers, epoch, totals)
        if client is not None and epoch == config["epochs"]:
            client.log_artifacts(config["run_id"], folder, artifact_path="checkpoint")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _log_epoch(client, config, model, preview, metrics: dict, epoch: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    logged = {k: metrics[k] for k in (*LOSSES, "samples_per_s")}
    client.log_batch(
        config["run_id"], metrics=[Metric(k, float(v), now, epoch) for k, v in logged.items()]
    )
    if preview is not None and (epoch % config["image_every"] == 0 or epoch == config["epochs"]):
        _log_grid(client, config["run_id"], model, preview, epoch)


def load_trained_aae(checkpoint: ray.train.Checkpoint, config: AAEConfig) -> AAE:
    """Load the AAE of a training checkpoint, on this process's best device."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AAE(config)
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model.to(device)
