"""Progress as a user sees it: a terminal, a log file, another shell, the dashboard."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import run_cli

from daskbatch.progress import Progress, RateWindow

SLOW = """\
kernel = "daskbatch.testing:slow_square"
store = "slow.zarr"
cluster = "{cluster}"
workers = 2
chunk_size = 10
[constants]
delay = {delay}
[space]
type = "grid"
axes = {{x = {{linspace = [0, 1, {n}]}}}}
"""


def _spec(tmp_path: Path, cluster="serial", delay=0.01, n=300) -> Path:
    spec = tmp_path / "slow.toml"
    spec.write_text(SLOW.format(cluster=cluster, delay=delay, n=n))
    return spec


def _exe() -> str:
    return str(Path(sys.executable).with_name("daskbatch"))


def test_rate_window_follows_the_current_speed_not_the_start():
    w = RateWindow(seconds=10)
    w.add(0.0, 0)
    w.add(1.0, 10)  # a slow start
    for t in range(2, 30):
        w.add(float(t), 10 + (t - 1) * 100)
    assert w.rate() == pytest.approx(100.0)
    assert w.eta(1000) == pytest.approx(10.0)


@pytest.mark.slow
def test_plain_lines_when_not_a_terminal(tmp_path):
    """A cluster job's log: whole lines at an interval, never a carriage return."""
    r = run_cli("run", str(_spec(tmp_path)), env={"DASKBATCH_PROGRESS_INTERVAL": "0.3"})
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    lines = re.findall(
        r"daskbatch: ([\d,]+) / 300 samples \(([\d.]+)%\), ([\d,]+) samples/s, ETA ([\d:?]+), 0 failed",
        r.stderr,
    )
    assert len(lines) >= 3, r.stderr
    done = [int(d.replace(",", "")) for d, *_ in lines]
    assert done == sorted(done) and done[-1] == 300
    assert lines[-1][1] == "100.0"


@pytest.mark.slow
def test_the_interval_is_a_dask_setting(tmp_path):
    """``daskbatch.progress.interval`` from dask's environment variable, in the real
    command; and ``dask.config.set`` around a Progress made in this process."""
    import io

    import dask

    r = run_cli("run", str(_spec(tmp_path)), env={"DASK_DASKBATCH__PROGRESS__INTERVAL": "0.3"})
    assert r.returncode == 0, r.stderr
    lines = re.findall(r"daskbatch: ([\d,]+) / 300 samples", r.stderr)
    assert len(lines) >= 3, r.stderr
    with dask.config.set({"daskbatch.progress.interval": 0.0}):
        p = Progress(4, file=io.StringIO())
    for _ in range(4):
        p.update(1)
    p.close()
    assert p.interval == 0.0
    assert p.file.getvalue().count("daskbatch: ") == 5  # one line per update, one at the end


@pytest.mark.slow
@pytest.mark.parametrize("size", [(24, 100), (0, 0)], ids=["sized", "unsized"])
def test_one_redrawn_line_in_a_terminal(tmp_path, size):
    """A terminal of 100 columns, and one that reports no size at all (as `script`
    and some batch systems' pseudo-terminals do): a bar redrawn on one line."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    proc = subprocess.Popen(
        [_exe(), "run", str(_spec(tmp_path, n=100))], stdout=follower, stderr=follower, cwd=tmp_path
    )
    os.close(follower)
    out = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    os.close(leader)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "\r" in text and "100/100" in text and "sample/s" in text
    assert "failed=0" in text


@pytest.mark.slow
def test_status_from_another_shell_shows_a_running_sweep_with_rate_and_eta(tmp_path, cli):
    """The sweep runs in a process of its own; `status` reads it from this one (the real
    `status` command is tested in test_cli.py), often enough to catch it running."""
    spec = _spec(tmp_path, delay=0.02, n=200)
    proc = subprocess.Popen(
        [_exe(), "run", str(spec), "--no-progress"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        seen = ""
        deadline = time.time() + 60
        while time.time() < deadline:
            if (tmp_path / "slow.zarr" / "zarr.json").exists():
                try:
                    r = cli("status", str(tmp_path / "slow.zarr"))
                except Exception:  # a store still being made: as a failed command, try again
                    r = None
                if r is not None and "samples/s, ETA" in r.stdout:
                    seen = r.stdout
                    break
            time.sleep(0.1)
        assert f"running now (host {os.uname().nodename}, pid {proc.pid}" in seen, seen
        assert re.search(r"[\d,]+ samples/s, ETA \d+:\d\d:\d\d", seen), seen
        assert re.search(r"samples:  200 total: \d+ ok", seen), seen
    finally:
        proc.wait(timeout=120)
    r = cli("status", str(tmp_path / "slow.zarr"))
    assert "state:    complete" in r.stdout


@pytest.mark.slow
def test_dashboard_link_is_printed_and_serves(tmp_path):
    spec = _spec(tmp_path, cluster="local", delay=0.02, n=600)
    proc = subprocess.Popen(
        [_exe(), "run", str(spec)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        m = re.match(r"daskbatch: Dask dashboard at (http://\S+)", first)
        assert m, first
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/[\w-]{32}/status", m.group(1))
        with urllib.request.urlopen(m.group(1), timeout=20) as page:
            assert page.status == 200
            assert b"Dask" in page.read()
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0


def test_disabled_progress_still_keeps_figures():
    p = Progress(100, initial=20, enabled=False)
    p.update(30, 2)
    assert (p.done, p.failed) == (50, 2)
    assert p.line().startswith("daskbatch: 50 / 100 samples (50.0%)")
