"""The chance row (evaluate/chance.py): random unit directions of the dictionaries' count,
coded as the oracle codes; a reference in every table, never ranked or bold."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.stage_faults import _evaluate, _metric
from unsuperpose.data import files
from unsuperpose.evaluate.chance import (
    CHANCE,
    CHANCE_DRAWS,
    chance_generator,
    chance_size,
    random_directions,
    score_chance,
)
from unsuperpose.evaluate.oracle import score_oracle
from unsuperpose.evaluate.report import render_report, table

THRESHOLDS = (0.9, 0.99)


def superposed(n=40, d=10, p=0.05, rows=3000, seed=1):
    """n unit true directions in d dimensions (random, so in superposition), each firing with
    probability p at a value in [0, 1): h = x @ G."""
    rng = np.random.default_rng(seed)
    G = random_directions(n, d, rng)
    X = ((rng.random((rows, n)) < p) * rng.random((rows, n))).astype(np.float32)
    return G, (X @ G).astype(np.float32), X


# ---- the directions ----------------------------------------------------------------------------
def test_random_directions_have_the_count_asked_for_and_unit_norm():
    A = random_directions(40, 10, np.random.default_rng(0))
    assert A.shape == (40, 10) and A.dtype == np.float32
    assert np.allclose(np.linalg.norm(A, axis=1), 1.0, atol=1e-6)
    assert abs(A.mean()) < 0.1           # no preferred direction: not all positive, say


def test_random_directions_are_seeded_and_reproducible():
    same = [random_directions(8, 4, chance_generator(0, "00-p0.2")) for _ in range(2)]
    assert np.array_equal(*same)
    other_instance = random_directions(8, 4, chance_generator(0, "01-p0.05"))
    other_seed = random_directions(8, 4, chance_generator(1, "00-p0.2"))
    assert not np.array_equal(same[0], other_instance) and not np.array_equal(same[0], other_seed)
    with pytest.raises(ValueError, match="n_atoms and d must be >= 1"):
        random_directions(0, 4, np.random.default_rng(0))


def test_the_count_is_the_dictionaries_and_the_most_common_when_they_differ():
    assert chance_size([40, 40, 40]) == (40, None)
    n, note = chance_size([40, 80, 40])
    assert n == 40 and note == ("the dictionaries have different sizes (40, 80 atoms): the "
                                "random row uses the most common, 40 atoms")
    assert chance_size([40, 80])[0] == 80       # a tie: the larger
    assert chance_size([]) == (None, None)


# ---- the scores --------------------------------------------------------------------------------
def test_in_d_10_forty_random_atoms_reach_mcc_about_two_thirds_well_below_the_oracle():
    # the floor: a random 40-atom decoder in d = 10 reaches mcc ~0.66
    G, H, X = superposed()
    chance = score_chance(G, H, X, 2, 40, THRESHOLDS, 0.95, np.random.default_rng(0)).scalars
    oracle = score_oracle(G, H, X, 2, THRESHOLDS, 0.95).scalars
    assert 0.6 < chance["mcc"] < 0.72                      # measured 0.653
    assert chance["n_components"] == 40 and chance["k"] == 2 and chance["draws"] == CHANCE_DRAWS
    assert chance["recovered_0.99"] == 0.0 < chance["mmcs"]
    for metric in ("mcc", "mmcs", "f1", "code_correlation"):
        assert 0 < chance[metric] < oracle[metric] - 0.2, metric
    assert chance["fvu"] > oracle["fvu"] + 0.2
    assert chance["l0"] <= 2                               # coded at the oracle's k


def test_the_row_is_the_mean_of_the_draws_and_reproducible():
    G, H, X = superposed(rows=500)
    rng = np.random.default_rng(7)  # one generator, drawn from in turn
    singles = [score_chance(G, H, X, 2, 40, THRESHOLDS, 0.95, rng, draws=1).scalars["mcc"]
               for _ in range(CHANCE_DRAWS)]
    three = score_chance(G, H, X, 2, 40, THRESHOLDS, 0.95, np.random.default_rng(7))
    assert three.scalars["mcc"] == pytest.approx(np.mean(singles))
    assert len(set(singles)) == CHANCE_DRAWS                  # three different dictionaries
    again = score_chance(G, H, X, 2, 40, THRESHOLDS, 0.95, np.random.default_rng(7))
    assert again.scalars == three.scalars
    assert three.per_feature["best_cos"].shape == (40,)
    assert np.all(three.per_feature["best_cos"] <= 1) and three.atom_order is None


# ---- the report --------------------------------------------------------------------------------
def test_the_random_row_is_never_bold_even_where_it_has_the_best_value():
    rows = {"topk": {"mcc": 0.7, "fvu": 0.3}, "l1": {"mcc": 0.8, "fvu": 0.4}}
    text = table(rows, ["mcc", "fvu"], reference={CHANCE: {"mcc": 0.9, "fvu": 0.1}})
    last = text.splitlines()[-1]
    assert last == "| *random (chance)* | *0.900* | *0.100* |"
    assert "**0.800**" in text and "**0.300**" in text   # the best of the methods, not random's


def _evaluation(chance_mcc: float):
    """A hand-built Evaluation of one instance with two methods, the oracle and the chance
    row, the chance row best on every metric: what the report does with it."""
    from unsuperpose.evaluate.config import EvaluateConfig
    from unsuperpose.evaluate.evaluation import Evaluation
    from unsuperpose.evaluate.scoring import Scores

    def sc(mcc, **more):
        return Scores({"mcc": mcc, "mmcs": mcc, "recovered_0.9": mcc, "recovered_0.99": mcc,
                       "fvu": 1 - mcc, "l0": 2.0, "f1": mcc, "code_correlation": mcc, **more})

    inst = SimpleNamespace(id="00-p0.1", model_kind="relu_output", split="heldout",
                           gt={files.GT_PROBABILITY: np.array([0.1])})
    view = {"n_features": 40, "d": 10, "frobenius_norm_sq": 10.0, "dimensions_per_feature": 0.25,
            "n_represented": 40, "n_true_directions": 40, "mean_dimensionality": 0.3,
            "interference": 0.5, "rows": 100, "candidate_rows": 100}
    res = SimpleNamespace(instance=inst, view=view, scores={"topk": sc(0.8), "mod_nn": sc(0.7)},
                          fit_rows={}, oracle=sc(0.95), chance=sc(chance_mcc),
                          probability=0.1)
    return Evaluation(Path("run"), EvaluateConfig(), [res], [], ["topk", "mod_nn"])


def test_the_report_shows_the_random_row_says_what_it_is_and_never_ranks_it():
    text = render_report(_evaluation(0.99), {})
    assert "| *random (chance)* |" in text
    row = next(line for line in text.splitlines() if line.startswith("| *random (chance)*"))
    assert "**" not in row
    assert "Best one-to-one recovery: **topk**" in text and "worst: mod_nn" in text
    assert "Random (as many random unit directions as the dictionaries have atoms" in text
    assert "chance floor" in text and "mcc 0.990" in text
    assert "in d = 10, 40 random atoms reach an mcc of about 0.66" in text   # the definitions


# ---- through the stage ---------------------------------------------------------------------------
def test_the_tiny_run_has_a_random_row_below_the_oracle_and_above_0(run, monkeypatch):
    assert _evaluate(run).exit_code == 0
    records = json.loads((files.evaluate_dir(run) / files.METRICS_FILE).read_text())["records"]
    instances = sorted({r["instance"] for r in records if r["method"] == CHANCE})
    assert instances == sorted({r["instance"] for r in records if r["method"] == "oracle"})
    chance, oracle = _metric(run, CHANCE, "mcc"), _metric(run, "oracle", "mcc")
    assert all(0 < c < o - 0.05 for c, o in zip(chance, oracle)), (chance, oracle)
    atoms = {r["instance"]: r["value"] for r in records
             if r["method"] == "topk" and r["metric"] == "n_components"}
    assert {r["instance"]: r["value"] for r in records
            if r["method"] == CHANCE and r["metric"] == "n_components"} == atoms
    assert _metric(run, CHANCE, "draws") == [CHANCE_DRAWS] * len(instances)
    csv = (files.evaluate_dir(run) / files.METRICS_CSV).read_text()
    assert ",random," in csv
    report = (files.evaluate_dir(run) / files.REPORT_FILE).read_text()
    assert report.count("| *random (chance)* |") == 1 + len(instances)   # comparison + each
    # seeded: a rerun draws the same directions
    assert _evaluate(run).exit_code == 0
    assert _metric(run, CHANCE, "mcc") == chance
    # every other number is the one a run without the chance row gives
    import unsuperpose.evaluate.pipeline as pipeline

    monkeypatch.setattr(pipeline, "_add_chance", lambda *args: None)
    assert _evaluate(run).exit_code == 0
    without = json.loads((files.evaluate_dir(run) / files.METRICS_FILE).read_text())["records"]
    assert without == [r for r in records if r["method"] != CHANCE]
