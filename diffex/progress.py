"""Progress bars (rich, on stderr) and the logging setup shared by the CLI.

On a terminal a live bar is drawn; in a batch job (stderr not a terminal) progress is logged as
plain lines every 10 % or every minute instead, so cluster logs show how far a run got.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
log = logging.getLogger("diffex.progress")

# Everything human-facing goes to stderr; stdout is kept for machine output.
stderr_console = Console(stderr=True)


class _LoggedProgress:
    """The part of rich's Progress API diffex uses, reporting through logging."""

    def __init__(self, enabled: bool, every_s: float = 60.0):
        self.enabled = enabled
        self.every_s = every_s
        self.tasks: dict[int, dict] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        tid = len(self.tasks)
        self.tasks[tid] = {"description": description, "total": total, "completed": completed, "decile": -1,
                           "t": time.monotonic(), "t0": time.monotonic(), "status": fields.get("status", "")}
        return tid

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def update(self, task: int, completed: float | None = None, advance: float | None = None, **fields) -> None:
        t = self.tasks[task]
        if completed is not None:
            t["completed"] = completed
        if advance is not None:
            t["completed"] += advance
        t["status"] = fields.get("status", t["status"])
        if not self.enabled:
            return
        now = time.monotonic()
        decile = int(10 * t["completed"] / t["total"]) if t["total"] else -1
        # Quiet for quick loops: the first line comes after 5 s.
        if now - t["t0"] >= 5 and (decile > t["decile"] or now - t["t"] >= self.every_s):
            t["decile"], t["t"] = decile, now
            total = f"/{t['total']:g}" if t["total"] else ""
            log.info("%s: %g%s (%.0f s) %s", t["description"], t["completed"], total, now - t["t0"], t["status"])


def make_progress(enabled: bool = True):
    """A rich Progress on stderr (count, elapsed, remaining), or logged lines when not a terminal."""
    if not stderr_console.is_terminal:
        return _LoggedProgress(enabled)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=stderr_console,
        disable=not enabled,
        transient=False,
    )


def progress(items: Iterable[T], description: str, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar on stderr."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with make_progress(enabled) as bar:
        task = bar.add_task(description, total=total, status="")
        for item in items:
            yield item
            bar.advance(task)


def setup_logging(verbose: int = 0) -> None:
    """Log to stderr through rich; ``verbose`` 0 = INFO, 1+ = DEBUG, -1 = WARNING."""
    level = logging.DEBUG if verbose > 0 else logging.WARNING if verbose < 0 else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=stderr_console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    for noisy in ("PIL", "matplotlib", "urllib3", "httpx", "tifffile", "diffusers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # tifffile logs an ERROR of its own for a corrupt file, before diffex raises one naming the file
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    logging.captureWarnings(True)
