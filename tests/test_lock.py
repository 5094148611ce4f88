"""One process per output folder: a second explain is refused, and a killed holder leaves no stuck lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from diffex.cli import app
from diffex.errors import DiffexError
from diffex.fsutil import folder_lock

HOLD = """
import sys, time
from diffex.fsutil import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """A separate process holding the lock on tmp_path/exp until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "exp")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_second_process_refused_then_free_after_sigkill(tmp_path, holder):
    with pytest.raises(DiffexError, match=rf"{tmp_path / 'exp'}: in use by diffex \(pid {holder.pid} on "):
        with folder_lock(tmp_path / "exp"):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with folder_lock(tmp_path / "exp"):  # the dead holder's lock is gone
        pass


def test_lock_is_released_on_exceptions(tmp_path):
    with pytest.raises(RuntimeError), folder_lock(tmp_path / "exp"):
        raise RuntimeError
    with folder_lock(tmp_path / "exp"):
        pass


def test_output_folder_that_is_a_file(tmp_path):
    (tmp_path / "exp").write_text("x")
    with pytest.raises(DiffexError, match="is a file, not a folder"):
        with folder_lock(tmp_path / "exp"):
            pass


def test_explain_refused_while_another_runs(tiny_classifier, tiny_diffusion, cells, tmp_path, holder):
    res = CliRunner().invoke(app, ["explain", "--classifier", str(tiny_classifier), "--diffusion", str(tiny_diffusion),
                                   "--images", str(cells), "--out", str(tmp_path / "exp"), "--device", "cpu", "-q"])
    assert res.exit_code == 2 and f"{tmp_path / 'exp'}: in use by diffex (pid {holder.pid}" in res.stderr
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == [".diffex.lock"]  # refused before writing anything
