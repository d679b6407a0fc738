"""What the fault tests of every stage share: run a stage's command on a copy of a small fitted
run (the `run` fixture, tests/conftest.py) and damage its files in known ways."""
import json
from pathlib import Path

from click.testing import CliRunner

from unsuperpose.data import files


_FAST_SAE = ["--methods", "topk,mod_nn", "--n-epochs", "3", "--n-iter", "3", "--device", "cpu",
             "--threads", "1"]


_INST = "00-p0.2"


def _sae(run, *args):
    from unsuperpose.sae.cli import main
    return CliRunner().invoke(main, ["--run-dir", str(run), *args])


def _evaluate(run, *args):
    from unsuperpose.evaluate.cli import main
    return CliRunner().invoke(main, ["--run-dir", str(run), "--no-figures", "--threads", "1", *args])


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _instance(run, instance_id=_INST) -> Path:
    return files.instance_dir(run, instance_id)


def _manifest(inst: Path) -> dict:
    return json.loads((inst / files.MANIFEST_FILE).read_text())


def _write_manifest(inst: Path, manifest: dict) -> None:
    (inst / files.MANIFEST_FILE).write_text(json.dumps(manifest))


def _relist(inst: Path, relpath: str) -> None:
    """Make the manifest agree with the file now at `relpath` (size, sha256), so that the
    checks after the checksum are the ones that see the change."""
    manifest, path = _manifest(inst), inst / relpath
    entry = {"bytes": path.stat().st_size, "sha256": files.sha256_file(path)}
    for split in (manifest["shards"], manifest.get("heldout", {}).get("shards", [])):
        for e in split:
            if e["file"] == relpath:
                e.update(entry)
    if relpath in manifest.get("files", {}):
        manifest["files"][relpath] = entry
    _write_manifest(inst, manifest)


def _poison_row(inst: Path, relpath: str, row: int, value: float) -> None:
    from safetensors.numpy import load_file

    from unsuperpose.data.shards import write_shard
    t = load_file(str(inst / relpath))
    h = t[files.H].copy()
    h[row, 1] = value
    write_shard(inst / relpath, h, (t[files.X_INDPTR], t[files.X_INDICES], t[files.X_VALUES]))
    _relist(inst, relpath)


def _one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def _metric(run, method, metric, instance=None):
    records = json.loads((files.evaluate_dir(run) / "metrics.json").read_text())["records"]
    return [r["value"] for r in records if r["method"] == method and r["metric"] == metric
            and "feature" not in r and (instance is None or r["instance"] == instance)]
