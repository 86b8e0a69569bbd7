"""A hierarchical VAE with top-down inference (LVAE, Sonderby et al. 2016; the HVAE of Havtorn et al. 2021).

Generative model, L stochastic layers z_1 (nearest the data) ... z_L (top):

    p(x, z) = p(x | z_1, ..., z_L) p(z_L) prod_{l<L} p(z_l | z_>l),   p(z_L) = N(0, I)

Inference shares the generative top-down pass (LVAE / NVAE style):

    q(z | x) = q(z_L | x) prod_{l<L} q(z_l | x, z_>l)

Networks:

- **bottom-up** (deterministic, runs once per image): a stride-2 3x3 conv stem, then per layer l a
  stride-2 3x3 conv (while the feature map is larger than 4x4; then the resolution stays) and
  `blocks` residual blocks, giving features d_l at layer l's resolution. Fashion-MNIST: d_1 at 14x14,
  d_2 at 7x7, d_3 at 4x4.
- **top-down**: a learned constant state h at the top resolution; for l = L ... 1:
  prior p(z_l | z_>l) = N(mu_p, sigma_p) from a 3x3 conv of h (N(0, I) at the top);
  posterior q(z_l | x, z_>l) = N(mu_p + dmu, sigma_p * exp(dlogvar / 2)) with (dmu, dlogvar) from a 3x3
  conv of [h, d_l] (a residual parameterization: q starts at the prior);
  then h <- blocks(h + conv1x1(z_l)) and a stride-2 transposed conv up to layer l-1's resolution
  (cropped to odd sizes); below z_1 the last transposed conv gives the pixel likelihood's parameters
  (the model's `likelihood`, Bernoulli logits by default).

Latents are spatial: z_l has `latents[l]` channels at layer l's resolution (e.g. 8x14x14, 16x7x7,
8x4x4 by default on 28x28 images). Every Gaussian is diagonal; log-variances are soft-clamped to
[-8, 8] by 8 tanh(. / 8).

**The single-latent interface** (`encode`, `code`, `prior_sample`, `decode`), so the code written for
the single-latent VAE (generation, sample grids, collapse reports) keeps working: `encode(x)` is the
top layer's q(z_L | x), flattened to (B, latent_dim); `decode(z_top)` runs the top-down pass from the
top code with every lower layer set to its conditional prior **mean** (no noise: decoding is a
deterministic function of the top code); `prior_sample` draws top codes from N(0, I). Full
ancestral sampling, which samples every layer from its conditional prior, is `sample_images`.

**Importance weights** `log_weights(x, S, generator, prior_layers=k)`: log p(x|z) + log p(z) -
log q(z|x) for S joint samples z ~ q per image. With k > 0 the k lowest layers are drawn from their
conditional prior p(z_l | z_>l) instead of q, and their p and q terms cancel out of the weight: the
L>k bound of Havtorn et al. 2021 (k = 0 is the ordinary bound). The noise of every layer is drawn
in the same order whatever k is, so L and L>k computed with one seed share their random numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vaelab import noise
from vaelab import objectives as obj
from vaelab.models.distributions import DiagonalGaussian
from vaelab.models.base import ModelBase, ModelOutput
from vaelab.models.cells import Bottleneck, ToSize, bottleneck_stack

MIN_SIZE = 4  # layers stop halving the resolution once it is at most this (per side)
LOGVAR_BOUND = 8.0


def layer_sizes(height: int, width: int, n_layers: int) -> list[tuple[int, int]]:
    """The resolution of the data, then of each stochastic layer (each halves, rounding up, above MIN_SIZE)."""
    sizes = [(height, width)]
    for _ in range(n_layers):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2) if max(h, w) > MIN_SIZE else (h, w))
    return sizes


def _bounded(logvar: torch.Tensor) -> torch.Tensor:
    return LOGVAR_BOUND * torch.tanh(logvar / LOGVAR_BOUND)


class ResBlock(nn.Module):
    """h + conv3x3(act(conv3x3(act(h)))) through a bottleneck of half the channels (half the cost of a full
    block on CPU), the second conv initialised small so each block starts near identity."""

    def __init__(self, channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        mid = max(1, channels // 2)
        self.conv1 = nn.Conv2d(channels, mid, 3, padding=1)
        self.conv2 = nn.Conv2d(mid, channels, 3, padding=1)
        self.dropout = dropout  # on the bottleneck's activations, in training only
        with torch.no_grad():
            self.conv2.weight.mul_(0.1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mid = F.silu(self.conv1(F.silu(h)))
        if self.dropout:
            mid = noise.dropout(mid, self.dropout, self.training)
        return h + self.conv2(mid)


def _blocks(channels: int, n: int, dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(*[ResBlock(channels, dropout) for _ in range(n)]) if n else nn.Identity()


class _Down(nn.Module):
    """Stride-2 3x3 conv (ceil(h/2)) when the sizes differ, a 3x3 conv otherwise."""

    def __init__(self, cin: int, cout: int, halve: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=2 if halve else 1, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(h)


class _Up(nn.Module):
    """Stride-2 4x4 transposed conv (2h), cropped to the target size; a 3x3 conv when the sizes are equal."""

    def __init__(self, cin: int, cout: int, size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
        super().__init__()
        self.size_out = size_out
        self.same = size_in == size_out
        self.conv = (nn.Conv2d(cin, cout, 3, padding=1) if self.same
                     else nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.conv(h)
        if self.same:
            return out
        return out[:, :, :self.size_out[0], :self.size_out[1]]


@dataclass(frozen=True)
class TopDown:
    """What one top-down pass produced (layers listed bottom to top)."""

    x_params: torch.Tensor  # (N, C', H, W)
    z: list[torch.Tensor]  # samples (N, c_l, h_l, w_l)
    q: list[DiagonalGaussian | None]  # posteriors (None where the layer was not inferred)
    p: list[DiagonalGaussian | None]  # conditional priors (None at the top: N(0, I))


class HVAE(ModelBase):
    """Hierarchical VAE with top-down inference; see the module docstring."""

    variational = True
    kind = "hvae"
    arch = "conv"
    prior = "standard"  # the top layer's prior: N(0, I)

    def __init__(self, image_shape: tuple[int, int, int], likelihood, latents: tuple[int, ...] = (8, 16, 8),
                 channels: int = 32, blocks: int = 1, dropout: float = 0.0, stages: tuple[int, ...] = (),
                 cell: str = "plain") -> None:
        super().__init__()
        if len(latents) < 2:
            raise ValueError("a hierarchical VAE needs at least 2 stochastic layers")
        if stages and sum(stages) != len(latents):
            raise ValueError(f"stages {list(stages)} must add up to the {len(latents)} stochastic layers")
        self.image_shape = tuple(int(s) for s in image_shape)
        self.likelihood = likelihood
        self.latents = tuple(int(c) for c in latents)
        self.n_layers = len(self.latents)
        self.cell = cell
        c, h, w = self.image_shape
        stages = tuple(int(n) for n in stages) or (1,) * self.n_layers
        stage_sizes = layer_sizes(h, w, len(stages))
        self.layer_stage = [s for s, n in enumerate(stages) for _ in range(n)]  # layer (bottom first) -> stage
        self.stages = stages
        self.sizes = [stage_sizes[0]] + [stage_sizes[s + 1] for s in self.layer_stage]  # data, then each layer
        top = self.sizes[-1]
        self.latent_dim = self.latents[-1] * top[0] * top[1]  # the flattened top code
        out_channels = c * int(getattr(likelihood, "params_per_channel", 1))
        if cell == "bottleneck":
            self._build_deep(c, out_channels, channels, blocks, dropout, stage_sizes)
        else:
            self._build_plain(c, out_channels, channels, blocks, dropout)

    def _build_plain(self, c: int, out_channels: int, ch: int, blocks: int, dropout: float) -> None:
        """Havtorn et al.'s cells: a conv down and `blocks` plain residual blocks per layer, both ways."""
        self.down = nn.ModuleList()
        self.bu_blocks = nn.ModuleList()
        for i in range(len(self.stages)):  # one bottom-up step per stage (per layer without stages)
            size_in = self.sizes[0] if i == 0 else self.sizes[self.layer_stage.index(i - 1) + 1]
            halve = self.sizes[self.layer_stage.index(i) + 1] != size_in
            self.down.append(_Down(c if i == 0 else ch, ch, halve))
            self.bu_blocks.append(_blocks(ch, blocks, dropout))
        self.h_top = nn.Parameter(torch.zeros(1, ch, *self.sizes[-1]))  # registered here: parameter order
        self.prior_net = nn.ModuleList()  # index l-1 for layer l < L
        self.post_net = nn.ModuleList()
        self.z_proj = nn.ModuleList()
        self.td_blocks = nn.ModuleList()
        self.up = nn.ModuleList()
        for i, zc in enumerate(self.latents):
            self.prior_net.append(nn.Conv2d(ch, 2 * zc, 3, padding=1) if i < self.n_layers - 1 else nn.Identity())
            self.post_net.append(nn.Conv2d(2 * ch, 2 * zc, 3, padding=1))
            self.z_proj.append(nn.Conv2d(zc, ch, 1))
            self.td_blocks.append(_blocks(ch, blocks, dropout))
            self.up.append(_Up(ch, out_channels if i == 0 else ch, self.sizes[i + 1], self.sizes[i]))
        with torch.no_grad():  # start every posterior at its prior, and every prior near N(0, I)
            for net in list(self.post_net) + [n for n in self.prior_net if isinstance(n, nn.Conv2d)]:
                net.weight.mul_(0.1)
                net.bias.zero_()

    def _build_deep(self, c: int, out_channels: int, ch: int, blocks: int, dropout: float,
                    stage_sizes: list[tuple[int, int]]) -> None:
        """VDVAE-style cells: a bottom-up pass of `blocks` bottleneck cells per resolution whose output feeds
        every layer of that resolution (the skip connections), and per stochastic layer bottleneck prior and
        posterior heads and `blocks` residual bottleneck cells top-down; nearest-neighbour resizes between
        resolutions, a transposed conv to the pixels' parameters."""
        total = len(self.stages) * blocks + self.n_layers * blocks  # residual cells in all, for their init
        mid = max(1, ch // 4)
        self.down = nn.ModuleList([_Down(c, ch, stage_sizes[1] != stage_sizes[0])]
                                  + [ToSize(stage_sizes[s + 1], up=False) for s in range(1, len(self.stages))])
        self.bu_blocks = nn.ModuleList([bottleneck_stack(ch, blocks, total, dropout) for _ in self.stages])
        self.h_top = nn.Parameter(torch.zeros(1, ch, *self.sizes[-1]))
        self.prior_net = nn.ModuleList()
        self.post_net = nn.ModuleList()
        self.z_proj = nn.ModuleList()
        self.td_blocks = nn.ModuleList()
        self.up = nn.ModuleList()
        for i, zc in enumerate(self.latents):
            top = i == self.n_layers - 1
            self.prior_net.append(nn.Identity() if top else Bottleneck(ch, mid, 2 * zc, False, 0.1))
            self.post_net.append(Bottleneck(2 * ch, mid, 2 * zc, False, 0.1))
            proj = nn.Conv2d(zc, ch, 1)
            with torch.no_grad():
                proj.weight.mul_(1.0 / math.sqrt(self.n_layers))
            self.z_proj.append(proj)
            self.td_blocks.append(bottleneck_stack(ch, blocks, total, dropout))
            if i == 0:
                self.up.append(_Up(ch, out_channels, self.sizes[1], self.sizes[0]))
            else:
                self.up.append(ToSize(self.sizes[i], up=True) if self.sizes[i + 1] != self.sizes[i] else nn.Identity())

    # ------------------------------------------------------------------ passes

    def bottom_up(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Deterministic features d_l of x, one per layer (bottom to top); layers of one stage share theirs."""
        feats, h = [], x
        for down, blocks in zip(self.down, self.bu_blocks):
            h = blocks(down(h))
            feats.append(h)
        return [feats[s] for s in self.layer_stage]

    def _prior(self, i: int, h: torch.Tensor) -> DiagonalGaussian | None:
        if i == self.n_layers - 1:
            return None
        mean, logvar = self.prior_net[i](h).chunk(2, dim=1)
        return DiagonalGaussian(mean, _bounded(logvar))

    def _posterior(self, i: int, h: torch.Tensor, d: torch.Tensor, p: DiagonalGaussian | None) -> DiagonalGaussian:
        dmean, dlogvar = self.post_net[i](torch.cat([h, d], dim=1)).chunk(2, dim=1)
        if p is None:
            return DiagonalGaussian(dmean, _bounded(dlogvar))
        return DiagonalGaussian(p.mean + dmean, _bounded(p.logvar + dlogvar))

    def _noise(self, shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if generator is None:
            return noise.standard_normal(shape, like)
        return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)

    def top_down(self, n: int, feats: list[torch.Tensor] | None = None, *, generator: torch.Generator | None = None,
                 prior_layers: int = 0, temperature: float = 1.0, z_top: torch.Tensor | None = None,
                 sample_lower: bool = True) -> TopDown:
        """One top-down pass for n images (or n samples).

        With `feats` (bottom-up features, batch n) layers above `prior_layers` are drawn from q, the
        rest from their conditional prior; without, every layer is drawn from the prior (std scaled by
        `temperature`). `z_top` fixes the top layer's code; `sample_lower=False` sets the layers
        below the top to their conditional prior means instead of drawing them (with no `feats`).
        """
        h = self.h_top.expand(n, -1, -1, -1)
        zs: list = [None] * self.n_layers
        qs: list = [None] * self.n_layers
        ps: list = [None] * self.n_layers
        for i in reversed(range(self.n_layers)):
            p = self._prior(i, h)
            ps[i] = p
            top = i == self.n_layers - 1
            zshape = (n, self.latents[i], *self.sizes[i + 1])
            infer = feats is not None and i >= prior_layers
            if top and z_top is not None:
                z = z_top.reshape(zshape).to(h.dtype)
            elif infer:
                q = self._posterior(i, h, feats[i], p)
                qs[i] = q
                z = q.mean + q.std * self._noise(zshape, h, generator)
            elif not sample_lower and not top:
                z = p.mean
            else:
                eps = self._noise(zshape, h, generator)
                z = temperature * eps if p is None else p.mean + temperature * p.std * eps
            zs[i] = z
            h = self.td_blocks[i](h + self.z_proj[i](z))
            h = self.up[i](h)
        return TopDown(x_params=h, z=zs, q=qs, p=ps)

    # ------------------------------------------------------------------ training

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ModelOutput:
        """One reparameterized joint sample z ~ q(z|x); kl = sum over layers of the analytic KL(q || p) given
        the sampled parents, per layer in `kl_layers` (B, L), bottom to top."""
        n = x.shape[0]
        td = self.top_down(n, self.bottom_up(x), generator=generator)
        kls = []
        for q, p in zip(td.q, td.p):
            if p is None:
                kls.append(obj.kl_standard_normal(q.mean, q.logvar))
            else:
                kls.append(obj.kl_diag_gaussians(q.mean, q.logvar, p.mean, p.logvar))
        kl_layers = torch.stack(kls, dim=1)
        q_top = td.q[-1]
        return ModelOutput(x_params=td.x_params, z=td.z[-1].flatten(1), kl=kl_layers.sum(1),
                           posterior=DiagonalGaussian(q_top.mean.flatten(1), q_top.logvar.flatten(1)),
                           kl_layers=kl_layers)

    # ------------------------------------------------------------------ importance weights

    def inference_context(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What `log_weights` needs of x that does not depend on the samples: the bottom-up features."""
        return self.bottom_up(x)

    def log_weight_terms(self, x: torch.Tensor, s: int, generator: torch.Generator | None = None,
                         discrete: bool = False, prior_layers: int = 0,
                         context: list[torch.Tensor] | None = None,
                         prior_mode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(x|z), log p(z) - log q(z|x)) for S joint samples per image, each (S, B), in x's dtype.

        Layers below `prior_layers` are drawn from p(z_l | z_>l) (set to its mean with `prior_mode`, as
        Havtorn et al.'s code does) and contribute no term; differentiable (the IWAE objective uses it
        with gradients)."""
        if not 0 <= prior_layers <= self.n_layers:
            raise ValueError(f"prior_layers must lie between 0 and {self.n_layers}, got {prior_layers}")
        b = x.shape[0]
        feats = context if context is not None else self.bottom_up(x)
        rep = [f.unsqueeze(0).expand(s, *f.shape).reshape(s * b, *f.shape[1:]) for f in feats]
        td = self.top_down(s * b, rep, generator=generator, prior_layers=prior_layers, sample_lower=not prior_mode)
        xs = x.unsqueeze(0).expand(s, *x.shape).reshape(s * b, *x.shape[1:])
        lik = self.likelihood
        log_px_z = (lik.discrete_log_prob if discrete else lik.log_prob)(xs, td.x_params).view(s, b)
        log_ratio = torch.zeros_like(log_px_z)
        for z, q, p in zip(td.z, td.q, td.p):
            if q is None:  # drawn from the prior: p and q cancel
                continue
            log_p = obj.log_standard_normal(z) if p is None else obj.log_normal_diag(z, p.mean, p.logvar)
            log_ratio = log_ratio + (log_p - obj.log_normal_diag(z, q.mean, q.logvar)).view(s, b)
        return log_px_z, log_ratio

    def log_weights(self, x: torch.Tensor, s: int, generator: torch.Generator | None = None,
                    discrete: bool = False, prior_layers: int = 0, context=None,
                    prior_mode: bool = False) -> torch.Tensor:
        """log p(x|z) + log p(z) - log q(z|x) for S samples per image: (S, B) float64 (the L>k weights when
        prior_layers = k > 0)."""
        log_px_z, log_ratio = self.log_weight_terms(x, s, generator, discrete, prior_layers, context, prior_mode)
        return log_px_z.double() + log_ratio.double()

    # ------------------------------------------------------------------ the single-latent interface

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z_L | x) of the top layer, flattened to (B, latent_dim)."""
        feats = self.bottom_up(x)
        i = self.n_layers - 1
        h = self.h_top.expand(x.shape[0], -1, -1, -1)
        q = self._posterior(i, h, feats[i], None)
        return DiagonalGaussian(q.mean.flatten(1), q.logvar.flatten(1))

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of the top layer's q(z_L | x), (B, latent_dim)."""
        return self.encode(x).mean

    def prior_sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """n top-layer codes from N(0, temperature^2 I), (n, latent_dim)."""
        device = self.h_top.device
        return temperature * torch.randn((n, self.latent_dim), generator=generator).to(device)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z_L) of flattened top codes: N(0, I)."""
        return obj.log_standard_normal(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Likelihood parameters from top codes (N, latent_dim), every lower layer at its conditional prior mean."""
        return self.top_down(z.shape[0], z_top=z, sample_lower=False).x_params

    @torch.no_grad()
    def sample_images(self, n: int, temperature: float = 1.0,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Full ancestral samples: every layer drawn from its (conditional) prior, std scaled by
        `temperature`; returns the mean images E[x | z] in [0, 1], (n, C, H, W)."""
        return self.likelihood.mean(self.top_down(n, generator=generator, temperature=temperature).x_params)


    def describe(self) -> str:
        """One line: layers, resolutions, latent sizes."""
        parts = [f"z_{i + 1} {c}x{h}x{w}" for i, (c, (h, w)) in enumerate(zip(self.latents, self.sizes[1:]))]
        dims = sum(c * h * w for c, (h, w) in zip(self.latents, self.sizes[1:]))
        cells = ", bottleneck cells" if self.cell == "bottleneck" else ""
        return f"HVAE{cells}, {self.n_layers} layers ({', '.join(parts)}; {dims:,} latent dims), " \
               f"{parameter_count(self):,} parameters"

    def prior_description(self) -> str:
        return f"hierarchical: N(0, I) on the top of {self.n_layers} latent layers, conditional Gaussians below"


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["HVAE", "ResBlock", "TopDown", "layer_sizes"]
