"""click_progress away from a terminal (issue 28, item 2): a log shows a long job's progress."""
import pytest
import re
import shutil
import time

import click
from click.testing import CliRunner

from unsuperpose.data import cli as data_cli
from unsuperpose.data.cli import click_progress


def _run(job) -> list[str]:
    """The output lines of `job()` inside a click command run by CliRunner (stdout not a tty)."""
    result = CliRunner().invoke(click.command()(job), [])
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def test_a_line_every_interval_with_text_and_elapsed():
    now = [0.0]

    def job():
        with click_progress("00-p0.3 topk n=80", 100, interval=30, clock=lambda: now[0]) as bar:
            for step in range(100):
                now[0] += 4.0  # 4 s a step on the fake clock: 400 s in all
                bar.update(1, f"FVU {1 / (step + 1):.3g}")

    lines = _run(job)
    assert lines[0] == "00-p0.3 topk n=80"
    progress = lines[1:-1]
    assert len(progress) == 400 // 32  # a line each time 30 s passed: every 8 steps (32 s)
    assert progress[0] == "  00-p0.3 topk n=80: 8/100 (8%), FVU 0.125, 32 s elapsed, ~6 min 08 s left"
    assert progress[-1].startswith("  00-p0.3 topk n=80: 96/100 (96%), FVU 0.0104, 6 min 24 s")
    assert lines[-1] == "  00-p0.3 topk n=80: done, 100/100, FVU 0.01, 6 min 40 s elapsed"


def test_a_short_job_prints_only_its_label():
    lines = _run(lambda: _steps(click_progress("scoring dictionaries", 5, clock=lambda: 0.0), 5))
    assert lines == ["scoring dictionaries"]


def test_a_long_step_still_shows_a_line():
    # the timer thread: one step that outlasts the interval (0.05 s) still gets lines
    def job():
        with click_progress("k-SVD iteration", 3, interval=0.05) as bar:
            time.sleep(0.3)
            bar.update(1, "FVU 0.5")

    lines = _run(job)
    assert lines[0] == "k-SVD iteration"
    assert any(line.startswith("  k-SVD iteration: 0/3 (0%), ") and "elapsed" in line
               for line in lines[1:])
    assert lines[-1].startswith("  k-SVD iteration: done, 1/3, FVU 0.5, ")


@pytest.mark.slow
def test_the_sae_stage_logs_each_fit_through_a_pipe(tiny_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    monkeypatch.setattr(data_cli, "LOG_INTERVAL", 0.0)  # a line at every update
    from unsuperpose.sae.cli import main

    result = CliRunner().invoke(main, ["--run-dir", str(run), "--instance", "00-p0.2",
                                       "--methods", "topk,mod", "--n-epochs", "2", "--n-iter", "2",
                                       "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    topk = [line for line in lines if re.match(r"  00-p0\.2 topk +n=\d+: \d+/\d+ \(", line)]
    assert any("FVU" in line for line in topk) and all("elapsed" in line for line in topk)
    assert any(re.match(r"  00-p0\.2 topk +n=\d+: done, ", line) for line in lines)
    assert any(re.match(r"  00-p0\.2 mod +n=\d+: 2/2 \(100%\), FVU ", line) for line in lines)
    assert any(line.startswith("  00-p0.2 topk: ") and " s, FVU " in line for line in lines)


def _steps(progress, n):
    with progress as bar:
        for _ in range(n):
            bar.update(1)
