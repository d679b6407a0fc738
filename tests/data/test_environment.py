"""Device resolution shared by the stages."""
import pytest
import torch

from unsuperpose.data.environment import resolve_device


def test_auto_resolves_to_an_available_device():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_by_name():
    with pytest.raises(ValueError, match="'cuda'.*no CUDA device"):
        resolve_device("cuda")


def test_a_device_torch_does_not_know_is_refused():
    with pytest.raises(ValueError, match="'gpu0' is not a torch device"):
        resolve_device("gpu0")


def test_cuda_beyond_the_devices_torch_sees_is_refused():
    bad = f"cuda:{torch.cuda.device_count()}"  # one past the last
    expected = "sees only" if torch.cuda.is_available() else "no CUDA device"
    with pytest.raises(ValueError, match=f"'{bad}'.*{expected}"):
        resolve_device(bad)


def test_load_device_falls_back_to_cpu_and_honours_an_explicit_choice():
    from unsuperpose.data.environment import load_device

    has_cuda = torch.cuda.is_available()
    assert load_device(None, "cpu") == torch.device("cpu")
    assert load_device(None, None) == torch.device("cpu")
    assert load_device(None, "not-a-device") == torch.device("cpu")
    assert load_device(None, "cuda:99") == torch.device("cpu")
    assert load_device(None, "cuda") == torch.device("cuda" if has_cuda else "cpu")
    assert load_device(None, "auto") == resolve_device("auto")
    assert load_device("cpu", "cuda:1") == torch.device("cpu")
    if not has_cuda:
        with pytest.raises(ValueError, match="'cuda'.*no CUDA device"):
            load_device("cuda", "cpu")


# ---- the version and the source checkout ----------------------------------------------------
def test_one_version_for_the_package_and_its_metadata():
    import configparser
    import importlib.metadata
    from pathlib import Path

    import unsuperpose

    root = Path(unsuperpose.__file__).resolve().parent.parent
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    assert cfg["metadata"]["version"] == "attr: unsuperpose.__version__"
    try:
        installed = importlib.metadata.version("unsuperpose")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("unsuperpose is not installed (pip install -e .)")
    assert installed == unsuperpose.__version__


def test_environment_records_the_version_and_the_commit_of_this_checkout():
    import shutil
    import subprocess
    from pathlib import Path

    import unsuperpose
    from unsuperpose.data.environment import environment

    env = environment("cpu")
    assert env["unsuperpose"] == unsuperpose.__version__
    assert {"git_commit", "git_dirty", "torch", "device"} <= set(env)
    root = Path(unsuperpose.__file__).resolve().parent.parent
    git = shutil.which("git")
    head = (subprocess.run([git, "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                           text=True) if git else None)
    if head is None or head.returncode != 0:  # an installed copy or no git: nothing recorded
        assert env["git_commit"] is None and env["git_dirty"] is None
    else:
        assert env["git_commit"] == head.stdout.strip()
        status = subprocess.run([git, "-C", str(root), "status", "--porcelain"],
                                capture_output=True, text=True).stdout
        assert env["git_dirty"] is bool(status.strip())


def test_source_checkout_commit_dirty_and_not_a_checkout(tmp_path, monkeypatch):
    import shutil
    import subprocess

    from unsuperpose.data.environment import source_checkout

    check = source_checkout.__wrapped__  # uncached
    assert check(str(tmp_path)) == (None, None)  # not a checkout
    git = shutil.which("git")
    if git is None:
        pytest.skip("needs git")
    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *a: subprocess.run([git, "-C", str(repo), "-c", "user.name=t",  # noqa: E731
                                     "-c", "user.email=t@t", *a], check=True,
                                    capture_output=True, text=True)
    run("init", "-q")
    assert check(str(repo)) == (None, None)  # no commit yet
    (repo / "a.txt").write_text("a")
    run("add", "a.txt")
    run("commit", "-q", "-m", "one")
    head = run("rev-parse", "HEAD").stdout.strip()
    assert check(str(repo)) == (head, False)
    (repo / "b.txt").write_text("b")  # untracked counts as dirty
    assert check(str(repo)) == (head, True)
    sub = repo / "pkg"
    sub.mkdir()
    assert check(str(sub)) == (None, None)  # inside a checkout, but not its top
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # git missing
    assert check(str(repo)) == (None, None)
