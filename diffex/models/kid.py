"""Kernel Inception Distance on a classifier's penultimate features (KID, Binkowski et al. 2018).

KID is the squared maximum mean discrepancy between two feature sets under the cubic polynomial
kernel k(x, y) = (x . y / d + 1)^3, estimated without bias. diffex computes it on the penultimate
features of the classifier being explained (the features its decision is made from), not on an
Inception network: no weights are downloaded, and the distance is measured in the space that
matters for the explanation. The estimate is averaged over random subsets; its spread over the
subsets says how stable it is. An unbiased estimate can be slightly negative when the two sets
come from the same distribution.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
>>> abs(mmd2_unbiased(a, b)) < 0.05                 # same distribution: about 0
True
>>> mmd2_unbiased(a, b + 1.0) > 0.5                 # shifted: clearly positive
True
"""

from __future__ import annotations

import numpy as np
import torch


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, d), (M, d) -> (N, M) kernel matrix (x . y / d + 1)^3, in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between feature sets x (m, d) and y (n, d) under :func:`polynomial_kernel`."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {m} and {n}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kid(x: np.ndarray, y: np.ndarray, n_subsets: int = 20, subset_size: int = 100, seed: int = 0) -> dict:
    """KID of feature sets x and y: mean and sd of :func:`mmd2_unbiased` over random subsets.

    Each subset draws ``min(subset_size, len(x), len(y))`` rows of each set without replacement.
    """
    rng = np.random.default_rng(seed)
    s = min(subset_size, len(x), len(y))
    values = [mmd2_unbiased(x[rng.choice(len(x), s, replace=False)], y[rng.choice(len(y), s, replace=False)])
              for _ in range(n_subsets)]
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if n_subsets > 1 else 0.0,
            "n_subsets": n_subsets, "subset_size": s}


def kid_excess(real: np.ndarray, edited: np.ndarray, reference: np.ndarray, n_subsets: int = 50,
               subset_size: int | None = None, seed: int = 0) -> dict:
    """KID of edited images and of their unedited references against real images, and the edits' excess, paired.

    ``edited[i]`` and ``reference[i]`` are the same image with and without the edit, (n, d) features each; ``real``
    (N, d). Every subset draws ``s`` real rows and ``s`` image indices without replacement (``s``: ``subset_size``,
    at most min(N, n); default half of min(N, n), so that the draws vary on both sides), and the same draw scores both
    sets: the excess KID(real, edited) - KID(real, reference) cancels the noise the two share. ``stable`` says whether
    the subsets agree on the excess: |mean| at least twice its sd over the subsets, which must differ (a rule of
    thumb: the subsets overlap, so their sd is smaller than that of fresh samples). ``real_halves`` is :func:`kid`
    between two disjoint random halves of the real rows (subsets of ``s`` rows where a half has them): the size of
    a KID between real images alone.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> real, ref = rng.normal(size=(120, 8)), rng.normal(size=(60, 8))
    >>> out = kid_excess(real, ref + 1.0, ref)                    # shifted edits: a clear, stable excess
    >>> out["stable"], out["excess"]["mean"] > 0.5, out["subset_size"]
    (True, True, 30)
    >>> kid_excess(real, ref, ref)["excess"]["mean"]              # no edit: no excess, exactly
    0.0
    """
    rng = np.random.default_rng(seed)
    if len(edited) != len(reference):
        raise ValueError(f"edited and reference sets must pair up, got {len(edited)} and {len(reference)} rows")
    most = min(len(real), len(edited))
    s = min(subset_size, most) if subset_size is not None else most // 2
    if s < 2:
        raise ValueError(f"KID needs subsets of at least 2 rows; got {len(real)} real and {len(edited)} edited rows")
    rows = []
    for _ in range(n_subsets):
        r, i = rng.choice(len(real), s, replace=False), rng.choice(len(edited), s, replace=False)
        rows.append((mmd2_unbiased(real[r], edited[i]), mmd2_unbiased(real[r], reference[i])))
    e, f = np.array(rows).T  # (n_subsets,) each
    stats = {name: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if n_subsets > 1 else 0.0}
             for name, v in (("edited", e), ("reference", f), ("excess", e - f))}
    resampled = n_subsets > 1 and (s < len(real) or s < len(edited))
    ex = stats["excess"]
    stable = resampled and ex["sd"] > 1e-9 * abs(ex["mean"]) and abs(ex["mean"]) >= 2 * ex["sd"]  # sd above rounding
    half, perm = len(real) // 2, rng.permutation(len(real))
    halves = kid(real[perm[:half]], real[perm[half : 2 * half]], n_subsets, min(s, half), seed) if half >= 2 else None
    return {**stats, "real_halves": halves, "n_subsets": n_subsets, "subset_size": s, "stable": bool(stable)}


def _last_linear(module: torch.nn.Module) -> torch.nn.Linear | None:
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    return linears[-1] if linears else None


@torch.no_grad()
def penultimate_features(clf, raw: np.ndarray, batch_size: int = 256) -> np.ndarray | None:
    """The classifier's features before its last linear layer, (N, d) float64, for raw images (N, C, H, W)
    at its size; ``None`` when the classifier has no linear layer to hook (e.g. a TorchScript file)."""
    head = _last_linear(clf.module) if isinstance(clf.module, torch.nn.Module) else None
    if head is None or isinstance(clf.module, torch.jit.ScriptModule):
        return None
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach().float().cpu()))
    try:
        for chunk in torch.as_tensor(np.asarray(raw, np.float32)).split(batch_size):
            clf(clf.normalize(chunk.to(clf.device)))
    finally:
        hook.remove()
    return torch.cat(captured).flatten(1).double().numpy()  # (N, d)
