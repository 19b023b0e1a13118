"""The AAE and the served LCHModel: shapes, init, training behaviour, DDP, save/load."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lch.classify import cell_auc, fit_linear_classifier
from lch.model import (
    AAE,
    AAEConfig,
    LCHModel,
    aae_train_step,
    make_optimizers,
    n_stages_for,
    refresh_batch_norm,
)
from lch.training import train_in_memory

TINY = {"latent_dim": 8, "width": 1 / 16, "disc_hidden": (32, 32, 16)}


def shapes_dataset(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """32x32 crops: class 0 discs, class 1 horizontal bars; random size, offset, brightness."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32].astype(np.float32)
    labels = np.arange(n) % 2
    images = np.empty((n, 1, 32, 32), np.float32)
    for i, label in enumerate(labels):
        cy, cx = 16 + rng.uniform(-3, 3, 2)
        r, brightness = rng.uniform(5, 9), rng.uniform(0.5, 0.9)
        if label == 0:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            mask = (np.abs(yy - cy) <= 0.4 * r) & (np.abs(xx - cx) <= 1.2 * r)
        images[i, 0] = 0.05 + brightness * mask
    return torch.from_numpy(images), labels


@pytest.mark.parametrize(("crop", "stages"), [(32, 3), (64, 4), (128, 5)])
def test_shapes_adapt_to_crop_size(crop, stages):
    torch.manual_seed(0)
    config = AAEConfig(crop_size=crop, **TINY)
    model = AAE(config).eval()
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    deconvs = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert config.n_stages == stages == len(convs) == len(deconvs)
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs + deconvs)
    x = torch.rand(3, 1, crop, crop)
    with torch.no_grad():
        recon, z = model(x)
        p = model(z, mode="discriminate")
    assert z.shape == (3, 8)
    assert recon.shape == (3, 1, crop, crop)
    assert p.shape == (3,)
    assert 0.0 <= recon.min() and recon.max() <= 1.0
    assert torch.equal(model.decode(z), recon)


def test_paper_architecture_at_256():
    config = AAEConfig(crop_size=256)
    assert config.n_stages == 6
    assert config.channels == (64, 128, 256, 512, 1024, 1024)
    assert config.disc_hidden == (1024, 1024, 512)
    assert config.latent_dim == 56 and config.lr == 2e-4
    assert AAEConfig(crop_size=64).channels == (64, 128, 256, 512)
    assert AAEConfig(crop_size=64, width=0.25).channels == (16, 32, 64, 128)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"crop_size": 48}, "power of two"),
        ({"crop_size": 4}, "power of two"),
        ({"crop_size": 64, "channels": (8, 16)}, "4 positive sizes"),
        ({"latent_dim": 0}, "latent_dim"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AAEConfig(**kwargs)
    with pytest.raises(ValueError, match="power of two"):
        n_stages_for(100)


def test_config_round_trip_is_json():
    config = AAEConfig(crop_size=32, channels=(4, 8, 16), latent_dim=12, betas=(0.9, 0.99))
    data = json.loads(json.dumps(config.to_dict()))
    assert AAEConfig.from_dict(data) == config
    assert data["channels"] == [4, 8, 16] and "n_stages" not in data
    with pytest.raises(ValueError, match="unknown AAEConfig fields"):
        AAEConfig.from_dict({**data, "bogus": 1})
    # A version registered before crops had a field of view: 32 px of 0.65 µm showed 20.8 µm.
    old = {k: v for k, v in data.items() if k != "field_of_view_um"} | {"pixel_size_um": 0.65}
    assert AAEConfig.from_dict(old).field_of_view_um == pytest.approx(20.8)
    assert AAEConfig.from_dict(old).crop_pixel_size_um == pytest.approx(0.65)


def test_init_and_latent_batch_norm():
    torch.manual_seed(0)
    model = AAE(AAEConfig(crop_size=64, latent_dim=56, width=0.25))
    layers = [
        m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear)
    ]
    weights = torch.cat([m.weight.detach().flatten() for m in layers])
    assert weights.numel() > 500_000
    assert abs(weights.std().item() - 0.02) < 0.0005
    assert abs(weights.mean().item()) < 0.0005
    assert all(m.bias is None or torch.all(m.bias == 0) for m in layers)
    assert isinstance(model.encoder.code_norm, nn.BatchNorm1d)
    # Batch norm on the code: in training mode each dimension is standardised over the batch.
    z = model.encode(torch.rand(64, 1, 64, 64))
    scale = model.encoder.code_norm.weight.detach()
    assert torch.allclose(z.mean(0), torch.zeros(56), atol=1e-4)
    assert torch.allclose(z.std(0, correction=0), scale, atol=1e-3)
    assert torch.allclose(scale, torch.ones(56), atol=0.1)  # scales initialised N(1, 0.02)


def test_forward_rejects_unknown_mode():
    model = AAE(AAEConfig(crop_size=32, **TINY))
    with pytest.raises(ValueError, match="unknown AAE mode"):
        model(torch.rand(2, 1, 32, 32), mode="sample")


def _train(generator_on: bool, steps: int = 200) -> dict:
    """Train a tiny AAE on the shapes dataset; report metrics before and after."""
    torch.manual_seed(0)
    x, labels = shapes_dataset(256, seed=0)
    # 10x the paper's learning rate: a few hundred steps must show the behaviour.
    config = AAEConfig(crop_size=32, latent_dim=8, width=1 / 8, disc_hidden=(64, 64, 32), lr=2e-3)
    model = AAE(config)
    optimizers = make_optimizers(model, config)
    if not generator_on:
        for group in optimizers["generator"].param_groups:
            group["lr"] = 0.0

    def recon_loss() -> float:
        model.eval()
        with torch.no_grad():
            logits, _ = model(x, mode="reconstruct_logits")
        model.train()
        return F.binary_cross_entropy_with_logits(logits, x).item()

    before = recon_loss()
    draws = torch.Generator().manual_seed(1)
    history = []
    for _ in range(steps):
        history.append(
            aae_train_step(model, optimizers, x[torch.randint(0, 256, (32,), generator=draws)])
        )
    refresh_batch_norm(model, x.split(64))
    after = recon_loss()
    model.eval()
    with torch.no_grad():
        z = model.encode(x)
    return {
        "before": before,
        "after": after,
        "z": z.numpy(),
        "labels": labels,
        "disc_tail": float(np.mean([h["disc"] for h in history[-20:]])),
        "history": history,
    }



@pytest.fixture(scope="module")
def trained(single_thread):
    return _train(generator_on=True)


def test_training_reduces_reconstruction_loss(trained):
    # Untrained decoder outputs 0.5 everywhere: BCE = log 2.
    assert trained["before"] == pytest.approx(np.log(2), abs=1e-3)
    assert trained["after"] < 0.5 * trained["before"]
    assert all(np.isfinite(list(h.values())).all() for h in trained["history"])


def test_train_in_memory_learns_and_repeats_for_a_seed(single_thread):
    crops = shapes_dataset(100, seed=2)[0][:, 0].numpy()
    config = AAEConfig(crop_size=32, latent_dim=8, width=1 / 8, disc_hidden=(64, 64, 32), lr=2e-3)

    def run() -> tuple[AAE, list[dict]]:
        torch.manual_seed(0)
        model = AAE(config)
        return model, train_in_memory(model, crops, epochs=12, batch_size=32, seed=3)

    (model, history), (again, repeated) = run(), run()
    # Three full batches an epoch: the 4 crops left over sit each epoch out.
    assert [epoch["samples"] for epoch in history] == [96] * 12
    assert history[-1]["recon"] < 0.7 * history[0]["recon"]
    assert history == [dict(e, seconds=h["seconds"]) for e, h in zip(repeated, history,
                                                                     strict=True)]
    for name, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    with pytest.raises(ValueError, match="batch_size"):
        train_in_memory(model, crops, epochs=1, batch_size=101)


def test_codes_move_towards_prior(trained):
    z = trained["z"]
    assert np.abs(z.mean(axis=0)).max() < 0.25
    assert 0.75 < z.std(axis=0).min() and z.std(axis=0).max() < 1.3
    # The adversary is fooled: its loss stays near log 2 (chance) at the end of training.
    assert trained["disc_tail"] > 0.65


def test_discriminator_wins_without_generator_step(single_thread):
    # Control for the test above: with the regularisation step off, the codes are separable
    # from the prior and the discriminator's loss falls well below log 2.
    assert _train(generator_on=False)["disc_tail"] < 0.6


def test_codes_carry_the_shape_class(trained):
    w, b, _ = fit_linear_classifier(trained["z"], trained["labels"])
    p = 1 / (1 + np.exp(-(trained["z"] @ w + b)))
    assert cell_auc(p, trained["labels"]) > 0.95


def test_refresh_batch_norm_restores_momentum_and_mode():
    model = AAE(AAEConfig(crop_size=32, **TINY)).eval()
    refresh_batch_norm(model, [torch.rand(8, 1, 32, 32)])
    assert not model.training
    assert model.encoder.code_norm.momentum == 0.1
    assert model.encoder.code_norm.num_batches_tracked == 1


def test_train_step_updates_the_right_parts():
    torch.manual_seed(0)
    config = AAEConfig(crop_size=32, **TINY)
    model = AAE(config)
    optimizers = make_optimizers(model, config)
    for group in optimizers["autoencoder"].param_groups:
        group["lr"] = 0.0
    decoder = copy.deepcopy(model.decoder.state_dict())
    encoder = copy.deepcopy(model.encoder.to_code.weight.detach())
    disc = copy.deepcopy(model.discriminator.net[0].weight.detach())
    aae_train_step(model, optimizers, torch.rand(8, 1, 32, 32))
    params = {k: v for k, v in model.decoder.state_dict().items() if "running" not in k}
    assert all(torch.equal(v, decoder[k]) for k, v in params.items() if "num_batches" not in k)
    assert not torch.equal(model.encoder.to_code.weight, encoder)  # generator step
    assert not torch.equal(model.discriminator.net[0].weight, disc)
    assert all(p.grad is None for p in model.parameters())


def test_train_step_under_ddp_matches_bare_model(tmp_path):
    dist = torch.distributed
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no process group yet")
    torch.manual_seed(0)
    config = AAEConfig(crop_size=32, **TINY)
    bare = AAE(config)
    twin = copy.deepcopy(bare)
    batches = [torch.rand(8, 1, 32, 32) for _ in range(3)]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(twin, find_unused_parameters=True)
        runs = []
        for model in (bare, wrapped):
            optimizers = make_optimizers(model, config)
            torch.manual_seed(1)
            runs.append([aae_train_step(model, optimizers, x) for x in batches])
    finally:
        dist.destroy_process_group()
    for a, b in zip(*runs, strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    assert torch.allclose(bare.encoder.to_code.weight, twin.encoder.to_code.weight, atol=1e-6)


def _lch_model(seed: int = 0) -> tuple[LCHModel, AAE]:
    torch.manual_seed(seed)
    aae = AAE(AAEConfig(crop_size=32, **TINY))
    codes = torch.randn(50, 8) * torch.linspace(0.5, 2.0, 8)
    weight = torch.linspace(-1.0, 1.0, 8)
    return LCHModel.from_aae(aae, weight.numpy(), 0.3, codes.numpy()), aae


def test_lch_model_statistics_and_outputs():
    model, aae = _lch_model()
    w = torch.linspace(-1.0, 1.0, 8)
    assert torch.allclose(model.direction, w / w.norm())
    assert model.direction.norm().item() == pytest.approx(1.0)
    crops = torch.rand(5, 1, 32, 32)
    aae.eval()
    with torch.no_grad():
        z = aae.encode(crops)
        p = model(crops)
        assert torch.allclose(model.encode(crops), z)
        assert torch.allclose(p, torch.sigmoid(z @ w + 0.3))
        assert torch.allclose(model.decode(z), aae.decode(z))
    assert p.shape == (5,) and not model.training
    with pytest.raises(ValueError, match="non-zero"):
        model.set_classifier(np.zeros(8), 0.0, np.random.default_rng(0).normal(size=(10, 8)))


def test_lch_model_sigma_is_sd_of_projections():
    model, _ = _lch_model()
    codes = np.random.default_rng(3).normal(size=(200, 8)) * 2.0 + 1.0
    weight = np.arange(1.0, 9.0)
    model.set_classifier(weight, -0.5, codes)
    direction = weight / np.linalg.norm(weight)
    assert model.sigma.item() == pytest.approx(np.std(codes @ direction, ddof=1), rel=1e-5)
    assert np.allclose(model.latent_mean.numpy(), codes.mean(0), atol=1e-5)
    assert model.bias.item() == pytest.approx(-0.5)


def test_lch_model_state_round_trip(tmp_path):
    model, _ = _lch_model()
    path = tmp_path / "model.pt"
    torch.save(model.to_state(), path)
    loaded = LCHModel.from_state(torch.load(path, weights_only=True))
    crops = torch.rand(4, 1, 32, 32)
    z = torch.randn(4, 8)
    with torch.no_grad():
        assert torch.equal(loaded(crops), model(crops))
        assert torch.equal(loaded.decode(z), model.decode(z))
    assert loaded.config == model.config
    assert torch.equal(loaded.direction, model.direction)
    assert torch.equal(loaded.sigma, model.sigma)
    with pytest.raises(ValueError, match="not an LCH model state"):
        LCHModel.from_state({"format": "other"})
