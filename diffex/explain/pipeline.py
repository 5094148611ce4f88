"""``explain``: the stages over an experiment folder, each resumable from what is on disk.

images -> invert (cache per image) -> gradients -> candidates -> screen -> effect table -> AttFind
-> traversals + morphology -> results.json, attributes.csv, provenance.json, report.html.

Every stage writes its result atomically under ``OUT/cache`` (keyed by content: image and model
checksums, settings), and later stages read what is stored, so that an interrupted run, rerun,
skips finished work and gives identical results.

Example
-------
>>> res = explain("sample_data/models/classifier", "sample_data/heldout", "exp1")   # doctest: +SKIP
>>> res.attributes[0]["description"]                                               # doctest: +SKIP
'DNA area +21 %, ...'
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from diffex.config import from_dict, to_dict
from diffex.data.dataset import discover, load_images, relative_path, require_conditions
from diffex.errors import DiffexError
from diffex.explain.directions import DirectionContext, generate, get_method
from diffex.explain.rank import SIGNS, attfind, attribute_statistics
from diffex.explain.sensitivity import classifier_gradients, screen
from diffex.fsutil import atomic_file, sha256_file, write_json
from diffex.models import sampler as engine
from diffex.models.bridge import ModelPair, check_models
from diffex.models.classifier import load_classifier
from diffex.models.diffusion import DiffusionModel, check_precision
from diffex.progress import make_progress
from diffex.report.morphology import describe, measure_many, trend
from diffex.report.traversal import animated_gif, grid_png, safe_name, write_hyperstack
from diffex.runtime import describe_device, resolve_device, software_versions

log = logging.getLogger(__name__)

MODES = ("symmetric", "asymmetric")


@dataclass(frozen=True)
class ExplainConfig:
    """Settings of ``diffex explain`` (YAML keys; unknown keys are errors).

    Strengths are relative to the mean ‖h‖ of the data. ``t_end`` is where inversion stops
    (partial inversion: the shipped 32 px model round-trips at 29 dB with 20 steps to t = 699 and
    at 19 dB to t = 999). Edits act on every step with t >= ``t_edit``. ``precision``: ``fp32``
    (default) or ``bf16`` (diffusion-model evaluations under bfloat16 autocast: faster on GPUs and
    on CPUs with AVX512-BF16/AMX; inversion and renders differ slightly from fp32, see
    docs/benchmarks.md).
    """

    diffusion: str | None = None
    steps: int = 20
    t_end: int = 699
    t_edit: int = 0
    mode: str = "asymmetric"
    methods: tuple[str, ...] = ("gradient", "pca")
    directions_per_method: int = 4
    merge_cos: float = 0.9
    screen_top: int = 4
    strength: float = 1.0
    max_images: int = 256
    gradient_images: int = 48
    rank_images: int = 48
    max_attributes: int = 3
    traversal_frames: int = 7
    traversal_images: int = 2
    measure_images: int = 4
    min_psnr: float = 25.0
    batch_size: int = 32
    seed: int = 0
    bootstrap: int = 1000
    contrastive_iterations: int = 30
    precision: str = "fp32"

    def __post_init__(self):
        try:
            check_precision(self.precision)
        except DiffexError as exc:
            raise DiffexError(f"{exc}; bf16 runs the diffusion model under bfloat16 autocast") from None
        if self.mode not in MODES:
            raise DiffexError(f"mode must be one of {MODES}, got {self.mode!r}")
        for m in self.methods:
            get_method(m)
        if not self.methods:
            raise DiffexError("methods: give at least one direction method")
        if self.traversal_frames < 3 or self.traversal_frames % 2 == 0:
            raise DiffexError(f"traversal_frames must be odd and >= 3, got {self.traversal_frames}")
        for name in ("steps", "directions_per_method", "screen_top", "max_images", "gradient_images",
                     "rank_images", "max_attributes", "batch_size", "traversal_images", "measure_images"):
            if getattr(self, name) < 1:
                raise DiffexError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.strength > 0:
            raise DiffexError(f"strength must be > 0, got {self.strength}")


def config_from_dict(d: dict) -> ExplainConfig:
    return from_dict(ExplainConfig, d, "explain config")


@dataclass
class ExplainResult:
    """What :func:`explain` returns: the experiment folder and its main results."""

    out: Path
    results: dict
    attributes: list[dict] = field(default_factory=list)

    @property
    def report(self) -> Path:
        return self.out / "report.html"


# --------------------------------------------------------------------------------- helpers
def _digest(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:24]


def _model_digest(folder: Path) -> str:
    sums = folder / "checksums.json"
    if sums.exists():
        return hashlib.sha256(sums.read_bytes()).hexdigest()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return _digest(*(sha256_file(p) for p in files))


def _save_tensors(path: Path, tensors: dict, meta: dict | None = None) -> None:
    from safetensors.torch import save

    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata={"json": json.dumps(meta or {})})
    with atomic_file(path, "wb") as fh:
        fh.write(blob)


def _load_tensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("json", "{}"))
        return {k: fh.get_tensor(k) for k in fh.keys()}, meta


def stratified_indices(labels: np.ndarray, n: int, seed: int, pool: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of up to n items, proportionally from each label, seeded."""
    pool = np.arange(len(labels)) if pool is None else np.asarray(pool)
    if len(pool) <= n:
        return np.sort(pool)
    rng = np.random.default_rng(seed)
    out = []
    for lab in np.unique(labels[pool]):
        members = pool[labels[pool] == lab]
        take = max(1, round(n * len(members) / len(pool)))
        out.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return np.sort(np.concatenate(out))[: max(n, len(np.unique(labels[pool])))]


def sample_data_dir() -> Path:
    """The repository's ``sample_data/`` folder (diffex installed from a checkout, as README says)."""
    root = Path(__file__).resolve().parents[1] / "sample_data"
    if not (root / "models" / "classifier").is_dir():
        raise DiffexError(f"{root}: the sample data is not here; `diffex demo` needs diffex installed from a repository checkout")
    return root


def resolve_diffusion(diffusion, cfg: ExplainConfig, clf) -> Path:
    """--diffusion, else the config's ``diffusion``, else the model recorded with the classifier."""
    for cand in (diffusion, cfg.diffusion, (clf.info.training or {}).get("diffusion_model")):
        if cand:
            p = Path(cand)
            if not p.is_absolute() and not p.exists() and clf.info.kind == "folder":
                p = Path(clf.info.source) / p
            return p
    raise DiffexError(
        f"{clf.info.source}: no diffusion model given and none recorded with the classifier; pass --diffusion DIR, "
        "or train one on your images with `diffex train-diffusion --images DIR --out MODEL_DIR` (see docs/training.md)"
    )


def _prepare_out(out: Path, cfg_dict: dict, force: bool) -> None:
    done = out / "results.json"
    if done.exists() and not force:
        raise DiffexError(f"{out}: a finished experiment is here; pass --force to recompute it, or choose another --out")
    resolved = out / "config.resolved.json"
    if resolved.exists() and not force:
        old = json.loads(resolved.read_text())
        if old != cfg_dict:
            diff = sorted(k for k in set(old) | set(cfg_dict) if old.get(k) != cfg_dict.get(k))
            raise DiffexError(
                f"{out}: holds an unfinished run with other settings ({', '.join(diff)}); pass --force to start over "
                "or choose another --out"
            )
    if force:
        for name in ("results.json", "attributes.csv", "morphology.csv", "report.html", "provenance.json", "traversals"):
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for name in ("gradients.safetensors", "directions.safetensors", "effects.npz"):
            (out / "cache" / name).unlink(missing_ok=True)
        shutil.rmtree(out / "cache" / "traversals", ignore_errors=True)
    (out / "cache" / "inversions").mkdir(parents=True, exist_ok=True)
    write_json(resolved, cfg_dict)
    import yaml

    with atomic_file(out / "config.resolved.yaml") as fh:
        yaml.safe_dump(cfg_dict, fh, sort_keys=False)


# ---------------------------------------------------------------------------------- stages
def invert_cached(pair, raw: np.ndarray, keys: list[str], cache: Path, cfg: ExplainConfig, progress=None) -> dict:
    """x_T, reconstruction, h trajectory and round-trip PSNR per image, from cache or computed.

    Images are processed in fixed chunks of ``batch_size`` (in input order), and a chunk is
    recomputed unless all its images are cached, so a resumed run computes exactly what a fresh run
    would.
    """
    dm = pair.dm
    n = len(keys)
    task = progress.add_task("inverting images", total=n) if progress else None
    for start in range(0, n, cfg.batch_size):
        sl = slice(start, min(n, start + cfg.batch_size))
        if all((cache / f"{k}.safetensors").exists() for k in keys[sl]):
            if progress:
                progress.advance(task, sl.stop - sl.start)
            continue
        x0 = pair.to_model_space(raw[sl])  # (b, C, H, W)
        xt = engine.ddim_invert(dm, x0, cfg.steps, t_end=cfg.t_end)
        store: list = []
        with engine.record_h(dm.unet, store):
            xr = engine.ddim_render(dm, xt, cfg.steps, t_end=cfg.t_end)
        h = torch.stack(store, 1).cpu()  # (b, S, *h), S from t_end down to the last step
        err = engine.psnr(xr, x0).cpu()
        for j, key in enumerate(keys[sl]):
            _save_tensors(cache / f"{key}.safetensors",
                          {"xt": xt[j].cpu(), "xrec": xr[j].cpu(), "x0": x0[j].cpu(), "h": h[j], "psnr": err[j : j + 1]})
        if progress:
            progress.advance(task, sl.stop - sl.start)
    loaded = [_load_tensors(cache / f"{k}.safetensors")[0] for k in keys]
    return {name: torch.stack([t[name] for t in loaded]) for name in ("xt", "xrec", "x0", "h", "psnr")}


def group_targets(probs_rec: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Target class per image: the most probable class other than its own condition."""
    p = probs_rec.copy()
    p[np.arange(len(labels)), labels] = -1
    return p.argmax(1)


def explain(
    classifier: str | Path,
    images: str | Path,
    out: str | Path | None = None,
    diffusion: str | Path | None = None,
    config: ExplainConfig | None = None,
    device: str = "auto",
    axes: str | None = None,
    trust_checkpoint: bool = False,
    force: bool = False,
    command: str | None = None,
    show_progress: bool = True,
) -> ExplainResult:
    """Find, rank, render and describe the h-space attributes that change the classifier's decision.

    Parameters
    ----------
    classifier : path to a classifier model folder or TorchScript file (see :mod:`diffex.classifier`)
    images : folder with one subfolder per condition, or a CSV manifest
    out : experiment folder (default ``diffex-<images name>``)
    diffusion : diffusion model folder; default: ``config.diffusion``, else the one recorded with the classifier
    config : :class:`ExplainConfig`

    Returns
    -------
    ExplainResult

    Example
    -------
    >>> res = explain("clf", "cells", "exp", diffusion="dm", config=ExplainConfig(rank_images=16))  # doctest: +SKIP
    """
    t_start = time.time()
    cfg = config or ExplainConfig()
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    clf = load_classifier(classifier, trust_checkpoint=trust_checkpoint, device=dev)
    dm_path = resolve_diffusion(diffusion, cfg, clf)
    dm = DiffusionModel.load(dm_path, device=dev, precision=cfg.precision)
    check_models(clf, dm)  # before any computation
    cfg = replace(cfg, diffusion=str(dm_path))
    pair = ModelPair(clf, dm)
    class_names = list(clf.info.class_names)

    records = sorted(discover(images), key=lambda r: str(r.path))
    conds = require_conditions(records, images)
    missing = [c for c in conds if c not in class_names]
    if missing:
        raise DiffexError(f"{images}: conditions {missing} are not classes of the classifier {class_names}")
    all_labels = np.array([class_names.index(r.condition) for r in records])
    pick = stratified_indices(all_labels, cfg.max_images, cfg.seed)
    records = [records[i] for i in pick]
    out = Path(out) if out else Path(f"diffex-{Path(images).stem}")
    cfg_dict = to_dict(cfg)
    _prepare_out(out, cfg_dict, force)

    imgs = load_images(records, dm.info.image_size, dm.info.resize_mode, axes=axes,
                       expect_channels=dm.info.in_channels, show_progress=show_progress)
    if dm.info.channel_names and not all(c.startswith("ch") for c in imgs.channel_names):
        if tuple(imgs.channel_names) != tuple(dm.info.channel_names):
            raise DiffexError(f"{images}: image channels {list(imgs.channel_names)} differ from the diffusion model's {list(dm.info.channel_names)}")
    labels = imgs.labels(class_names)
    channel_names = list(dm.info.channel_names or imgs.channel_names)
    file_sha = [sha256_file(r.path) for r in records]
    model_sha = _model_digest(Path(dm_path))
    key_parts = (model_sha, cfg.steps, cfg.t_end, dm.info.image_size, dm.info.resize_mode) + (() if cfg.precision == "fp32" else (cfg.precision,))
    keys = [_digest(s, *key_parts) for s in file_sha]
    cache = out / "cache"
    ts_all = engine.ddim_timesteps(dm.num_train_timesteps, cfg.steps, cfg.t_end)
    edit_ts = ts_all[ts_all >= cfg.t_edit]
    asym = cfg.mode == "asymmetric"

    cost: dict[str, int] = {}

    @contextlib.contextmanager
    def counted(stage: str):
        with engine.EvaluationCounter(dm.unet) as counter:
            yield
        cost[stage] = cost.get(stage, 0) + counter.images

    with make_progress(show_progress) as progress:
        with counted("inversion"):
            inv = invert_cached(pair, imgs.raw, keys, cache / "inversions", cfg, progress)
        psnr = inv["psnr"][:, 0].numpy()
        h = inv["h"].float()  # (N, S, *h)
        h_scale = float(h.flatten(2).norm(dim=2).mean())
        probs_orig = pair.probs(inv["x0"].to(dev)).numpy()
        probs_rec = pair.probs(inv["xrec"].to(dev)).numpy()
        good = np.flatnonzero(psnr >= cfg.min_psnr)
        if len(np.unique(labels[good])) < 2:
            raise DiffexError(
                f"{images}: fewer than two conditions have images that invert well (round-trip PSNR >= {cfg.min_psnr} dB); "
                f"median PSNR {np.median(psnr):.1f} dB. The diffusion model does not fit these images"
            )
        targets = group_targets(probs_rec, labels)

        # ---- gradients
        gpath = cache / "gradients.safetensors"
        gidx = stratified_indices(labels, cfg.gradient_images, cfg.seed + 1, good)
        if not gpath.exists():
            task = progress.add_task("classifier gradients", total=len(gidx))
            with counted("gradients"):
                g = classifier_gradients(pair, inv["xt"][gidx], torch.as_tensor(targets[gidx]), cfg.steps, cfg.t_edit, False,
                                         cfg.t_end, batch_size=min(16, cfg.batch_size), on_chunk=lambda k: progress.advance(task, k))
            _save_tensors(gpath, {"grads": g}, {"images": gidx.tolist()})
        grads = _load_tensors(gpath)[0]["grads"]

        # ---- candidate directions
        dpath = cache / "directions.safetensors"
        if not dpath.exists():
            task = progress.add_task("candidate directions", total=1)
            ctx = DirectionContext(pair, inv["xrec"][good], h[good], grads, targets[gidx], class_names, edit_ts, h_scale,
                                   seed=cfg.seed, contrastive_iterations=cfg.contrastive_iterations)
            with counted("directions"):
                cands = generate(ctx, list(cfg.methods), cfg.directions_per_method, cfg.merge_cos)
            _save_tensors(dpath, {"vectors": cands.vectors}, {"names": cands.names, "merged": cands.merged})
            progress.advance(task)
        tens, meta = _load_tensors(dpath)
        vectors, names, merged = tens["vectors"], meta["names"], meta["merged"]

        # ---- screening and the effect table
        order, scores = screen(grads, targets[gidx], vectors, min(cfg.screen_top, len(names)))
        ridx = stratified_indices(labels, cfg.rank_images, cfg.seed + 2, good)
        epath = cache / "effects.npz"
        if not epath.exists():
            offsets = engine.edit_offsets(vectors[order], torch.tensor([-cfg.strength, cfg.strength]), h_scale)
            offsets = offsets.flatten(0, 1)  # (K'*2, *h): candidate-major, sign minor
            task = progress.add_task("rendering edits", total=len(ridx) * len(offsets))
            with counted("effect_table"):
                x_edit = engine.render_edits(dm, inv["xt"][ridx], offsets, cfg.steps, cfg.batch_size, cfg.t_edit, asym,
                                             cfg.t_end, on_chunk=lambda k: progress.advance(task, k))
            pe = pair.probs(x_edit.flatten(0, 1).to(dev)).numpy().reshape(len(ridx), len(order), 2, -1)
            buf = io.BytesIO()
            np.savez(buf, probs_edit=pe, images=ridx, order=order)
            with atomic_file(epath, "wb") as fh:
                fh.write(buf.getvalue())
        eff = np.load(epath)
        probs_edit, order = eff["probs_edit"], eff["order"]  # (n, K', 2, classes)

        # ---- AttFind per target condition
        hbar = h.mean(1).flatten(1)  # (N, D) time-averaged h
        proj = ((hbar - hbar.mean(0)) @ vectors.flatten(1).T).numpy()  # (N, K)
        attributes = []
        for t in [class_names.index(c) for c in conds]:
            grp = labels[ridx] != t
            if not grp.any():
                continue
            p_t = probs_edit[grp][..., t]  # (n_g, K', 2)
            effect = p_t - probs_rec[ridx][grp][:, t][:, None, None]
            flipped = probs_edit[grp].argmax(-1) == t
            sels = attfind(effect, flipped, cfg.max_attributes)
            stats = attribute_statistics(sels, effect, flipped, proj[good][:, order], labels[good] == t, cfg.bootstrap, cfg.seed)
            for st in stats:
                k = int(order[st["direction"]])
                st.update({"target": class_names[t], "candidate": k, "name": names[k],
                           "merged": merged.get(names[k], []), "screening_score": float(scores[k]),
                           "strength": cfg.strength, "mean_abs_delta_p": float(np.abs(effect[:, st["direction"], SIGNS.index(st["sign"])]).mean())})
                st["id"] = f"to-{safe_name(class_names[t])}-{st['rank']}"
                attributes.append(st)

        # ---- traversals and morphology
        strengths = np.linspace(-cfg.strength, cfg.strength, cfg.traversal_frames)
        (out / "traversals").mkdir(exist_ok=True)
        tcache = cache / "traversals"
        tcache.mkdir(exist_ok=True)
        norm = dm.info.normalization
        low = np.array(norm.low) if norm else np.full(len(channel_names), -1.0)
        high = np.array(norm.high) if norm else np.ones(len(channel_names))
        task = progress.add_task("traversals", total=len(attributes))
        morph_rows: list[dict] = []
        for att in attributes:
            k, sign = att["candidate"], att["sign"]
            j = int(np.flatnonzero(order == k)[0])
            # examples per condition: most affected and typical (by |Δp of the target| under this edit)
            change = np.abs(probs_edit[:, j, SIGNS.index(sign), class_names.index(att["target"])] - probs_rec[ridx][:, class_names.index(att["target"])])
            examples, extra = [], []
            for c in conds:
                members = np.flatnonzero(labels[ridx] == class_names.index(c))
                by = members[np.argsort(-change[members], kind="stable")]
                shown = list(dict.fromkeys([int(by[0]), int(by[len(by) // 2])]))[: cfg.traversal_images]
                examples += shown
                extra += [int(m) for m in by if m not in shown][: max(0, cfg.measure_images - len(shown))]
            ex = examples + extra  # shown examples first; all of them are measured
            img_idx = ridx[ex]
            tpath = tcache / f"{att['id']}-{_digest(k, sign, img_idx.tolist(), strengths.tolist(), names[k])}.safetensors"
            if not tpath.exists():
                offs = engine.edit_offsets(sign * vectors[k : k + 1], torch.as_tensor(strengths), h_scale)[0]  # (F, *h)
                with counted("traversals"):
                    frames = engine.render_edits(dm, inv["xt"][img_idx], offs, cfg.steps, cfg.batch_size, cfg.t_edit, asym, cfg.t_end)
                _save_tensors(tpath, {"frames": frames})
            frames = _load_tensors(tpath)[0]["frames"]  # (n, F, C, H, W) model space
            raw = pair.raw(frames.flatten(0, 1)).numpy().reshape(*frames.shape)
            ref = pair.raw(inv["xrec"][img_idx]).numpy()
            meas = measure_many(raw.reshape(-1, *raw.shape[2:]), channel_names)
            meas_ref = measure_many(ref, channel_names)
            svals = np.broadcast_to(strengths, raw.shape[:2])
            trends = {m: trend(svals, v.reshape(raw.shape[:2]), meas_ref[m], dm.info.image_size if "Center" in m else 0)
                      for m, v in meas.items()}
            p_tr = pair.probs(frames.flatten(0, 1).to(dev)).numpy().reshape(*raw.shape[:2], -1)
            for i, im in enumerate(img_idx):
                for f, st in enumerate(strengths):
                    morph_rows.append({"attribute": att["id"], "ImageName": relative_path(records[im].path, images),
                                       "Condition": records[im].condition, "Strength": float(st),
                                       f"P_{att['target']}": float(p_tr[i, f, class_names.index(att["target"])]),
                                       **{m: float(v.reshape(raw.shape[:2])[i, f]) for m, v in meas.items()}})
            att["description"] = describe(trends)
            att["morphology"] = trends
            att["traversal"] = {"strengths": strengths.tolist(), "images": [relative_path(records[i].path, images) for i in img_idx],
                                "conditions": [records[i].condition for i in img_idx],
                                "p_target": p_tr[..., class_names.index(att["target"])].tolist()}
            show = list(range(len(examples)))
            base = out / "traversals" / att["id"]
            tif_names = {i: f"{base.name}_{safe_name(Path(records[img_idx[i]].path).name.split('.')[0])}.tif" for i in show}
            for i in show:
                write_hyperstack(base.parent / tif_names[i], raw[i], channel_names, strengths.tolist())
            grid_png(f"{base}.png", raw[show], ref[show], low, high)
            animated_gif(f"{base}.gif", raw[show], low, high)
            att["traversal"]["shown"] = [
                {"index": i, "image": relative_path(records[img_idx[i]].path, images), "condition": records[img_idx[i]].condition,
                 "file": tif_names[i]} for i in show]
            # the attribute coordinate of every usable image, in units of mean ‖h‖ (a traversal of strength s moves it by s)
            coord = sign * proj[:, k] / h_scale
            att["coordinate"] = {c: [round(float(v), 5) for v in coord[good][labels[good] == class_names.index(c)]] for c in conds}
            att["files"] = sorted(p.name for p in (out / "traversals").glob(f"{att['id']}*"))
            progress.advance(task)

    acc = float((probs_orig.argmax(1) == labels).mean())
    acc_rec = float((probs_rec.argmax(1) == labels).mean())
    flagged = [{"image": relative_path(records[i].path, images), "psnr_db": float(psnr[i])} for i in np.flatnonzero(psnr < cfg.min_psnr)]
    results = {
        "format": "diffex-explain",
        "format_version": 1,
        "classifier": str(classifier),
        "diffusion": str(dm_path),
        "images": str(images),
        "class_names": class_names,
        "conditions": conds,
        "channel_names": channel_names,
        "n_images": len(records),
        "per_condition": {c: int((labels == class_names.index(c)).sum()) for c in conds},
        "classifier_accuracy": acc,
        "classifier_accuracy_on_reconstructions": acc_rec,
        "confusion_matrix": _confusion(labels, probs_orig.argmax(1), len(class_names)).tolist(),
        "inversion": {"steps": cfg.steps, "t_end": cfg.t_end, "psnr_db_mean": float(psnr.mean()),
                      "psnr_db_min": float(psnr.min()), "psnr_db_median": float(np.median(psnr)),
                      "min_psnr_db": cfg.min_psnr, "flagged": flagged},
        "diffusion_model": {"image_size": dm.info.image_size, "parameters": int(sum(p.numel() for p in dm.unet.parameters())),
                            "training_steps": ((dm.info.training or {}).get("config") or {}).get("steps"),
                            "training_images": (dm.info.training or {}).get("n_train")},
        "config": cfg_dict,
        "display_ranges": {c: [float(low[j]), float(high[j])] for j, c in enumerate(channel_names)},
        "h_shape": list(h.shape[2:]),
        "h_scale": h_scale,
        "candidates": [{"index": i, "name": n, "screening_score": float(scores[i]), "rendered": bool(i in order),
                        "merged": merged.get(n, [])} for i, n in enumerate(names)],
        "gradient_images": len(gidx),
        "rank_images": len(ridx),
        "attributes": attributes,
        "quality_gate_passed": bool((dm.info.quality_gate or {}).get("passed", False)),
        "elapsed_s": round(time.time() - t_start, 1),
        "unet_image_evaluations_this_run": cost,  # 0 for stages served from the cache
    }
    _write_morphology(out / "morphology.csv", morph_rows)
    _write_outputs(out, results, cfg_dict, command, dev, classifier, dm_path, records, file_sha, images)
    log.info("explain finished in %.0f s: %s", time.time() - t_start, out)
    return ExplainResult(out, results, attributes)


def _confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (y, pred), 1)
    return m


def _write_morphology(path: Path, rows: list[dict]) -> None:
    """One row per traversal render: attribute, image, condition, strength, p(target), measurements."""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    with atomic_file(path) as fh:
        w = csv.DictWriter(fh, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


ATTRIBUTE_COLUMNS = ("target", "rank", "name", "sign", "strength", "mean_delta_p", "delta_p_ci95_low", "delta_p_ci95_high",
                     "flip_rate", "coverage", "cumulative_flip_rate", "separation_auc", "separation_cohens_d",
                     "separation_p_value", "screening_score", "n_images", "description")


def _write_outputs(out, results, cfg_dict, command, dev, classifier, dm_path, records, file_sha, images) -> None:
    from diffex.report.html import write_report

    with atomic_file(out / "attributes.csv") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(ATTRIBUTE_COLUMNS)
        for a in results["attributes"]:
            row = {**a, "delta_p_ci95_low": a["delta_p_ci95"][0], "delta_p_ci95_high": a["delta_p_ci95"][1]}
            w.writerow([f"{row[c]:.6g}" if isinstance(row[c], float) else row[c] for c in ATTRIBUTE_COLUMNS])
    clf_path = Path(classifier)
    provenance = {
        "command": command,
        "software": software_versions(),
        "device": describe_device(dev),
        "seed": cfg_dict["seed"],
        "config": cfg_dict,
        "classifier": {"path": str(clf_path), "sha256": {p.relative_to(clf_path).as_posix() if clf_path.is_dir() else p.name: sha256_file(p)
                                                          for p in (sorted(clf_path.rglob("*")) if clf_path.is_dir() else [clf_path]) if p.is_file()}},
        "diffusion": {"path": str(dm_path), "sha256": {p.relative_to(dm_path).as_posix(): sha256_file(p) for p in sorted(Path(dm_path).rglob("*")) if p.is_file()}},
        "images": [{"path": relative_path(r.path, images), "condition": r.condition, "sha256": s} for r, s in zip(records, file_sha)],
    }
    write_json(out / "provenance.json", provenance)
    write_report(out, results)
    write_json(out / "results.json", results)  # last: its presence marks a finished experiment
