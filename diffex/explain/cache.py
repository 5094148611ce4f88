"""Stage artifacts in ``OUT/cache/``, each keyed by the digests of its inputs.

A stage stores its result in one file with a :class:`StageKey`: the digest of every input that
matters (model checksums, image digests, the settings the stage reads, the keys of the stages it
builds on). A rerun reuses the file only when the key is the same; otherwise it logs which inputs
changed and recomputes, so that a resumed run never serves a result made from other inputs.

Example
-------
>>> import tempfile, torch
>>> cache = Path(tempfile.mkdtemp())
>>> key = StageKey("demo", {"images": digest("a.tif"), "steps": "20"})
>>> t, meta = cached(cache, key, lambda: ({"x": torch.ones(2)}, {"n": 2}))
>>> cached(cache, key, lambda: 1 / 0)[1]             # served from the file, not recomputed
{'n': 2}
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from diffex.errors import DiffexError
from diffex.fsutil import atomic_file, sha256_file

log = logging.getLogger(__name__)


def digest(*parts) -> str:
    """Short SHA-256 of the parts' text (24 hex digits)."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:24]


def model_digest(path: str | Path) -> str:
    """Digest of a model: its checksums file when it has one, else every file's SHA-256 (a single
    file's JSON sidecar included)."""
    path = Path(path)
    if path.is_file():
        sidecar = path.with_suffix(".json")
        return digest(sha256_file(path), sha256_file(sidecar) if sidecar.is_file() else "")
    sums = path / "checksums.json"
    if sums.exists():
        return hashlib.sha256(sums.read_bytes()).hexdigest()
    return digest(*(sha256_file(p) for p in sorted(q for q in path.rglob("*") if q.is_file())))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Write tensors and a JSON-able ``meta`` to a safetensors file, atomically."""
    from safetensors.torch import save

    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata={"json": json.dumps(meta or {})})
    with atomic_file(path, "wb") as fh:
        fh.write(blob)


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and meta written by :func:`save_tensors`; an unreadable file is an error naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("json", "{}"))
            return {k: fh.get_tensor(k) for k in fh.keys()}, meta
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise DiffexError(f"{path}: unreadable cache file ({exc}); delete it and rerun") from exc


@dataclass(frozen=True)
class StageKey:
    """A stage's name and the digests of its inputs, by input name."""

    stage: str
    inputs: dict[str, str]

    @property
    def digest(self) -> str:
        return digest(self.stage, *(f"{k}={v}" for k, v in sorted(self.inputs.items())))

    def changed(self, stored_inputs: dict[str, str]) -> list[str]:
        """Names of the inputs that differ from ``stored_inputs``."""
        names = sorted(set(self.inputs) | set(stored_inputs))
        return [n for n in names if self.inputs.get(n) != stored_inputs.get(n)]


def cached(cache: Path, key: StageKey, compute: Callable[[], tuple[dict, dict]]) -> tuple[dict, dict]:
    """``compute()`` -> (tensors, meta), stored as ``cache/<stage>.safetensors`` under ``key``.

    The stored result is returned when its key equals ``key``; otherwise the stage is recomputed
    and a log line names the inputs that changed.
    """
    path = cache / f"{key.stage}.safetensors"
    if path.exists():
        tensors, stored = load_tensors(path)
        if stored.get("key") == key.digest:
            return tensors, stored.get("meta", {})
        log.info("%s: recomputing; its inputs changed since the cached result (%s)", key.stage,
                 ", ".join(key.changed(stored.get("inputs", {}))) or "format")
    tensors, meta = compute()
    save_tensors(path, tensors, {"key": key.digest, "inputs": key.inputs, "meta": meta})
    return tensors, meta
