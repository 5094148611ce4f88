"""``learned``: the seed method. K h-space directions found without labels by a shift module, a
reconstructor and a discriminator, trained jointly through the sampler.

Each iteration draws a batch of selection images (their x_T), a direction index k and a signed
amount ε ∈ ±[0.25, 1] per image, and renders the images with h shifted by
ε · strength · σ_k · d_k at every edit step, σ_k being the spread of the real images' coordinates
along d_k (as :mod:`diffex.explain.calibrate` measures it), so every shift stays at a calibrated,
in-data size. The **reconstructor** sees the pair (unedited render, shifted − unedited) and must
say which direction (cross-entropy over K) and how far (|ε̂ − ε|); the **discriminator** tells
shifted renders from unshifted ones, and its non-saturating loss pushes the directions
towards renders that stay realistic. The directions (the shift module: K orthonormalized
vectors, QR of a free parameter, so they stay distinct) and the reconstructor are trained by
backpropagating through the DDIM renders, each step checkpointed so memory is bounded by one x
per step (:func:`diffex.models.sampler.ddim_render_differentiable`).

Because shifts are calibrated, the objective favours directions along which the real images vary
*and* the renders change recognizably and distinctly: the pressure towards separate factors that
a single classifier gradient lacks (docs: DESIGN 1b).

The directions start at the top-K principal axes of the real images' h (averaged over the edit
steps; ``init: random`` as in the seed papers is kept for comparison): on the shipped sample model,
random starting directions at in-data strength changed the renders too little for the
reconstructor to learn within the CPU budget (22 % against 25 % chance after 60 iterations),
while from the principal axes it named the direction of 95 % of fresh shifts after 100 iterations,
and the directions moved away from their start (|cos| 0.77-0.80 with it).

Settings come in two presets (:data:`PRESETS`): ``reduced`` (the CPU default: 100 iterations of
8 images, 5-step training renders, about 85 s on 2 cores at 32 px) and ``full`` (the GPU default:
600 iterations of 32 images at explain's 20 steps). ``auto`` picks ``full`` on a GPU. The training (directions, reconstructor,
discriminator, loss history) is cached in the experiment's cache folder when one is given.

Example
-------
>>> resolve_setting("auto", "cpu") == PRESETS["reduced"]
True
>>> dirs, names = learned_directions(ctx, k=4)                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from diffex.errors import DiffexError
from diffex.explain.cache import StageKey, cached, digest
from diffex.explain.directions.registry import DirectionContext, register
from diffex.models.hooks import frozen
from diffex.models.sampler import SamplerSpec, ddim_render, ddim_render_differentiable

log = logging.getLogger(__name__)

SETTINGS = ("auto", "reduced", "full")


@dataclass(frozen=True)
class LearnedSettings:
    """How the shift module, reconstructor and discriminator are trained."""

    iterations: int
    batch: int  # images per iteration (each with its own direction and amount)
    steps: int  # DDIM steps of the training renders (explain's t_end and t_edit)
    lr_directions: float = 0.05
    lr_networks: float = 0.005
    shift_weight: float = 0.25  # weight of |ε̂ − ε| against the direction cross-entropy
    adversarial_weight: float = 0.1
    strength_sd: float = 3.0  # the largest shift, in SDs of the real images along the direction
    min_shift: float = 0.25  # |ε| >= this share of the largest shift
    eval_pairs: int = 64  # fresh pairs the trained reconstructor is scored on
    init: str = "pca"  # start from the top-K principal axes of the real images' h ("pca") or at random ("random")


PRESETS = {
    "reduced": LearnedSettings(iterations=100, batch=8, steps=5),
    "full": LearnedSettings(iterations=600, batch=32, steps=20),
}


def resolve_setting(name: str, device) -> LearnedSettings:
    """The preset for ``name`` (auto: ``full`` on a GPU, ``reduced`` elsewhere)."""
    if name not in SETTINGS:
        raise DiffexError(f"learned_setting must be one of {SETTINGS}, got {name!r}")
    if name == "auto":
        name = "full" if torch.device(device).type == "cuda" else "reduced"
    return PRESETS[name]


class Reconstructor(nn.Module):
    """(unedited, shifted) renders (B, C, H, W) x 2 -> direction logits (B, K) and amount ε̂ (B,)."""

    def __init__(self, channels: int, k: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(2 * channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
        )
        self.head = nn.Linear(2 * width + 1, k + 1)

    def forward(self, orig: torch.Tensor, shifted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        change = shifted - orig  # (B, C, H, W)
        rms = change.flatten(1).pow(2).mean(1).add(1e-8).sqrt()  # (B,)
        # the change's pattern at unit size (which direction), its size as a separate feature (how far)
        z = self.body(torch.cat([orig, change / rms.view(-1, 1, 1, 1)], 1)).mean((2, 3))  # (B, 2w)
        out = self.head(torch.cat([z, torch.log(rms)[:, None] / 5], 1))  # (B, K + 1)
        return out[:, :-1], torch.tanh(out[:, -1])


class Discriminator(nn.Module):
    """Render (B, C, H, W) -> realism logit (B,)."""

    def __init__(self, channels: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        )
        self.head = nn.Linear(2 * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))[:, 0]


def orthonormal(raw: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows (K, D) spanning raw's rows (K, D), by a differentiable QR; signs fixed by R's diagonal."""
    q, r = torch.linalg.qr(raw.T)  # (D, K), (K, K)
    return (q * torch.sign(torch.diagonal(r)).clamp_min(0).mul(2).sub(1)).T


def _initial(hc: torch.Tensor, k: int, init: str) -> torch.Tensor:
    """Starting directions (K, D): the top-K principal axes of the centred coordinates hc (N, D), or Gaussian."""
    if init == "random":
        return torch.randn(k, hc.shape[1])
    if init != "pca":
        raise DiffexError(f"learned init must be 'pca' or 'random', got {init!r}")
    _, _, vh = torch.linalg.svd(hc.double(), full_matrices=False)
    if vh.shape[0] < k:
        raise DiffexError(f"the learned method needs more than {k} images to start from {k} principal axes; got {hc.shape[0]}")
    return vh[:k].float() * math.sqrt(hc.shape[1])  # rows of norm sqrt(D): entries of the size random ones have, for one lr


def _draws(g: torch.Generator, n_images: int, k: int, b: int, s: LearnedSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image indices (b,), direction indices (b,) and signed amounts ε (b,) for one batch."""
    idx = torch.randint(n_images, (b,), generator=g)
    kk = torch.randint(k, (b,), generator=g)
    mag = s.min_shift + (1 - s.min_shift) * torch.rand(b, generator=g)
    sign = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    return idx, kk, sign * mag


class _Trainer:
    """The shift module, reconstructor and discriminator with their optimizers, on one experiment's images."""

    def __init__(self, ctx: DirectionContext, k: int, s: LearnedSettings, spec: SamplerSpec):
        self.dm, self.s, self.spec, self.k = ctx.pair.dm, s, spec, k
        dev = self.dm.device
        n_steps = max(1, min(ctx.edit_steps, ctx.h.shape[1]))
        hbar = ctx.h[:, :n_steps].float().mean(1).flatten(1)  # (N, D) h averaged over the edit steps
        self.hc = (hbar - hbar.mean(0)).to(dev)  # (N, D) centred coordinates' source
        self.h_shape = ctx.h_shape
        self.xt = ctx.xt.to(dev)  # (N, C, H, W)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed + 401)
            self.raw = nn.Parameter(_initial(self.hc.cpu(), k, s.init))
            self.recon = Reconstructor(self.xt.shape[1], k)
            self.disc = Discriminator(self.xt.shape[1])
        self.raw.data, self.recon, self.disc = self.raw.data.to(dev), self.recon.to(dev), self.disc.to(dev)
        self.opt = torch.optim.Adam([{"params": [self.raw], "lr": s.lr_directions},
                                     {"params": self.recon.parameters(), "lr": s.lr_networks}])
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=s.lr_networks, betas=(0.5, 0.999))
        with torch.no_grad():
            # (N, C, H, W) unedited renders with the training sampler: the reconstructor's originals and the
            # discriminator's real images (so it compares shifted with unshifted, not two samplers)
            self.base = torch.cat([ddim_render(self.dm, x, spec) for x in self.xt.split(32)]).float()

    def directions(self) -> torch.Tensor:
        return orthonormal(self.raw)  # (K, D)

    def shifts(self, dirs: torch.Tensor, kk: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """h offsets (b, *h): ε · strength · σ_k · d_k, σ_k the real images' SD along d_k (not differentiated)."""
        sigma = (self.hc @ dirs.T).std(0).detach()  # (K,)
        amount = eps.to(dirs) * self.s.strength_sd * sigma[kk]  # (b,)
        return (amount[:, None] * dirs[kk]).view(len(kk), *self.h_shape)

    def step(self, g: torch.Generator) -> dict[str, float]:
        """One joint update of directions + reconstructor, then one of the discriminator."""
        idx, kk, eps = _draws(g, len(self.xt), self.k, self.s.batch, self.s)
        dev = self.xt.device
        kk_d, eps_d = kk.to(dev), eps.to(dev)
        shifted = ddim_render_differentiable(self.dm, self.xt[idx], self.shifts(self.directions(), kk_d, eps_d), self.spec).float()
        logits, eps_hat = self.recon(self.base[idx], shifted)  # (b, K), (b,)
        loss_k = F.cross_entropy(logits, kk_d)
        loss_eps = (eps_hat - eps_d).abs().mean()
        loss_adv = F.softplus(-self.disc(shifted)).mean()
        loss = loss_k + self.s.shift_weight * loss_eps + self.s.adversarial_weight * loss_adv
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        real = self.base[torch.randint(len(self.base), (self.s.batch,), generator=g)]
        loss_d = F.softplus(-self.disc(real)).mean() + F.softplus(self.disc(shifted.detach())).mean()
        self.opt_d.zero_grad()
        loss_d.backward()
        self.opt_d.step()
        acc = float((logits.argmax(1) == kk_d).float().mean())
        return {"loss": loss.item(), "direction_ce": loss_k.item(), "shift_mae": loss_eps.item(), "adversarial": loss_adv.item(),
                "discriminator": loss_d.item(), "accuracy": acc}

    @torch.no_grad()
    def evaluate(self, g: torch.Generator) -> dict:
        """The trained reconstructor on fresh pairs: accuracy per direction and overall, against chance."""
        dirs = self.directions()
        hits, eps_err, per_k = [], [], np.zeros((self.k, 2))
        for start in range(0, self.s.eval_pairs, 32):
            b = min(32, self.s.eval_pairs - start)
            idx, kk, eps = _draws(g, len(self.xt), self.k, b, self.s)
            kk_d, eps_d = kk.to(dirs.device), eps.to(dirs.device)
            shifted = ddim_render(self.dm, self.xt[idx], self.spec, delta=self.shifts(dirs, kk_d, eps_d)).float()
            logits, eps_hat = self.recon(self.base[idx], shifted)
            hit = (logits.argmax(1) == kk_d).cpu().numpy()
            hits.append(hit)
            eps_err.append((eps_hat - eps_d).abs().cpu().numpy())
            np.add.at(per_k, (kk.numpy(), 0), hit)
            np.add.at(per_k, (kk.numpy(), 1), 1)
        hits_all = np.concatenate(hits)
        n, x = len(hits_all), int(hits_all.sum())
        return {"pairs": n, "accuracy": x / n, "chance": 1 / self.k, "p_value": binomial_tail(x, n, 1 / self.k),
                "accuracy_per_direction": (per_k[:, 0] / np.maximum(per_k[:, 1], 1)).tolist(),
                "shift_mae": float(np.concatenate(eps_err).mean()),
                "shift_mae_of_guessing_zero": (1 + self.s.min_shift) / 2}


def binomial_tail(x: int, n: int, p: float) -> float:
    """P(X >= x) for X ~ Binomial(n, p), exactly.

    >>> round(binomial_tail(3, 3, 0.5), 3)
    0.125
    """
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(x, n + 1)))


def train_learned(ctx: DirectionContext, k: int, s: LearnedSettings, spec: SamplerSpec) -> tuple[torch.Tensor, dict]:
    """Train K directions; return them (K, *h) ordered by how well the reconstructor tells them apart, and the record."""
    if ctx.xt is None:
        raise DiffexError("the learned method needs the images' inverted x_T (DirectionContext.xt)")
    if k < 2:
        raise DiffexError("the learned method needs k >= 2 directions (the reconstructor tells them apart)")
    t0 = time.time()
    g = torch.Generator().manual_seed(ctx.seed + 409)
    with frozen(ctx.pair.dm.unet):
        tr = _Trainer(ctx, k, s, spec)
        task = ctx.progress.add_task("learned directions", total=s.iterations) if ctx.progress is not None else None
        history = []
        for _ in range(s.iterations):
            history.append(tr.step(g))
            if task is not None:
                ctx.progress.advance(task)
        tr.recon.eval()
        ev = tr.evaluate(torch.Generator().manual_seed(ctx.seed + 419))
    order = np.argsort(-np.asarray(ev["accuracy_per_direction"]), kind="stable")
    dirs = tr.directions().detach()[torch.as_tensor(order)].cpu()
    record = {"settings": asdict(s), "sampler": asdict(spec), "k": k, "seconds": round(time.time() - t0, 1),
              "history": {key: [h[key] for h in history] for key in history[0]} if history else {},
              "evaluation": {**ev, "accuracy_per_direction": [ev["accuracy_per_direction"][i] for i in order]}}
    log.info("learned directions: %d iterations in %.0f s; the reconstructor names the direction in %.0f %% of %d fresh pairs "
             "(chance %.0f %%, p %.2g)", s.iterations, record["seconds"], 100 * ev["accuracy"], ev["pairs"], 100 * ev["chance"], ev["p_value"])
    return dirs.view(k, *ctx.h_shape), record


@register("learned")
def learned_directions(ctx: DirectionContext, k: int) -> tuple[torch.Tensor, list[str]]:
    """Shift-module directions trained with a reconstructor and a discriminator (cached in ``ctx.cache``)."""
    s = resolve_setting(ctx.learned_setting, ctx.pair.dm.device)
    spec = replace(ctx.sampler or SamplerSpec(), steps=s.steps, mode="symmetric")
    if ctx.cache is None:
        dirs, record = train_learned(ctx, k, s, spec)
    else:
        key = StageKey("learned", {**ctx.cache_inputs, "k": str(k), "seed": str(ctx.seed), "settings": digest(asdict(s)),
                                   "sampler": digest(asdict(spec))})
        tensors, record = cached(ctx.cache, key, lambda: _as_stage(*train_learned(ctx, k, s, spec)))
        dirs = tensors["directions"]
    ctx.diagnostics["learned"] = _summary(record)
    return dirs, [f"learned{i + 1}" for i in range(k)]


def _as_stage(dirs: torch.Tensor, record: dict) -> tuple[dict, dict]:
    return {"directions": dirs.contiguous()}, record


def _summary(record: dict) -> dict:
    """The record without the per-iteration history, plus the mean losses of its first and last tenth."""
    hist = record.get("history", {})
    n = len(hist.get("loss", []))
    tenth = max(1, n // 10)
    out = {key: v for key, v in record.items() if key != "history"}
    out["loss_first_tenth"] = float(np.mean(hist["loss"][:tenth])) if n else float("nan")
    out["loss_last_tenth"] = float(np.mean(hist["loss"][-tenth:])) if n else float("nan")
    return out
