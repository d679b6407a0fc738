"""The report's wording where the numbers call for it: a synthetic world's true directions,
methods that tie, and the L1 SAE's shrinkage. Hand-built Evaluations, so each case is exact."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from unsuperpose.data import files
from unsuperpose.evaluate.config import EvaluateConfig
from unsuperpose.evaluate.evaluation import Evaluation
from unsuperpose.evaluate.report import headline, render_report, shrinkage_line
from unsuperpose.evaluate.scoring import Scores

VIEW = {"n_features": 40, "d": 10, "frobenius_norm_sq": 10.0, "dimensions_per_feature": 1.0,
        "n_represented": 40, "n_true_directions": 40, "mean_dimensionality": 0.3,
        "interference": 0.5, "rows": 100, "candidate_rows": 100}


def scores(rec: float, fvu: float = 0.05, shrinkage: float = 0.99, mcc: float | None = None) -> Scores:
    return Scores({"mcc": rec if mcc is None else mcc, "mmcs": rec, "recovered_0.9": rec,
                   "recovered_0.99": rec, "fvu": fvu, "shrinkage": shrinkage, "l0": 2.0,
                   "f1": 0.5, "code_correlation": 0.5})


def result(instance_id: str, methods: dict[str, Scores], oracle: Scores | None = None,
           kind: str = "relu_output"):
    inst = SimpleNamespace(id=instance_id, model_kind=kind, split="heldout",
                           gt={files.GT_PROBABILITY: np.array([0.1])})
    return SimpleNamespace(instance=inst, view=VIEW, scores=methods, fit_rows={},
                           oracle=oracle if oracle is not None else scores(1.0, fvu=0.02),
                           chance=None, probability=0.1)


def evaluation(*results) -> Evaluation:
    methods = list(dict.fromkeys(m for r in results for m in r.scores))
    return Evaluation(Path("run"), EvaluateConfig(), list(results), [], methods)


def means(**recs) -> dict:
    return {m: scores(v).scalars for m, v in recs.items()}


# ---- what the dictionaries are scored against -------------------------------------------------------
def test_a_synthetic_world_is_scored_against_its_true_directions_not_a_toy_models():
    synthetic = render_report(evaluation(result("00-p0.1", {"topk": scores(0.9)}, kind="synthetic")), {})
    assert "each dictionary scored against the world's true directions" in synthetic
    assert "the directions the toy model represents" not in synthetic
    toy = render_report(evaluation(result("00-p0.1", {"topk": scores(0.9)})), {})
    assert "each dictionary scored against the directions the toy model represents" in toy


# ---- ties ---------------------------------------------------------------------------------------------
def test_methods_that_all_show_the_same_recovery_get_a_tie_sentence():
    # the case: "Best ... topk (100%); worst: mod_nn (100%)"
    text = headline(["topk", "mod_nn"], means(topk=1.0, mod_nn=0.998), 0.99)
    assert text.startswith("A tie on one-to-one recovery: all 2 methods recover 100% of the "
                           "represented features at matched cos ≥ 0.99 on average")
    assert "Best" not in text and "worst" not in text
    assert "(mcc 0.998–1.000; FVU 0.050–0.050 across them)" in text
    report = render_report(evaluation(result("00-p0.1", {"topk": scores(1.0), "mod_nn": scores(1.0)})), {})
    assert "A tie on one-to-one recovery: all 2 methods recover 100%" in report
    assert "worst: mod_nn (100%)" not in report


def test_tied_best_and_tied_worst_methods_are_named_together():
    text = headline(["topk", "l1", "ksvd", "mod"], means(topk=0.9, l1=0.9, ksvd=0.4, mod=0.4), 0.99)
    assert text == ("Best one-to-one recovery, tied: **topk** and **l1** recover 90% of the "
                    "represented features at matched cos ≥ 0.99 on average; worst, tied: ksvd, "
                    "mod (40%).")


def test_a_clear_best_and_worst_keep_the_usual_sentence():
    text = headline(["topk", "l1", "mod"], means(topk=0.93, l1=0.9, mod=0.4), 0.99)
    assert text == ("Best one-to-one recovery: **topk** recovers 93% of the represented features "
                    "at matched cos ≥ 0.99 on average (mcc 0.930, FVU 0.050); worst: mod (40%).")
    assert headline(["topk"], means(topk=0.5), 0.99).startswith("One method, **topk**: it recovers 50%")


# ---- shrinkage ----------------------------------------------------------------------------------------
def test_an_l1_fvu_far_above_the_oracles_with_shrunk_codes_is_explained_by_shrinkage():
    # the default run's 01-p0.1: l1 FVU 0.209, shrinkage 0.55; the oracle's 0.022 and 0.99
    shrunk = result("01-p0.1", {"l1": scores(0.9, fvu=0.209, shrinkage=0.551),
                                "topk": scores(0.9, fvu=0.108, shrinkage=1.1)},
                    oracle=scores(1.0, fvu=0.022, shrinkage=0.992))
    line = shrinkage_line([shrunk])
    assert line.startswith("The L1 SAE's FVU is far above the oracle's on 01-p0.1 (FVU 0.209 "
                           "against the oracle's 0.022; shrinkage 0.551 against 0.992): its L1 "
                           "penalty shrinks the codes")
    assert line in render_report(evaluation(shrunk), {})


def test_no_shrinkage_line_where_l1_is_close_to_the_oracle_unshrunk_or_absent():
    oracle = scores(1.0, fvu=0.02, shrinkage=0.99)
    close = result("a", {"l1": scores(0.9, fvu=0.05, shrinkage=0.6)}, oracle=oracle)   # 2.5x
    unshrunk = result("b", {"l1": scores(0.9, fvu=0.3, shrinkage=0.98)}, oracle=oracle)
    absent = result("c", {"topk": scores(0.9, fvu=0.3, shrinkage=0.5)}, oracle=oracle)
    assert shrinkage_line([close, unshrunk, absent]) == ""
    assert "shrinks the codes" not in render_report(evaluation(close, unshrunk), {})
