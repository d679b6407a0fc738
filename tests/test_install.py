"""The package as a user installs it (issue 27): a wheel, installed non-editable into a fresh
venv beside Hugging Face's `evaluate`, driven from another folder through the one console
script `unsuperpose`.

The venv (torch, the dependencies, HF's `evaluate`) is cached in `.venv-wheel/` (gitignored;
UNSUPERPOSE_WHEEL_VENV moves it), keyed on what it was built with; the wheel is built from a
copy of the working tree and reinstalled on every run."""
from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import unsuperpose
from unsuperpose.data import files

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("UNSUPERPOSE_WHEEL_VENV", ROOT / ".venv-wheel"))
TORCH_PIN = "torch==2.13.0"  # the CPU wheel on this machine's disk, before anything asks for torch
HF_EVALUATE_PIN = "evaluate==0.4.6"
KEY_FILE = "unsuperpose-test-key.json"
# what a checkout holds that is no part of its source (a stale build/ would leak into the wheel)
TOP_LEVEL_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv*", "runs", "build", "dist")
NOT_SOURCE = shutil.ignore_patterns("*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
                                    "*.tmp-*")


def _not_source(folder, names):
    top = TOP_LEVEL_NOT_SOURCE(folder, names) if Path(folder) == ROOT else set()
    return top | NOT_SOURCE(folder, names)
GENERIC_NAMES = ("data", "models", "generate", "sae", "evaluate", "sweep")

pytestmark = pytest.mark.slow


def _run(args, *, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (f"{' '.join(map(str, args))} exited {done.returncode}\n"
                                  f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}")
    return done


def _venv_key() -> dict:
    """What the cached venv was built from: a change in any of it builds a new one."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    requires = sorted(line.strip() for line in parser["options"]["install_requires"].splitlines()
                      if line.strip())
    return {"python": sys.version.split()[0], "base": sys.base_prefix, "torch": TORCH_PIN,
            "evaluate": HF_EVALUATE_PIN, "install_requires": requires}


def _venv_with(wheel: Path) -> Path:
    """VENV's python, with `wheel` freshly installed (non-editable) beside HF's evaluate."""
    python, key_file, key = VENV / "bin" / "python", VENV / KEY_FILE, _venv_key()
    cached = python.exists() and key_file.exists() and json.loads(key_file.read_text()) == key
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if cached:
        _run(pip + ["--force-reinstall", "--no-deps", wheel], cwd=VENV)
    else:
        shutil.rmtree(VENV, ignore_errors=True)
        _run([sys.executable, "-m", "venv", VENV], cwd=ROOT)
        _run(pip + [TORCH_PIN], cwd=VENV)  # first, so no requirement pulls a CUDA build
        _run(pip + [wheel, HF_EVALUATE_PIN], cwd=VENV)
        key_file.write_text(json.dumps(key))
    return python


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the working tree (so nothing is written into it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=_not_source)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
          "-w", tmp / "dist", source], cwd=tmp)
    (built,) = (tmp / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """(the venv's python, an environment running it, a working folder outside the checkout)."""
    python = _venv_with(wheel)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(VENV),
               PYTHONNOUSERSITE="1")
    work = tmp_path_factory.mktemp("elsewhere")
    return python, env, work


def test_the_wheel_holds_one_top_level_package_and_one_console_script(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = f"unsuperpose-{unsuperpose.__version__}.dist-info"
        print("wheel:", wheel.name, f"({len(names)} files)")
        print("top-level names:", sorted({n.split("/")[0] for n in names}))
        assert {n.split("/")[0] for n in names} == {"unsuperpose", dist_info}
        entry_points = configparser.ConfigParser()
        entry_points.read_string(z.read(f"{dist_info}/entry_points.txt").decode())
    assert dict(entry_points["console_scripts"]) == {"unsuperpose": "unsuperpose.cli:main"}
    for stage in ("data", "models", "generate", "generate/paper", "sae", "evaluate",
                  "evaluate/sweep"):
        assert f"unsuperpose/{stage}/__init__.py" in names, stage
    assert "unsuperpose/generate/paper/cli.py" in names
    # package data: the C kernels sae/omp_native.py compiles (without them it falls back to
    # Python silently)
    kernels = sorted(f.name for f in (ROOT / "sae" / "omp_kernels").glob("*.c"))
    assert kernels and all(f"unsuperpose/sae/omp_kernels/{k}" in names for k in kernels), kernels


def test_the_installed_pipeline_runs_from_another_folder_beside_hf_evaluate(installed):
    python, env, work = installed
    exe = python.parent / "unsuperpose"
    run = work / "run"
    # not the checkout's code: the venv's own, non-editable copy
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=work, env=env).stdout.strip())
    assert _run([exe, "--version"], cwd=work, env=env).stdout.strip().endswith(unsuperpose.__version__)
    _run([exe, "generate", "--run-dir", run, "--n-features", 12, "--d-hidden", 4,
          "--feature-probability", "0.2", "--steps", 200, "--batch-size", 256, "--rows", 3000,
          "--rows-per-shard", 2000, "--heldout-rows", 1000, "--device", "cpu", "--threads", 1],
         cwd=work, env=env)
    _run([exe, "sae", "--run-dir", run, "--methods", "topk,mod", "--n-epochs", 2, "--n-iter", 3,
          "--device", "cpu", "--threads", 1], cwd=work, env=env)
    evaluated = _run([exe, "evaluate", "--run-dir", run, "--max-rows", 500, "--threads", 1],
                     cwd=work, env=env)
    report = files.evaluate_dir(run) / files.REPORT_FILE
    assert report.is_file(), evaluated.stdout
    text = report.read_text()
    assert "| topk" in text and "| mod" in text, text[:2000]
    paper = _run([exe, "paper", "--help"], cwd=work, env=env)
    assert "Usage: unsuperpose paper" in paper.stdout
    print(f"generate -> sae -> evaluate -> paper --help: ok, {report} ({len(text)} chars)")

    # HF's evaluate and ours side by side, with a folder named `data` in the current
    # directory (first on sys.path for `python -c`) that must not shadow ours
    (work / "data").mkdir()
    (work / "data" / "__init__.py").write_text("raise ImportError('a user folder named data')\n")
    probe = _run([python, "-c", (
        "import json, evaluate, unsuperpose, unsuperpose.evaluate, unsuperpose.data.files;"
        "from unsuperpose.evaluate.cli import main;"
        "print(json.dumps({'hf': evaluate.__file__, 'load': callable(getattr(evaluate, 'load', None)),"
        " 'ours': unsuperpose.__file__, 'our_evaluate': unsuperpose.evaluate.__file__,"
        " 'data': unsuperpose.data.files.__file__}))")], cwd=work, env=env)
    found = json.loads(probe.stdout)
    print("imports:", json.dumps(found, indent=1))
    assert Path(found["hf"]) == site / "evaluate" / "__init__.py" and found["load"]
    assert Path(found["ours"]) == site / "unsuperpose" / "__init__.py"
    assert Path(found["our_evaluate"]) == site / "unsuperpose" / "evaluate" / "__init__.py"
    assert Path(found["data"]) == site / "unsuperpose" / "data" / "files.py"
    # the OMP kernel compiles from the installed C files (a fresh cache, so nothing built before)
    kernel = _run([python, "-c", "from unsuperpose.sae.omp_native import native_lib, _KERNEL_DIR;"
                   "assert native_lib() is not None, _KERNEL_DIR; print(_KERNEL_DIR)"], cwd=work,
                  env={**env, "XDG_CACHE_HOME": str(work / "cache")})
    assert Path(kernel.stdout.strip()) == site / "unsuperpose" / "sae" / "omp_kernels"
    assert list((work / "cache" / "unsuperpose").glob("omp_*.so"))
    # nothing generic beside it: no top-level stage package (HF's evaluate is the one there),
    # no generic console script
    assert not [n for n in GENERIC_NAMES if n != "evaluate" and (site / n).exists()]
    assert not [n for n in GENERIC_NAMES if (python.parent / n).exists()]
    assert not (site / "evaluate" / "config.py").exists() or "unsuperpose" not in (
        site / "evaluate" / "config.py").read_text()
