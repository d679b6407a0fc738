import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import unsuperpose.generate.pipeline
import unsuperpose.sae.pipeline
from unsuperpose.data import files
from unsuperpose.evaluate.pipeline import METRICS_FILE
from unsuperpose.evaluate.sweep import GridError, load_grid
from unsuperpose.evaluate.sweep.aggregate import (
    AGGREGATE_CSV,
    SUMMARY_FILE,
    group_stats,
    metric_columns,
    read_csv,
)
from unsuperpose.evaluate.sweep.cli import main
from unsuperpose.evaluate.sweep.counting import (
    COUNTING_CSV,
    COUNTING_FIGURE,
    consecutive_mmcs_estimate,
    dead_latent_estimate,
    knee_estimate,
)
from unsuperpose.evaluate.sweep.figures import (
    DICT_RATIO_FIGURE,
    FRONTIER_FIGURE,
    PHASE_FIGURE,
    PROBABILITY_FIGURE,
    pareto_front,
)
from unsuperpose.evaluate.sweep.runner import ERROR_FILE, GENERATE_MARKER, POINT_MARKER, point_dir

# 2 feature probabilities x 2 dictionary ratios: 4 points over 2 generate runs
BASE = {"generate": {"n_features": 6, "d_hidden": 3, "steps": 100, "batch_size": 256,
                     "rows": 2000, "rows_per_shard": 2000, "device": "cpu"},
        "sae": {"methods": ["topk", "mod"], "device": "cpu",
                "params": {"*": {"n_epochs": 5, "n_iter": 3, "batch_size": 256}}},
        "evaluate": {"max_rows": 500, "figures": False}}  # the sweep draws its own
AXES = {"generate.feature_probability": [0.2, 0.05], "sae.dict_ratio": [1, 2]}


def write_grid(path, axes=AXES, base=BASE):
    path.write_text(json.dumps({"base": base, "axes": axes}))
    return path


class Counting:
    """Wraps a stage function: counts calls, and raises on the calls numbered in `fail`."""

    def __init__(self, func, fail=()):
        self.func, self.fail, self.calls = func, set(fail), 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls in self.fail:
            raise RuntimeError("simulated crash")
        return self.func(*args, **kwargs)


def _markers(sweep_dir):
    return {p: p.stat().st_mtime_ns for p in sorted(sweep_dir.glob(f"*/*/{POINT_MARKER}"))
            + sorted(sweep_dir.glob(f"generate/*/{GENERATE_MARKER}"))}


def _invoke(grid, sweep_dir, *args):
    return CliRunner().invoke(main, [str(grid), "--sweep-dir", str(sweep_dir), *args])


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The 4-point sweep: crashed on two points, resumed (2 workers), then run once more."""
    root = tmp_path_factory.mktemp("sweep")
    grid, sweep_dir = write_grid(root / "grid.json"), root / "out"
    out = {"grid": grid, "sweep_dir": sweep_dir}
    with pytest.MonkeyPatch.context() as mp:
        gen = Counting(unsuperpose.generate.pipeline.run_generate)
        fit = Counting(unsuperpose.sae.pipeline.run_sae, fail={1, 3})
        mp.setattr(unsuperpose.generate.pipeline, "run_generate", gen)
        mp.setattr(unsuperpose.sae.pipeline, "run_sae", fit)
        out["crashed"] = _invoke(grid, sweep_dir, "--workers", "1")
        out["after_crash"] = _markers(sweep_dir)
        out["errors"] = [e.read_text() for e in sorted(sweep_dir.glob(f"points/*/{ERROR_FILE}"))]
        out["crash_calls"] = (gen.calls, fit.calls)
        # the resumed run spawns its workers, which import the unpatched stages
        out["resumed"] = _invoke(grid, sweep_dir, "--workers", "2")
        out["after_resume"] = _markers(sweep_dir)
        out["again"] = _invoke(grid, sweep_dir, "--workers", "1")
        out["after_again"] = _markers(sweep_dir)
        out["again_calls"] = (gen.calls, fit.calls)
    return out


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_recomputing_finished_points(swept):
    crashed, sweep_dir = swept["crashed"], swept["sweep_dir"]
    assert crashed.exit_code == 1
    assert "2 point(s) failed" in crashed.output and "simulated crash" in crashed.output
    points = load_grid(swept["grid"]).points
    finished = [p for p in points if (point_dir(sweep_dir, p) / POINT_MARKER) in swept["after_crash"]]
    assert len(finished) == 2 and len(swept["after_crash"]) == 2 + 2  # + both generate runs
    assert len(swept["errors"]) == 2 and all("simulated crash" in e for e in swept["errors"])
    assert swept["crash_calls"] == (2, 4)

    assert swept["resumed"].exit_code == 0, swept["resumed"].output
    assert "4 points, 2 done, 2 to run (0 generate runs first)" in swept["resumed"].output
    resumed = swept["after_resume"]
    assert len(resumed) == 4 + 2
    # what was finished before the resume was not written again
    assert {p: resumed[p] for p in swept["after_crash"]} == swept["after_crash"]

    assert "4 points, 4 done, 0 to run" in swept["again"].output
    assert swept["again_calls"] == swept["crash_calls"]  # nothing ran in this process either
    assert swept["after_again"] == resumed


@pytest.mark.slow
def test_points_that_differ_only_in_sae_fields_share_one_generate_run(swept):
    sweep_dir = swept["sweep_dir"]
    points = load_grid(swept["grid"]).points
    assert len({p.generate_hash for p in points}) == 2
    for p in points:
        link = files.generate_dir(point_dir(sweep_dir, p))
        assert link.is_symlink()
        assert link.resolve().parent.name == p.generate_hash[:16]


@pytest.mark.slow
def test_the_aggregate_table_equals_each_points_metrics(swept):
    sweep_dir = swept["sweep_dir"]
    grid = load_grid(swept["grid"])
    rows = read_csv(sweep_dir / AGGREGATE_CSV)
    assert len(rows) == 4 * (2 + 2)  # points x (methods + the oracle and random rows), one instance each
    assert sum(r["method"] == "oracle" for r in rows) == sum(r["method"] == "random" for r in rows) == 4
    metrics = metric_columns(grid)
    assert {"mmcs", "matched_cos", "recovered_0.99", "mcc", "fvu", "l0"} <= set(metrics)
    for point in grid.points:
        folder = point_dir(sweep_dir, point)
        records = json.loads((folder / "evaluate" / METRICS_FILE).read_text())["records"]
        assert (folder / "evaluate" / "report.md").is_file()
        assert not (folder / "evaluate" / "figures").exists()  # figures: false in the grid
        mine = [r for r in rows if r["point"] == folder.name]
        assert sorted(r["method"] for r in mine) == ["mod", "oracle", "random", "topk"]
        for row in mine:
            assert float(row["generate.feature_probability"]) == point.values["generate.feature_probability"]
            assert float(row["sae.dict_ratio"]) == point.values["sae.dict_ratio"]
            expected = {r["metric"]: r["value"] for r in records
                        if r["method"] == row["method"] and "feature" not in r}
            for m in metrics:
                if row[m] == "":  # a metric the reference rows do not have (fit time, size)
                    assert row["method"] in ("oracle", "random") and expected.get(m) is None, m
                    continue
                assert float(row[m]) == pytest.approx(expected[m], rel=1e-12), (m, row["method"])
    summary = (sweep_dir / SUMMARY_FILE).read_text()
    assert "4 finished, 0 failed" in summary and f"figures/{PROBABILITY_FIGURE}" in summary
    for name in (PROBABILITY_FIGURE, PHASE_FIGURE, DICT_RATIO_FIGURE, FRONTIER_FIGURE):
        assert (sweep_dir / "figures" / name).stat().st_size > 10_000, name


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_the_ray_backend_gives_the_same_aggregate_as_the_local_one(swept, local_ray, tmp_path):
    # two of the four points: the same configs, so the same hashes and (1 thread) numbers
    grid = write_grid(tmp_path / "grid.json", {**AXES, "generate.feature_probability": [0.05]})
    result = _invoke(grid, tmp_path / "ray", "--backend", "ray", "--threads", "1")
    assert result.exit_code == 0, result.output
    ray_rows = read_csv(tmp_path / "ray" / AGGREGATE_CSV)
    local = {(r["point"], r["method"]): r for r in read_csv(swept["sweep_dir"] / AGGREGATE_CSV)}
    assert len(ray_rows) == 2 * (2 + 2)  # points x (methods + the oracle and random rows)
    for row in ray_rows:
        expected = local[row["point"], row["method"]]
        assert row.keys() == expected.keys()
        for key in row:
            if key != "fit_seconds":  # a timing
                assert row[key] == expected[key], key


@pytest.mark.parametrize("content, message", [
    ('{"axes": {"generate.n_featurez": [4]}}', "'generate.n_featurez': unknown field 'n_featurez'"),
    ('{"axes": {"sae.dict_ratio": []}}', "'sae.dict_ratio': an axis needs a non-empty list"),
    ('{"axes": {"sae.dict_ratio": [1, -1]}}', "'sae.dict_ratio': must be finite and > 0, got -1.0"),
    ('{"axes": {"sae.params.l1.k_sparse": [1]}}', "'sae.params.l1.k_sparse': l1 has no parameter"),
    ('{"axes": {"model.d": [1]}}', "'model.d': expected <stage>.<field>"),
    ('{"base": {"sae": {"dict_ratoi": 2}}}', "'sae.dict_ratoi': unknown field"),
    ('{"axis": {}}', "'axis': unknown top-level key"),
    ('{"axes": {"generate.n_features,generate.d_hidden": [[4, 2], [8]]}}', "needs a list of 2-element"),
    ('{"axes": {', "not valid JSON"),
])
def test_a_bad_grid_file_is_refused_naming_the_file_and_the_key(tmp_path, content, message):
    grid = tmp_path / "bad.json"
    grid.write_text(content)
    result = _invoke(grid, tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert str(grid) in result.output and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_grid_axes_expand_to_resolved_configs(tmp_path):
    grid = load_grid(write_grid(tmp_path / "g.json", {
        "generate.n_features,generate.d_hidden": [[6, 3], [8, 4]],
        "sae.params.l1.l1_coefficient": [0.01],
        "seed": [0, 1, 2]}))
    assert len(grid.points) == 2 * 3
    assert grid.columns == ["generate.n_features", "generate.d_hidden",
                            "sae.params.l1.l1_coefficient", "seed"]
    last = grid.points[-1]
    assert (last.configs["generate"].n_features, last.configs["generate"].d_hidden) == (8, 4)
    assert {last.configs[s].seed for s in ("generate", "sae", "evaluate")} == {2}
    assert last.configs["sae"].params == {"*": {"n_epochs": 5, "n_iter": 3, "batch_size": 256},
                                          "l1": {"l1_coefficient": 0.01}}
    assert last.columns["generate.d_hidden"] == 4
    # a scalar probability is a one-instance run; 1 and 1.0 are one config, one hash
    a = load_grid(write_grid(tmp_path / "a.json", {"generate.feature_probability": [0.1],
                                                   "sae.dict_ratio": [1]})).points[0]
    b = load_grid(write_grid(tmp_path / "b.json", {"generate.feature_probability": [[0.1]],
                                                   "sae.dict_ratio": [1.0]})).points[0]
    assert a.configs["generate"].feature_probability == (0.1,)
    assert a.hash == b.hash and a.generate_hash == b.generate_hash


def test_a_grid_whose_points_coincide_is_refused(tmp_path):
    with pytest.raises(GridError, match="same configs"):
        load_grid(write_grid(tmp_path / "g.json", {"sae.dict_ratio": [1, 1.0]}))


def test_pareto_front_keeps_the_points_no_other_beats_on_l0_and_fvu():
    points = [(1.0, 0.5), (2.0, 0.2), (2.5, 0.3), (3.0, 0.1), (0.5, 0.9), (3.0, 0.4)]
    assert pareto_front(points) == [(0.5, 0.9), (1.0, 0.5), (2.0, 0.2), (3.0, 0.1)]


def test_the_example_grid_of_make_sweep_loads():
    grid = load_grid(Path(__file__).parents[3] / "evaluate" / "sweep" / "grids" / "example.json")
    assert len(grid.points) == 2 * 3  # dict ratios x seeds
    assert len({p.generate_hash for p in grid.points}) == 3  # one generate run per seed


def test_seeds_are_averaged_into_mean_and_std_per_setting():
    rows = [{"method": "topk", "sae.dict_ratio": 1, "seed": seed, "mcc": v}
            for seed, v in ((0, 0.5), (1, 0.7), (2, 0.9))]
    rows += [{"method": "topk", "sae.dict_ratio": 2, "seed": 0, "mcc": 0.4},
             {"method": "mod", "sae.dict_ratio": 1, "seed": 0, "mcc": None}]
    stats = group_stats(rows, ["method", "sae.dict_ratio"], "mcc")
    assert stats.keys() == {("topk", 1), ("topk", 2)}  # no value, no group
    mean, std, n = stats["topk", 1]
    assert (mean, n) == (pytest.approx(0.7), 3) and std == pytest.approx(0.2)  # ddof = 1
    assert stats["topk", 2] == (0.4, 0.0, 1)


def test_feature_count_estimators_on_known_curves():
    sizes = np.array([4, 8, 16, 32, 64], dtype=float)
    # 16 true features: latents start dying past 16; live latents stay near 16
    dead = np.array([0, 0, 0, 15, 47], dtype=float)
    assert dead_latent_estimate(sizes, dead) == 17.0
    assert dead_latent_estimate(sizes, np.zeros(5)) == 64.0  # none dead: a lower bound
    # loss falls steeply to 16 atoms, then flattens: the knee
    assert knee_estimate(sizes, np.array([0.8, 0.4, 0.02, 0.015, 0.01])) == 16.0
    assert np.isnan(knee_estimate(sizes[:2], np.array([0.5, 0.1])))
    # a dictionary's atoms reappear in the next larger one best at the true size
    assert consecutive_mmcs_estimate(sizes, np.array([0.7, 0.8, 0.99, 0.9])) == 16.0


@pytest.mark.slow
def test_a_sweep_over_dictionary_size_counts_features(swept):
    sweep_dir = swept["sweep_dir"]
    counts = read_csv(sweep_dir / COUNTING_CSV)
    # one curve (dict ratio 1 -> 2) per feature probability x method
    assert len(counts) == 2 * 2
    aggregate = read_csv(sweep_dir / AGGREGATE_CSV)
    for c in counts:
        curve = [r for r in aggregate if r["instance"] == c["instance"] and r["method"] == c["method"]
                 and r["generate.feature_probability"] in c["curve"]]
        sizes = sorted(float(r["n_components"]) for r in curve)
        assert c["true_count"] == curve[0]["n_represented"]
        assert float(c["consecutive_mmcs"]) == sizes[0]  # one pair: its smaller size
        assert c["loss_knee"] == ""  # needs three sizes
        assert 0 < float(c["dead_latents"]) <= sizes[-1]
    assert "## Feature counting" in (sweep_dir / SUMMARY_FILE).read_text()
    assert (sweep_dir / "figures" / COUNTING_FIGURE).stat().st_size > 10_000


@pytest.mark.slow
def test_dry_run_lists_each_point_and_whether_it_is_done(swept, tmp_path):
    result = _invoke(swept["grid"], swept["sweep_dir"], "--dry-run")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == 4 and all(" done {'generate.feature_probability'" in line for line in lines)
    fresh = _invoke(swept["grid"], tmp_path / "none", "--dry-run")
    assert fresh.output.count(" todo ") == 4 and not (tmp_path / "none").exists()
