"""`unsuperpose evaluate --external NAME=PATH` scores SAELens folders and bare decoders beside the
run's own dictionaries (evaluate/external.py)."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from tests.conftest import EXPORT_INSTANCE as INSTANCE
from unsuperpose.data import files
from unsuperpose.data.configs import ConfigError
from unsuperpose.data.instance_files import read_ground_truth
from unsuperpose.data.manifest import read_manifest
from unsuperpose.evaluate.cli import main as evaluate_main
from unsuperpose.evaluate.config import EvaluateConfig
from unsuperpose.evaluate.external import ExternalDictionaryError, load_external, parse_spec
from unsuperpose.sae.saelens_export import SAELENS_DIR

FAST_EVAL = ["--instance", INSTANCE, "--max-rows", "800", "--no-figures"]


def _gt(run):
    inst = files.instance_dir(run, INSTANCE)
    gt = read_ground_truth(inst, read_manifest(inst))
    return gt[files.GT_DIRECTIONS][gt[files.GT_REPRESENTED].astype(bool)]  # G [n_true, d]


def _unit(A):
    return (A / np.linalg.norm(A, axis=1, keepdims=True)).astype(np.float32)


def write_saelens(folder, W_dec, *, architecture="standard", W_enc=None, b_enc=None, b_dec=None,
                  threshold=None, cfg=None, drop=(), **extra):
    """A SAELens 6 folder written by hand: cfg.json + sae_weights.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    n, d = W_dec.shape
    tensors = {"W_enc": W_dec.T.copy() if W_enc is None else W_enc,
               "b_enc": np.zeros(n, np.float32) if b_enc is None else b_enc,
               "W_dec": W_dec, "b_dec": np.zeros(d, np.float32) if b_dec is None else b_dec}
    if threshold is not None:
        tensors["threshold"] = threshold
    tensors.update(extra)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()
               if k not in drop}, str(folder / files.SAELENS_WEIGHTS_FILE))
    (folder / files.SAELENS_CFG_FILE).write_text(json.dumps(
        {"architecture": architecture, "d_in": d, "d_sae": n, "dtype": "float32",
         "apply_b_dec_to_input": True, "normalize_activations": "none",
         "metadata": {"sae_lens_version": "6.0.0"}, **(cfg or {})}))
    return folder


@pytest.fixture(scope="module")
def planted(exported_run, tmp_path_factory):
    """Hand-made external dictionaries of the run's true directions G: a bare perfect decoder,
    a random one, SAELens standard / topk (k = 1) / jumprelu folders with W_dec = G."""
    out = tmp_path_factory.mktemp("planted")
    raw = _gt(exported_run)
    G, d = _unit(raw), raw.shape[1]
    save_file({"W_dec": raw}, str(out / "perfect.safetensors"))  # scaled to unit norm on reading
    rng = np.random.default_rng(0)
    save_file({"components": _unit(rng.normal(size=(3, d)))}, str(out / "random.safetensors"))
    return {"perfect": out / "perfect.safetensors", "random": out / "random.safetensors",
            "standard": write_saelens(out / "standard", G),
            "topk1": write_saelens(out / "topk1", G, architecture="topk", cfg={"k": 1}),
            "jump": write_saelens(out / "jump", G, architecture="jumprelu",
                                  threshold=np.full(len(G), 0.3, np.float32))}


@pytest.fixture(scope="module")
def evaluated(exported_run, planted):
    """One evaluation of the run's own dictionaries and every external one; its scalars."""
    sae = files.sae_root(exported_run) / INSTANCE
    specs = [f"t={sae / 'topk' / SAELENS_DIR}", f"j={sae / 'jumprelu' / SAELENS_DIR}"]
    specs += [f"{name}={path}" for name, path in planted.items()]
    args = ["--run-dir", str(exported_run)] + FAST_EVAL
    for spec in specs:
        args += ["--external", spec]
    result = CliRunner().invoke(evaluate_main, args)
    assert result.exit_code == 0, result.output
    out = files.evaluate_dir(exported_run)
    records = json.loads((out / files.METRICS_FILE).read_text())["records"]
    scalars = {}
    for r in records:
        if r["method"] and "feature" not in r and r["metric"] not in ("error", "skipped"):
            scalars.setdefault(r["method"], {})[r["metric"]] = r["value"]
    return out, scalars


# ---- evaluate --external: scores ------------------------------------------------------------
@pytest.mark.parametrize("method, name", [("topk", "ext:t"), ("jumprelu", "ext:j")])
def test_an_exported_sae_scores_as_its_own_row(evaluated, method, name):
    _, scalars = evaluated
    ours, theirs = scalars[method], scalars[name]
    assert set(ours) - set(theirs) == {"fit_seconds"}
    for metric, value in theirs.items():
        assert value == pytest.approx(ours[metric], rel=1e-6, abs=1e-9), metric


def test_a_perfect_decoder_scores_as_the_oracle_and_a_random_one_low(evaluated):
    _, scalars = evaluated
    perfect, oracle, rand = scalars["ext:perfect"], scalars["oracle"], scalars["ext:random"]
    for metric in ("mmcs", "mmcs_abs", "matched_cos", "recovered_0.99", "mcc"):
        assert perfect[metric] == pytest.approx(1.0, abs=1e-5), metric
    # coded as the oracle codes: the same unit rows (normalised once, from the rows as read)
    for metric in ("f1", "l0", "fvu", "code_correlation"):
        assert perfect[metric] == pytest.approx(oracle[metric], rel=1e-6, abs=1e-9), metric
    assert perfect["f1_vs_oracle"] == pytest.approx(1.0, rel=1e-6)
    assert rand["recovered_0.9"] == 0 and rand["mmcs"] < 0.9 and rand["f1"] < perfect["f1"]
    assert rand["l0"] <= 3 and perfect["target_l0"] == scalars["topk"]["target_l0"]


def test_a_bare_decoder_codes_its_rows_as_the_oracle_codes_the_same_rows(tmp_path):
    from unsuperpose.evaluate.oracle import oracle_codes, unit_rows

    rng = np.random.default_rng(0)
    W = (rng.normal(size=(1000, 16)) * rng.uniform(0.2, 3, size=(1000, 1))).astype(np.float32)
    once = unit_rows(W).astype(np.float32)
    # normalising twice moves an element here by one ulp: the case a second norm would break
    (moved,) = np.flatnonzero((unit_rows(once).astype(np.float32) != once).any(1))
    save_file({"W_dec": W}, str(tmp_path / "W.safetensors"))
    ext = load_external("w", tmp_path / "W.safetensors").with_k(4)
    codes_true = (rng.random((200, 1000)) < 0.003).astype(np.float32)  # [200, 1000]
    codes_true[:, moved] = 1  # every row uses the moved atom
    H = codes_true @ once                                               # [200, 16]
    _, codes, H_hat = oracle_codes(W, H, 4)
    assert np.array_equal(ext.components_, once)
    assert np.array_equal(ext.transform(H), codes)
    assert np.array_equal(ext.inverse_transform(codes), H_hat)


def test_saelens_folders_of_the_true_directions(evaluated):
    _, scalars = evaluated
    for name in ("ext:standard", "ext:topk1", "ext:jump"):
        assert scalars[name]["mmcs"] == pytest.approx(1.0, abs=1e-5), name
    assert scalars["ext:topk1"]["l0"] <= 1
    # the threshold only removes firings: jumprelu at 0.3 fires less than the plain ReLU
    assert scalars["ext:jump"]["l0"] < scalars["ext:standard"]["l0"]


def test_externals_are_marked_in_the_report_and_recorded_with_their_sha256(evaluated, planted):
    out, _ = evaluated
    report = (out / files.REPORT_FILE).read_text()
    assert "## External dictionaries" in report and "| ext:perfect |" in report
    config = json.loads((out / files.CONFIG_FILE).read_text())
    assert config["config"]["external"]["perfect"] == str(planted["perfect"])
    record = config["external"]["jump"]
    assert record["method"] == "ext:jump" and record["kind"] == "saelens"
    weights = planted["jump"] / files.SAELENS_WEIGHTS_FILE
    assert record["path"] == str(planted["jump"].resolve())
    assert record["sha256"] == {
        files.SAELENS_CFG_FILE: files.sha256_file(planted["jump"] / files.SAELENS_CFG_FILE),
        files.SAELENS_WEIGHTS_FILE: files.sha256_file(weights)}
    assert config["external"]["perfect"]["sha256"] == {
        "perfect.safetensors": files.sha256_file(planted["perfect"])}
    assert config["methods"][:3] == ["topk", "mod", "jumprelu"]
    assert config["methods"][3:] == ["ext:t", "ext:j", "ext:perfect", "ext:random",
                                     "ext:standard", "ext:topk1", "ext:jump"]
    assert not any(k.startswith("ext:") or "/ext:" in k for k in config["upstream_files"])


# ---- the loader on its own --------------------------------------------------------------------
def test_each_architecture_encodes_as_saelens_does(tmp_path):
    rng = np.random.default_rng(1)
    d, n = 5, 7
    W_enc, W_dec = rng.normal(size=(d, n)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)
    b_enc, b_dec = rng.normal(size=n).astype(np.float32), rng.normal(size=d).astype(np.float32)
    theta = np.abs(rng.normal(size=n)).astype(np.float32)
    H = rng.normal(size=(50, d)).astype(np.float32)
    pre = (H - b_dec) @ W_enc + b_enc
    top2 = np.where(pre >= np.sort(pre, axis=1)[:, -2:-1], np.maximum(pre, 0), 0)
    cases = {"standard": ({}, np.maximum(pre, 0)),
             "topk": ({"cfg": {"k": 2}}, top2),
             "jumprelu": ({"threshold": theta}, np.maximum(pre, 0) * (pre > theta)),
             # a BatchTopK training checkpoint: one scalar threshold
             "batchtopk": ({"topk_threshold": np.float32(0.5)}, np.maximum(pre, 0) * (pre > 0.5))}
    for arch, (kw, expected) in cases.items():
        if "topk_threshold" in kw:
            kw = {"topk_threshold": np.array(kw["topk_threshold"], np.float32)}
        folder = write_saelens(tmp_path / arch, W_dec, architecture=arch, W_enc=W_enc,
                               b_enc=b_enc, b_dec=b_dec, **kw)
        ext = load_external(arch, folder)
        codes = ext.transform(H)
        assert np.allclose(codes, expected, atol=1e-5), arch
        assert np.allclose(ext.inverse_transform(codes), codes @ W_dec + b_dec, atol=1e-5)
        assert ext.method == f"ext:{arch}" and ext.d == d
    no_bdec = write_saelens(tmp_path / "nob", W_dec, W_enc=W_enc, b_enc=b_enc, b_dec=b_dec,
                            cfg={"apply_b_dec_to_input": False})
    assert np.allclose(load_external("x", no_bdec).transform(H),
                       np.maximum(H @ W_enc + b_enc, 0), atol=1e-5)


def _bad_json(folder):
    (folder / files.SAELENS_CFG_FILE).write_text("{oops")
    return folder


def _garbage(path):
    path.write_bytes(b"\x00not a safetensors file")
    return path


# (what to break, the file the line names, a pattern of the message)
BAD = {
    "missing path": (lambda p, G: p / "nowhere", "nowhere", "not found"),
    "no cfg.json": (lambda p, G: (write_saelens(p / "f", G) / "cfg.json").unlink() or p / "f",
                    "f/cfg.json", "not found"),
    "no weights": (lambda p, G: (write_saelens(p / "f", G) / "sae_weights.safetensors").unlink()
                   or p / "f", "f/sae_weights.safetensors", "not found"),
    "bad JSON": (lambda p, G: _bad_json(write_saelens(p / "f", G)), "f/cfg.json",
                 "not valid JSON"),
    "unknown architecture": (lambda p, G: write_saelens(p / "f", G, architecture="gated"),
                             "f/cfg.json", "architecture 'gated'"),
    "missing key": (lambda p, G: write_saelens(p / "f", G, architecture="jumprelu"),
                    "f/sae_weights.safetensors", "no tensor 'threshold'"),
    "wrong shape": (lambda p, G: write_saelens(p / "f", G, W_enc=G.copy()),
                    "f/sae_weights.safetensors", "'W_enc' has shape"),
    "d mismatch": (lambda p, G: write_saelens(p / "f", np.eye(5, dtype=np.float32)),
                   "f/sae_weights.safetensors", "d = 5, but instance 00-p0.2 .* d = 4"),
    "topk without k": (lambda p, G: write_saelens(p / "f", G, architecture="topk"),
                       "f/cfg.json", "k must be an integer"),
    "not safetensors": (lambda p, G: _garbage(p / "x.safetensors"), "x.safetensors",
                        "not a readable safetensors file"),
    "no decoder key": (lambda p, G: save_file({"atoms": G}, str(p / "x.safetensors"))
                       or p / "x.safetensors", "x.safetensors", "no decoder tensor"),
    "decoder not 2-D": (lambda p, G: save_file({"W_dec": G[0]}, str(p / "x.safetensors"))
                        or p / "x.safetensors", "x.safetensors", "expected \\[n_atoms, d\\]"),
    "bare decoder d mismatch": (lambda p, G: save_file({"W_dec": np.eye(3, dtype=np.float32)},
                                                       str(p / "x.safetensors"))
                                or p / "x.safetensors", "x.safetensors", "d = 3"),
}


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_external_is_one_line_naming_its_file_and_leaves_evaluate_whole(
        case, evaluated, exported_run, tmp_path):
    import re

    out, _ = evaluated
    before = _snapshot(out)
    make, named, pattern = BAD[case]
    G = _unit(_gt(exported_run))
    path = make(tmp_path, G)
    result = CliRunner().invoke(evaluate_main, ["--run-dir", str(exported_run), "--external",
                                                f"bad={path}"] + FAST_EVAL)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--external" in errors[0], result.output
    assert f"{tmp_path / named}:" in errors[0] and re.search(pattern, errors[0]), errors[0]
    assert _snapshot(out) == before and not list(exported_run.glob(".evaluate.tmp-*"))


@pytest.mark.parametrize("args, message", [
    (["--external", "nameonly"], "expected NAME=PATH"),
    (["--external", "a b=x"], "must start with a letter"),
    (["--external", "a=x", "--external", "a=y"], "'a' is given twice"),
])
def test_a_malformed_external_option_names_it(tiny_run, args, message):
    result = CliRunner().invoke(evaluate_main, ["--run-dir", str(tiny_run)] + args)
    assert result.exit_code == 2 and message in result.output and "--external" in result.output
    assert "Traceback" not in result.output


def test_the_config_and_the_spec_parser_refuse_bad_names():
    assert parse_spec("my-sae=/a=b") == ("my-sae", "/a=b")
    with pytest.raises(ConfigError, match="^external: "):
        EvaluateConfig(external={"": "x"})
    with pytest.raises(ConfigError, match="^external: x: the path"):
        EvaluateConfig(external={"x": 3})
    assert EvaluateConfig(external={"x": "p"}).to_dict()["external"] == {"x": "p"}
    with pytest.raises(ExternalDictionaryError):
        load_external("x", "/no/such/path")


@pytest.mark.slow
def test_externals_appear_in_every_figure(exported_run, planted, tmp_path):
    from unsuperpose.evaluate.figures import method_label, method_style

    run = tmp_path / "run"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns(files.EVALUATE_DIR))
    result = CliRunner().invoke(evaluate_main, [
        "--run-dir", str(run), "--instance", INSTANCE, "--max-rows", "500",
        "--external", f"perfect={planted['perfect']}"])
    assert result.exit_code == 0, result.output
    report = (files.evaluate_dir(run) / files.REPORT_FILE).read_text()
    assert "recovery_vs_probability.png" in report and "| ext:perfect |" in report
    assert method_label("ext:perfect") == "ext:perfect (external)"
    assert method_style("ext:perfect")["linestyle"] == "-."
    assert method_style("ext:perfect")["marker"] not in {method_style(m)["marker"]
                                                         for m in ("topk", "mod", "jumprelu")}
