"""The adversarial autoencoder (AAE) of Zaritsky et al. 2021 and the served LCH model.

The encoder maps a single-cell crop (B, 1, S, S) in [0, 1] through 4x4 stride-2 convolutions
(batch norm, PReLU) to a latent code with batch norm; a mirrored transposed-convolution decoder
ends in a sigmoid; a latent discriminator MLP pushes the codes towards an N(0, I) prior
(Makhzani et al., "Adversarial Autoencoders", 2015). The paper's network for 256x256 crops has six
stages (64, 128, 256, 512, 1024, 1024 channels) and a 56-dimensional code; here the number of
stages adapts to the crop size (the last feature map is always 4x4) and a ``width`` multiplier
shrinks the model for tests and the CPU demo.

:class:`LCHModel` is what gets served: encoder, decoder, the linear classifier and the latent
statistics used for exaggeration, in one module saved as plain tensors and primitives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lch.crops import DEFAULT_FIELD_OF_VIEW_UM, crop_pixel_size

PAPER_CHANNELS = (64, 128, 256, 512, 1024, 1024)
PAPER_DISC_HIDDEN = (1024, 1024, 512)
FINAL_SIDE = 4
INIT_STD = 0.02
STATE_FORMAT = "lch-model/1"

# forward() modes: each training phase is exactly one forward call of the (possibly
# DistributedDataParallel-wrapped) module, because DDP tracks one forward per backward.
MODE_AUTOENCODE = "autoencode"
MODE_RECONSTRUCT_LOGITS = "reconstruct_logits"
MODE_ENCODE = "encode"
MODE_DECODE = "decode"
MODE_DISCRIMINATE = "discriminate"
MODE_ENCODE_DISCRIMINATE = "encode_discriminate"
MODES = (
    MODE_AUTOENCODE,
    MODE_RECONSTRUCT_LOGITS,
    MODE_ENCODE,
    MODE_DECODE,
    MODE_DISCRIMINATE,
    MODE_ENCODE_DISCRIMINATE,
)


def n_stages_for(crop_size: int) -> int:
    """Count the stride-2 stages that take a ``crop_size`` square down to 4x4.

    Parameters
    ----------
    crop_size : int
        Side of the square crop; a power of two, at least 8.

    Returns
    -------
    int
        ``log2(crop_size) - 2`` (6 for the paper's 256 crops, 4 for 64).
    """
    is_power_of_two = crop_size > 0 and crop_size & (crop_size - 1) == 0
    if not is_power_of_two or crop_size < 2 * FINAL_SIDE:
        raise ValueError(f"crop_size must be a power of two >= 8, got {crop_size}")
    return int(math.log2(crop_size)) - int(math.log2(FINAL_SIDE))


def _scaled(sizes: tuple[int, ...], width: float, minimum: int) -> tuple[int, ...]:
    return tuple(max(minimum, int(round(s * width))) for s in sizes)


def _default_channels(n_stages: int, width: float) -> tuple[int, ...]:
    # Deeper than the paper (crops > 256): repeat its widest stage.
    base = PAPER_CHANNELS + (PAPER_CHANNELS[-1],) * max(0, n_stages - len(PAPER_CHANNELS))
    return _scaled(base[:n_stages], width, minimum=1)


@dataclass(frozen=True)
class AAEConfig:
    """Hyper-parameters of the AAE; ``channels`` and ``disc_hidden`` are resolved on creation.

    Parameters
    ----------
    crop_size : int
        Side S of the (B, 1, S, S) input crops; a power of two >= 8.
    latent_dim : int
        Dimension of the latent cell descriptor (56 in the paper).
    width : float
        Multiplier on the paper's channel counts and discriminator sizes, used when
        ``channels`` / ``disc_hidden`` are not given (e.g. 1/16 for a tiny test model).
    channels : tuple of int, optional
        Encoder channels, one per stride-2 stage (``n_stages_for(crop_size)`` entries).
        Default: the paper's (64, 128, 256, 512, 1024, 1024) truncated to the stage count,
        scaled by ``width``.
    disc_hidden : tuple of int, optional
        Hidden sizes of the latent discriminator MLP. Default (1024, 1024, 512) scaled by
        ``width`` (at least 8 units each).
    lr : float
        Adam learning rate of all three optimizers (2e-4 in the paper).
    betas : tuple of float
        Adam betas; beta1 = 0.5 as in the seed code's options and DCGAN-style training.
    batch_size : int
        Training mini-batch size (50 in the paper); recorded here for logging.
    field_of_view_um : float
        What its crops show, in µm (:mod:`lch.crops`); their pixel size is
        :attr:`crop_pixel_size_um`, at which decoded cells are measured.
    """

    crop_size: int = 64
    latent_dim: int = 56
    width: float = 1.0
    channels: tuple[int, ...] | None = None
    disc_hidden: tuple[int, ...] | None = None
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 50
    field_of_view_um: float = DEFAULT_FIELD_OF_VIEW_UM
    n_stages: int = field(init=False)

    def __post_init__(self) -> None:
        """Check the sizes and resolve the defaults (stages, channels, discriminator, betas)."""
        n_stages = n_stages_for(self.crop_size)
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.width <= 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        channels = self.channels
        if channels is None:
            channels = _default_channels(n_stages, self.width)
        channels = tuple(int(c) for c in channels)
        if len(channels) != n_stages or min(channels) < 1:
            raise ValueError(
                f"channels must list {n_stages} positive sizes for crop_size {self.crop_size}, "
                f"got {channels}"
            )
        disc_hidden = self.disc_hidden
        if disc_hidden is None:
            disc_hidden = _scaled(PAPER_DISC_HIDDEN, self.width, minimum=8)
        disc_hidden = tuple(int(h) for h in disc_hidden)
        if not disc_hidden or min(disc_hidden) < 1:
            raise ValueError(f"disc_hidden must list positive sizes, got {disc_hidden}")
        # frozen dataclass: resolved values are set once, here.
        object.__setattr__(self, "n_stages", n_stages)
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "disc_hidden", disc_hidden)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    @property
    def crop_pixel_size_um(self) -> float:
        """µm per pixel of the crops it takes and draws."""
        return crop_pixel_size(self.field_of_view_um, self.crop_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (lists, numbers) for logging and for :meth:`from_dict`."""
        out = asdict(self)
        out.pop("n_stages")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AAEConfig:
        """Rebuild a config from :meth:`to_dict` output (unknown keys are an error)."""
        names = {f.name for f in fields(cls) if f.init}
        data = dict(data)
        if "pixel_size_um" in data and "field_of_view_um" not in data:
            # Versions registered before crops had a field of view: crop_size px of that size.
            data["field_of_view_um"] = data.pop("pixel_size_um") * data["crop_size"]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown AAEConfig fields: {unknown}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)


class Encoder(nn.Module):
    """Crops (B, 1, S, S) → latent codes (B, latent_dim), batch-normalised."""

    def __init__(self, config: AAEConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in config.channels:
            layers += [
                nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.PReLU(c_out),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.to_code = nn.Linear(c_in * FINAL_SIDE * FINAL_SIDE, config.latent_dim)
        self.code_norm = nn.BatchNorm1d(config.latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode crops (B, 1, S, S) as latent codes (B, latent_dim)."""
        return self.code_norm(self.to_code(self.features(x).flatten(1)))


class Decoder(nn.Module):
    """Latent codes (B, latent_dim) → reconstruction logits (B, 1, S, S)."""

    def __init__(self, config: AAEConfig) -> None:
        super().__init__()
        channels = config.channels[::-1]
        self.top_channels = channels[0]
        self.from_code = nn.Sequential(
            nn.Linear(config.latent_dim, channels[0] * FINAL_SIDE * FINAL_SIDE, bias=False),
            nn.BatchNorm1d(channels[0] * FINAL_SIDE * FINAL_SIDE),
            nn.PReLU(),
        )
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.PReLU(c_out),
            ]
        layers.append(nn.ConvTranspose2d(channels[-1], 1, 4, stride=2, padding=1))
        self.features = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode latent codes (B, latent_dim) as reconstruction logits (B, 1, S, S)."""
        h = self.from_code(z).view(-1, self.top_channels, FINAL_SIDE, FINAL_SIDE)
        return self.features(h)


class LatentDiscriminator(nn.Module):
    """Latent codes (B, latent_dim) → logit (B,) that a code was drawn from the prior."""

    def __init__(self, config: AAEConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d_in = config.latent_dim
        for d_out in config.disc_hidden:
            layers += [nn.Linear(d_in, d_out), nn.LeakyReLU(0.2)]
            d_in = d_out
        layers.append(nn.Linear(d_in, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Return the logit (B,) that each code (B, latent_dim) was drawn from the prior."""
        return self.net(z).squeeze(-1)


def init_weights(module: nn.Module) -> None:
    """DCGAN-style init: conv/linear weights N(0, 0.02), batch-norm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, INIT_STD)
            nn.init.zeros_(m.bias)


class AAE(nn.Module):
    """Adversarial autoencoder: ``encoder``, ``decoder`` and latent ``discriminator``.

    ``forward(x, mode=...)`` dispatches to one of :data:`MODES` so that every training phase
    is a single call of the module, which is what DistributedDataParallel needs.
    """

    def __init__(self, config: AAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.discriminator = LatentDiscriminator(config)
        init_weights(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Crops (B, 1, S, S) in [0, 1] → codes (B, latent_dim)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (B, latent_dim) → images (B, 1, S, S) in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    def forward(
        self, x: torch.Tensor, mode: str = MODE_AUTOENCODE
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Run one of the model's paths.

        Parameters
        ----------
        x : torch.Tensor
            Crops (B, 1, S, S) for the ``encode*``/``*autoencode``/``reconstruct*`` modes,
            codes (B, latent_dim) for ``decode`` and ``discriminate``.
        mode : str
            ``"autoencode"`` → (reconstruction in [0, 1], codes);
            ``"reconstruct_logits"`` → (reconstruction logits, codes);
            ``"encode"`` → codes; ``"decode"`` → images;
            ``"discriminate"`` → prior-vs-code logits (B,);
            ``"encode_discriminate"`` → discriminator logits of the crops' codes (B,).

        Returns
        -------
        torch.Tensor or tuple of torch.Tensor
            As listed for ``mode``.
        """
        if mode == MODE_AUTOENCODE:
            z = self.encoder(x)
            return self.decode(z), z
        if mode == MODE_RECONSTRUCT_LOGITS:
            z = self.encoder(x)
            return self.decoder(z), z
        if mode == MODE_ENCODE:
            return self.encoder(x)
        if mode == MODE_DECODE:
            return self.decode(x)
        if mode == MODE_DISCRIMINATE:
            return self.discriminator(x)
        if mode == MODE_ENCODE_DISCRIMINATE:
            return self.discriminator(self.encoder(x))
        raise ValueError(f"unknown AAE mode {mode!r}; expected one of {MODES}")


def unwrap(model: nn.Module) -> nn.Module:
    """Return the module a DistributedDataParallel (or DataParallel) wraps, else ``model``."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def make_optimizers(model: nn.Module, config: AAEConfig) -> dict[str, torch.optim.Optimizer]:
    """Build the three Adam optimizers of the alternating AAE update.

    Parameters
    ----------
    model : nn.Module
        An :class:`AAE`, bare or wrapped by DistributedDataParallel.
    config : AAEConfig
        Supplies ``lr`` and ``betas``.

    Returns
    -------
    dict
        ``"autoencoder"`` (encoder + decoder, reconstruction phase), ``"discriminator"``
        and ``"generator"`` (encoder only, regularisation phase; its own Adam state, as in
        Makhzani et al.).
    """
    aae = unwrap(model)

    def adam(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=config.lr, betas=config.betas)

    return {
        "autoencoder": adam([*aae.encoder.parameters(), *aae.decoder.parameters()]),
        "discriminator": adam(list(aae.discriminator.parameters())),
        "generator": adam(list(aae.encoder.parameters())),
    }


def aae_train_step(
    model: nn.Module, optimizers: dict[str, torch.optim.Optimizer], batch: torch.Tensor
) -> dict[str, float]:
    """One alternating AAE update: reconstruction, then discriminator, then generator.

    Each phase is one ``model(x, mode=...)`` call followed by one backward, so the step works
    unchanged on a DistributedDataParallel-wrapped :class:`AAE`; wrap it with
    ``find_unused_parameters=True`` (e.g. ``ray.train.torch.prepare_model(model,
    parallel_strategy_kwargs={"find_unused_parameters": True})``) because each phase uses only
    part of the network. The fake codes of the discriminator phase are the reconstruction
    phase's codes, detached. (The seed's Lua code folds the reconstruction and fooling losses
    into one encoder update; the separate phases here are Makhzani et al.'s.)

    Parameters
    ----------
    model : nn.Module
        An :class:`AAE` in training mode, bare or DDP-wrapped.
    optimizers : dict
        From :func:`make_optimizers`.
    batch : torch.Tensor
        Crops (B, 1, S, S) in [0, 1] on the model's device.

    Returns
    -------
    dict
        ``recon`` (binary cross-entropy per pixel), ``disc`` (discriminator BCE, real and fake
        averaged) and ``gen`` (encoder's BCE for fooling the discriminator), as floats.
    """
    x = batch

    model.zero_grad(set_to_none=True)
    logits, z = model(x, mode=MODE_RECONSTRUCT_LOGITS)
    recon = F.binary_cross_entropy_with_logits(logits, x)
    recon.backward()
    optimizers["autoencoder"].step()

    model.zero_grad(set_to_none=True)
    fake = z.detach()
    real = torch.randn_like(fake)
    scores = model(torch.cat([real, fake]), mode=MODE_DISCRIMINATE)
    targets = torch.cat([torch.ones_like(real[:, 0]), torch.zeros_like(fake[:, 0])])
    disc = F.binary_cross_entropy_with_logits(scores, targets)
    disc.backward()
    optimizers["discriminator"].step()

    model.zero_grad(set_to_none=True)
    fooled = model(x, mode=MODE_ENCODE_DISCRIMINATE)
    gen = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
    gen.backward()
    optimizers["generator"].step()
    # The generator phase leaves gradients on the discriminator: drop them.
    model.zero_grad(set_to_none=True)

    return {"recon": recon.item(), "disc": disc.item(), "gen": gen.item()}


@torch.no_grad()
def refresh_batch_norm(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Recompute the batch-norm running statistics of encoder and decoder over ``batches``.

    In training mode the code's batch norm hides any drift of the raw codes' mean, so nothing
    pulls it back and the running averages (momentum 0.1) lag behind a fast-moving encoder;
    eval-mode codes can then sit a full SD off the prior. Call this after training, before
    extracting codes for the classifier. Runs on the unwrapped module without gradients, so
    on a DDP-wrapped model call it on one process (e.g. rank 0) or on every rank alike.

    Parameters
    ----------
    model : nn.Module
        An :class:`AAE` (bare or DDP-wrapped) or :class:`LCHModel`.
    batches : iterable of torch.Tensor
        Crops (B, 1, S, S) in [0, 1], each on the model's device; B > 1.
    """
    inner = unwrap(model)
    norms = [m for m in inner.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    was_training = inner.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    inner.train()
    try:
        for x in batches:
            inner.decoder(inner.encoder(x))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        inner.train(was_training)


def _as_tensor(value: Any, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(like)
    return torch.as_tensor(np.asarray(value, dtype=np.float32)).to(like)


NATURAL_QUANTILES = (0.01, 0.99)
"""Where the training cells' scores are taken to end (LCHModel.natural_range)."""


class LCHModel(nn.Module):
    """The served model: encoder, decoder, linear classifier and latent statistics.

    ``P(high) = sigmoid(z · weight + bias)`` on the latent code ``z``. Buffers ``latent_mean``
    (mean code of the training cells), ``direction`` (``weight / |weight|``, the discriminant
    direction) and ``sigma`` (SD of the training cells' projections on ``direction``) let the
    exaggeration move a code by a number of SDs along the direction; ``natural_range`` (the
    1st and 99th percentiles of those projections about their mean, in SDs; NaN for models
    saved before it existed) says how far the training cells themselves reach.
    """

    def __init__(self, config: AAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        d = config.latent_dim
        self.register_buffer("weight", torch.zeros(d))
        self.register_buffer("bias", torch.zeros(()))
        self.register_buffer("latent_mean", torch.zeros(d))
        self.register_buffer("direction", torch.zeros(d))
        self.register_buffer("sigma", torch.ones(()))
        self.register_buffer("natural_range", torch.full((2,), float("nan")))
        self.eval()

    @classmethod
    def from_aae(
        cls,
        aae: nn.Module,
        weight: np.ndarray | torch.Tensor,
        bias: float | torch.Tensor,
        codes: np.ndarray | torch.Tensor,
    ) -> LCHModel:
        """Assemble the served model from a trained AAE and a linear classifier.

        Parameters
        ----------
        aae : nn.Module
            The trained :class:`AAE` (bare or DDP-wrapped); its encoder and decoder are copied.
        weight, bias : array-like, float
            The classifier on latent codes, e.g. from ``lch.classify.fit_linear_classifier``.
        codes : array-like
            Latent codes (N, latent_dim) of the training cells, for the latent statistics.

        Returns
        -------
        LCHModel
            In eval mode, on the AAE's device.
        """
        inner = unwrap(aae)
        model = cls(inner.config)
        model.encoder.load_state_dict(inner.encoder.state_dict())
        model.decoder.load_state_dict(inner.decoder.state_dict())
        device_ref = next(inner.parameters())
        model.to(device_ref.device)
        model.set_classifier(weight, bias, codes)
        return model

    def set_classifier(
        self,
        weight: np.ndarray | torch.Tensor,
        bias: float | torch.Tensor,
        codes: np.ndarray | torch.Tensor,
    ) -> None:
        """Set the classifier and recompute the latent statistics from training ``codes``."""
        w = _as_tensor(weight, self.weight).reshape(-1)
        z = _as_tensor(codes, self.weight)
        if w.numel() != self.config.latent_dim or z.ndim != 2 or z.shape[1] != w.numel():
            raise ValueError(
                f"classifier weight {tuple(w.shape)} and codes {tuple(z.shape)} must match "
                f"latent_dim {self.config.latent_dim}"
            )
        norm = torch.linalg.vector_norm(w)
        if not torch.isfinite(norm) or norm == 0:
            raise ValueError("classifier weight must be finite and non-zero")
        if len(z) < 2:
            raise ValueError("need at least 2 training codes for the latent statistics")
        direction = w / norm
        self.weight.copy_(w)
        self.bias.copy_(_as_tensor(bias, self.bias).reshape(()))
        self.latent_mean.copy_(z.mean(0))
        self.direction.copy_(direction)
        projections = z @ direction
        self.sigma.copy_(projections.std())
        scores = (projections - projections.mean()) / self.sigma
        self.natural_range.copy_(torch.quantile(scores, torch.tensor(NATURAL_QUANTILES,
                                                                     dtype=scores.dtype)))

    def encode(self, crops: torch.Tensor) -> torch.Tensor:
        """Crops (B, 1, S, S) in [0, 1] → codes (B, latent_dim)."""
        return self.encoder(crops)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (B, latent_dim) → images (B, 1, S, S) in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    def classify_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (B, latent_dim) → P(high) (B,)."""
        return torch.sigmoid(z @ self.weight + self.bias)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Crops (B, 1, S, S) in [0, 1] → P(high) (B,)."""
        return self.classify_latent(self.encode(crops))

    def to_state(self) -> dict[str, Any]:
        """Everything needed to rebuild the model, as CPU tensors and primitives.

        The result loads with ``torch.load(path, weights_only=True)``.
        """
        return {
            "format": STATE_FORMAT,
            "config": self.config.to_dict(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LCHModel:
        """Rebuild a model (on CPU, eval mode) from :meth:`to_state` output."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"not an LCH model state: format {state.get('format')!r}, expected {STATE_FORMAT!r}"
            )
        model = cls(AAEConfig.from_dict(state["config"]))
        # A state saved before natural_range existed keeps its NaN default: range unknown.
        weights = {"natural_range": model.natural_range, **state["state_dict"]}
        model.load_state_dict(weights)
        return model.eval()
