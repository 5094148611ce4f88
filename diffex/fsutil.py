"""Writing results so that nothing is ever half-written, and hashing files.

Every output of diffex is written under a temporary name beside its destination and renamed into
place when complete, so an interrupted run leaves either the old result or the new one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from diffex.errors import DiffexError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes.

    Example
    -------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
    >>> sha256_file(p)[:12]
    'ba7816bf8f01'
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


NO_ROOM = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def _writing(dest: Path) -> Iterator[None]:
    """Turn a full disk, a read-only or forbidden destination into a DiffexError naming ``dest``."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_ROOM:
            raise
        raise DiffexError(f"{dest}: cannot write: {exc.strerror or exc}") from exc


def refuse_overwrite(path: Path, force: bool, what: str = "result") -> None:
    """Raise unless ``path`` is absent or ``force`` is set."""
    if path.exists() and not force:
        raise DiffexError(f"{path}: a finished {what} exists here; pass --force to overwrite it")


@contextlib.contextmanager
def atomic_dir(dest: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dest``; on success it replaces ``dest``.

    On an exception the temporary folder is removed and ``dest`` is untouched.

    Example
    -------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "out"
    >>> with atomic_dir(d) as tmp:
    ...     _ = (tmp / "a.txt").write_text("done")
    >>> (d / "a.txt").read_text()
    'done'
    """
    dest = Path(dest)
    refuse_overwrite(dest, force)
    with _writing(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; results should be shareable
    try:
        with _writing(dest):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        if old.exists():
            shutil.rmtree(old)
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old)
    else:
        tmp.rename(dest)


@contextlib.contextmanager
def atomic_file(dest: str | Path, mode: str = "w") -> Iterator:
    """Open a temporary file beside ``dest`` for writing; rename it to ``dest`` on success."""
    dest = Path(dest)
    with _writing(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with _writing(dest), os.fdopen(fd, mode) as fh:
            yield fh
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(dest: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_file(dest) as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")


def read_json(path: str | Path) -> dict:
    """Read a JSON object; a missing file, invalid JSON or a non-object is a DiffexError naming the file."""
    path = Path(path)
    if not path.exists():
        raise DiffexError(f"{path}: missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DiffexError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DiffexError(f"{path}: expected a JSON object")
    return data


def write_checksums(folder: Path, name: str = "checksums.json") -> dict[str, str]:
    """Record the SHA-256 of every file in ``folder`` (recursively, except ``name``)."""
    sums = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != name and not p.name.startswith(".")
    }
    write_json(folder / name, sums)
    return sums


def verify_checksums(folder: Path, name: str = "checksums.json") -> None:
    """Raise if a file listed in ``folder/name`` is missing or differs. No list: nothing to check."""
    listing = folder / name
    if not listing.exists():
        return
    try:
        sums = json.loads(listing.read_text())
    except json.JSONDecodeError as exc:
        raise DiffexError(f"{listing}: not valid JSON ({exc})") from exc
    for rel, expected in sums.items():
        p = folder / rel
        if not p.exists():
            raise DiffexError(f"{p}: listed in {listing} but missing")
        if sha256_file(p) != expected:
            raise DiffexError(f"{p}: checksum differs from {listing}; the file was changed or damaged")


LOCK_NAME = ".diffex.lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) while the block runs.

    A second process that asks for the same folder is refused at once with a
    :class:`~diffex.errors.DiffexError` naming the holder. The lock is an ``flock`` on
    ``folder/.diffex.lock``: the operating system releases it when the holder exits or is killed,
    so a dead process never leaves it stuck. The (then empty) file stays, which is harmless; a
folder this call created and in which nothing else was written is removed again.

    Example
    -------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "exp"
    >>> with folder_lock(d):
    ...     _ = (d / "result.txt").write_text("done")
    >>> (d / ".diffex.lock").exists()
    True
    """
    import fcntl
    import socket
    import time

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DiffexError(f"{folder}: is a file, not a folder")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fh = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if not isinstance(exc, BlockingIOError):
            fh.close()
            raise DiffexError(f"{folder}: cannot lock ({exc.strerror}); the file system may not support locks") from exc
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise DiffexError(f"{folder}: in use by {holder}; wait for it to finish, or choose another output folder") from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"diffex (pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})")
        fh.flush()
        yield path
    finally:
        fh.truncate(0)
        if created and os.listdir(folder) == [LOCK_NAME]:  # refused before writing anything: leave no folder behind
            with contextlib.suppress(OSError):
                path.unlink()
                folder.rmdir()
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
