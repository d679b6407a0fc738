"""Every metric of one dictionary against one instance's ground truth, as plain numbers.

The recovery metrics use the represented true directions G only: a feature the toy model
dropped has no direction to recover. The code-level metrics need sample rows; with none (or
no represented feature) the metrics that need them are left out, not set to 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from unsuperpose.evaluate import code_metrics as cm
from unsuperpose.evaluate import metrics as gm

# name -> (higher is better?, short label for tables); None: neither (context, not a score)
METRICS = {
    "mmcs": (True, "MMCS"),
    "mmcs_abs": (True, "MMCS abs"),
    "reverse_mmcs": (True, "rev. MMCS"),
    "reverse_mmcs_abs": (True, "rev. MMCS abs"),
    "matched_cos": (True, "matched cos"),
    "mcc": (True, "mcc"),
    "uniqueness": (True, "uniqueness"),
    "precision": (True, "precision"),
    "recall": (True, "recall"),
    "f1": (True, "F1"),
    "f1_vs_oracle": (True, "F1/oracle"),
    "code_correlation": (True, "code r"),
    "explained_variance": (True, "EV"),
    "fvu": (False, "FVU"),
    "shrinkage": (None, "shrinkage"),
    "l0": (None, "L0"),
    "target_l0": (None, "L0 target"),
    "true_l0": (None, "true L0"),
    "dead_latents": (False, "dead"),
    "dead_fraction": (False, "dead frac"),
    "duplicate_fraction": (False, "dup frac"),
    "fit_seconds": (False, "fit s"),
    "n_components": (None, "atoms"),
    "n_represented": (None, "true dirs"),
    "k": (None, "k"),
    "draws": (None, "draws"),
}


def recovered_key(threshold: float) -> str:
    """The metric name of the recovered fraction at `threshold`, e.g. recovered_0.99."""
    return f"recovered_{threshold:g}"


def metric_info(name: str) -> tuple[bool | None, str]:
    """(higher is better?, label) of a metric name, recovered_<t> included."""
    if name.startswith("recovered_"):
        return True, f"rec@{name.split('_', 1)[1]}"
    return METRICS[name]


@dataclass
class Scores:
    scalars: dict[str, float]
    """metric name -> value."""
    per_feature: dict[str, np.ndarray] = field(default_factory=dict)
    """metric name -> [n_true] values, one per represented true direction."""
    atom_order: np.ndarray | None = None
    """[n_atoms]: atoms in the order of the true directions they are matched to (signed
    Hungarian), unmatched atoms last; for the cosine-matrix figure."""


def score_dictionary(G: np.ndarray, A: np.ndarray, H: np.ndarray, H_hat: np.ndarray,
                     codes: np.ndarray, true_acts: np.ndarray, thresholds: tuple[float, ...],
                     duplicate_cosine: float) -> Scores:
    """G [n_true, d] represented true directions; A [n_atoms, d] atoms; H, H_hat [rows, d]
    evaluation rows and their reconstructions; codes [rows, n_atoms]; true_acts [rows, n_true].
    """
    s = {"n_components": len(A), "n_represented": len(G),
         "duplicate_fraction": gm.duplicate_fraction(A, duplicate_cosine)}
    out = Scores(s)
    has_rows = len(H) > 0
    if has_rows:
        s.update(fvu=cm.fvu(H, H_hat), explained_variance=cm.explained_variance(H, H_hat),
                 shrinkage=cm.shrinkage(H, H_hat), l0=cm.l0(codes),
                 dead_latents=cm.dead_latents(codes))
        s["dead_fraction"] = s["dead_latents"] / max(len(A), 1)
    if len(G) == 0:
        return out
    # each matching once, handed to every metric that reads it: the signed Hungarian one
    # (matched_cos, recovered_<t>, the atom order, code r), the one on |cos| (mcc), and each
    # atom's best true feature by |cos| (uniqueness, precision/recall/F1)
    C = gm.cosine_matrix(G, A)
    signed_match = gm.hungarian_match(G, A, C=C)
    abs_match = gm.hungarian_match(G, A, signed=False, C=C)
    best = gm.best_true_feature(A, G)
    matched = gm.matched_cosines(G, A, match=signed_match)  # [n_true], NaN where unmatched
    true_index, atom_index, _ = signed_match
    s.update(mmcs=gm.mmcs(G, A), mmcs_abs=gm.mmcs(G, A, signed=False),
             reverse_mmcs=gm.mmcs(A, G), reverse_mmcs_abs=gm.mmcs(A, G, signed=False),
             matched_cos=float(np.nan_to_num(matched, nan=0.0).mean()),
             mcc=gm.mcc(G, A, abs_match=abs_match), uniqueness=gm.uniqueness(G, A, best=best))
    for t in thresholds:
        s[recovered_key(t)] = gm.recovered_fraction(matched, t)
    out.per_feature = {"best_cos": gm.per_feature_max_cosine(G, A),
                       "best_abs_cos": gm.per_feature_max_cosine(G, A, signed=False),
                       "matched_cos": matched}
    order = atom_index[np.argsort(true_index)]
    out.atom_order = np.concatenate([order, np.setdiff1d(np.arange(len(A)), order)])
    if has_rows:
        s["true_l0"] = float(np.count_nonzero(true_acts, axis=1).mean())
        s.update(cm.firing_classification(codes, true_acts, A, G, best=best))
        r = cm.code_correlation(codes, true_acts, atom_index, true_index)
        s["code_correlation"] = float(r.mean())
        per = np.full(len(G), np.nan)
        per[true_index] = r
        out.per_feature["code_correlation"] = per
    return out
