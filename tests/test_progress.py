"""Progress reporting in batch jobs (stderr not a terminal): plain log lines, not a live bar."""

from __future__ import annotations

import logging

import diffex.progress as progress_mod


def test_logged_progress_reports_deciles(monkeypatch, caplog):
    clock = iter(range(0, 1000, 10))  # every call to monotonic() advances 10 s
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: next(clock))
    bar = progress_mod._LoggedProgress(enabled=True)
    with caplog.at_level(logging.INFO, logger="diffex.progress"):
        task = bar.add_task("training", total=20, status="")
        for _ in range(20):
            bar.advance(task)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("training: 1/20") and lines[-1].startswith("training: 20/20")
    assert len(lines) == 11  # one per decile, not one per step


def test_quiet_when_disabled_or_quick(caplog):
    with caplog.at_level(logging.INFO, logger="diffex.progress"):
        for enabled in (False, True):
            bar = progress_mod._LoggedProgress(enabled=enabled)
            t = bar.add_task("reading", total=3)
            for _ in range(3):
                bar.advance(t)
    assert caplog.records == []  # disabled, or finished within 5 s
