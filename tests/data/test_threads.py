"""data/threads.py: the thread rule of the commands and the estimators (issue 28)."""
import os
import subprocess
import sys

import click
import pytest
import torch

from unsuperpose.data import threads
from unsuperpose.data.cli import set_cpu_threads
from unsuperpose.sae import MOD, TopKSAE


@pytest.fixture
def fresh(monkeypatch):
    """The state of a process where nobody chose a count: torch at its start count (2 here,
    whatever the machine has), unsuperpose having set nothing; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    for key in threads.THREADS_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(threads, "_state", {"default": 2, "ours": None, "explicit": False,
                                            "depth": 0, "last": None})
    monkeypatch.setattr(threads, "free_cores", lambda: 2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("AUTO", "auto"), ("3", 3), (1, 1)])
def test_parse_threads(value, expected):
    assert threads.parse_threads(value) == expected


@pytest.mark.parametrize("value, match", [("0", r"\[1, 4096\]"), ("-2", r"\[1, 4096\]"),
                                          ("x", "auto or an integer"), (1.5, "auto or an integer"),
                                          ("99999999999999999999", r"\[1, 4096\]")])
def test_parse_threads_refuses(value, match):
    with pytest.raises(ValueError, match=match):
        threads.parse_threads(value)


def test_small_or_unknown_problems_get_one_thread(monkeypatch):
    monkeypatch.setattr(threads, "free_cores", lambda: 8)
    assert threads.choose_threads(None) == 1
    assert threads.choose_threads(threads.SMALL_WORK / 2) == 1
    assert threads.choose_threads(threads.SMALL_WORK * 10) == 8


def test_free_cores_leave_out_other_load(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    for load, free in [(0.0, 4), (1.4, 3), (2.6, 1), (9.0, 1)]:
        monkeypatch.setattr(threads, "other_load", lambda load=load: load)
        assert threads.free_cores() == free


def test_fit_threads_chooses_and_restores(fresh):
    with threads.fit_threads(1.0) as n:
        assert n == torch.get_num_threads() == 1
        with threads.fit_threads(threads.SMALL_WORK * 10) as inner:  # nested: the outer choice
            assert inner == 1
    assert torch.get_num_threads() == 2
    with threads.fit_threads(threads.SMALL_WORK * 10) as n:
        assert n == 2
    assert threads.last_fit_threads() == 2


def test_a_users_count_is_kept(fresh, monkeypatch):
    torch.set_num_threads(3)  # torch.set_num_threads by the user
    with threads.fit_threads(1.0) as n:
        assert n == 3
    assert torch.get_num_threads() == 3
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # or the environment's
    with threads.fit_threads(1.0) as n:
        assert n == 2


def test_explicit_command_count_is_obeyed_exactly(fresh):
    assert set_cpu_threads(3) == 3
    with threads.fit_threads(1.0) as n:  # a small fit would get 1 under auto
        assert n == 3
    assert torch.get_num_threads() == 3


def test_auto_command_count_lets_fits_choose(fresh):
    assert set_cpu_threads("auto", work=None) == 1
    with threads.fit_threads(threads.SMALL_WORK * 10) as n:
        assert n == 2
    assert torch.get_num_threads() == 1


def test_set_cpu_threads_refuses_by_option():
    with pytest.raises(click.BadParameter, match="4096"):
        set_cpu_threads(0)


def test_estimators_fit_and_transform_under_the_rule(fresh):
    seen = []
    H = torch.randn(256, 8)
    sae = TopKSAE(n_components=16, k=2, batch_size=64, n_epochs=1)
    sae.fit(H, progress=lambda *_: seen.append(torch.get_num_threads()))
    assert set(seen) == {1} and torch.get_num_threads() == 2
    assert sae._thread_work(H) == 64 * 8 * 16  # batch x d x n_components
    mod = MOD(n_components=16, k=2, n_iter=2)
    mod.fit(H, progress=lambda *_: seen.append(torch.get_num_threads()))
    assert mod._thread_work(H) == 256 * 8 * 16
    assert set(seen) == {1} and torch.get_num_threads() == 2
    assert TopKSAE.fit.__doc__ and "H:" in TopKSAE.fit.__doc__  # the wrapper keeps the docs


def _env_after_import(env: dict) -> str:
    code = "import os, unsuperpose, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.mark.slow
def test_openmp_waits_passively_unless_the_user_says():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _env_after_import(env) == "PASSIVE"
    assert _env_after_import({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
