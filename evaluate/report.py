"""report.md: a summary, the method comparison, each instance, then the notes."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from evaluate.scoring import metric_info, recovered_key

if TYPE_CHECKING:
    from evaluate.pipeline import Evaluation

# the columns of the comparison and instance tables (every metric is in metrics.csv)
TABLE_METRICS = ("mmcs", "mmcs_abs", "matched_cos", "{recovered}", "mcc", "uniqueness", "f1",
                 "code_correlation", "fvu", "l0", "dead_fraction", "duplicate_fraction",
                 "fit_seconds")
DEFINITIONS = """\
- **MMCS** (Sharkey et al. 2022): mean over represented true directions of the best cosine
  with any atom; **abs** uses |cos|, so a sign-flipped atom counts.
- **matched cos**, **rec@t**: one-to-one Hungarian matching of true directions to atoms on
  the signed cosine; the mean matched cosine (a direction left without an atom counts 0) and
  the fraction of directions whose matched cosine is at least t.
- **mcc**, **uniqueness**, **F1** (precision/recall in metrics.csv), **EV**, **shrinkage**,
  **dead**: SynthSAEBench's definitions (Chanin & Garriga-Alonso 2026; SAELens
  `sae_lens/synthetic/evals.py`): mcc is the mean |cos| over Hungarian pairs on |cos|;
  uniqueness the number of distinct true features the atoms pick as their best match, over
  the number of atoms; F1 scores each
  latent as a detector of its best-matching true feature (firing = nonzero code), averaged
  over latents. All three match on |cos|, which cannot tell the two features of an antipodal
  pair (W_j = −W_i, D_i = 1/2) apart: both atoms of a perfectly recovered pair pick the same
  feature, so on such instances uniqueness and F1 stay below 1 even for an exact dictionary.
- **code r**: over matched pairs, the correlation across rows of the atom's code with the true
  feature's value. **FVU**: Σ‖h − ĥ‖² / Σ‖h − h̄‖². **L0**: nonzero codes per row.
  **dead frac**: atoms that never fire on the evaluation rows. **dup frac**: atoms with
  another atom at cos > {dup:g}. **fit s**: stage-2 fit time.
"""


def fmt(metric: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if metric in ("fit_seconds",):
        return f"{value:.1f}"
    if metric in ("l0", "true_l0", "dead_latents", "n_components", "n_represented"):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{value:.3f}"


def table(rows: dict[str, dict[str, float]], metrics: list[str], bold_best: bool = True) -> str:
    """A markdown table, methods as rows; the best value of each scored column in bold."""
    header = "| method | " + " | ".join(metric_info(m)[1] for m in metrics) + " |"
    lines = [header, "|---|" + "---:|" * len(metrics)]
    best = {}
    for m in metrics:
        higher, _ = metric_info(m)
        shown = {meth: fmt(m, v.get(m)) for meth, v in rows.items()}
        values = [v[m] for v in rows.values() if v.get(m) is not None and not math.isnan(v[m])]
        if bold_best and higher is not None and len(values) > 1:
            target = fmt(m, max(values) if higher else min(values))
            best[m] = {meth for meth, s in shown.items() if s == target}
    for meth, v in rows.items():
        cells = [f"**{fmt(m, v.get(m))}**" if meth in best.get(m, ()) else fmt(m, v.get(m))
                 for m in metrics]
        lines.append(f"| {meth} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def method_means(ev: "Evaluation", metrics: list[str]) -> tuple[dict, dict]:
    """Per method, the mean over instances of each metric (NaN-skipping), and how many
    instances each method was scored on."""
    means, counts = {}, {}
    for method in ev.methods:
        scored = [r.scores[method].scalars for r in ev.results if method in r.scores]
        counts[method] = len(scored)
        means[method] = {}
        for m in metrics:
            vals = [s[m] for s in scored if s.get(m) is not None and np.isfinite(s[m])]
            means[method][m] = float(np.mean(vals)) if vals else float("nan")
    return means, counts


def render_report(ev: "Evaluation", figures: dict[str, str]) -> str:
    threshold = max(ev.config.thresholds)
    metrics = [m.format(recovered=recovered_key(threshold)) for m in TABLE_METRICS]
    if len(ev.config.thresholds) > 1:
        metrics.insert(metrics.index(recovered_key(threshold)), recovered_key(min(ev.config.thresholds)))
    means, counts = method_means(ev, metrics)
    fig = lambda key: f"figures/{figures[key]}"  # noqa: E731
    out = [f"# Evaluation of `{ev.run_dir}`", ""]

    # ---- summary ------------------------------------------------------------------------
    res = ev.results
    kinds = sorted({r.instance.model_kind for r in res})
    out += [f"{len(res)} instance(s) ({', '.join(kinds)}; n = {res[0].view['n_features']} "
            f"features in d = {res[0].view['d']}; feature probability "
            f"{', '.join(f'{r.probability:.3g}' for r in res)}), {len(ev.methods)} method(s), "
            f"each dictionary scored against the directions the toy model represents"
            + (f" and on up to {ev.config.max_rows} activation rows per instance."
               if ev.config.max_rows else " (directions only: max_rows = 0).")]
    if ev.methods:
        key = recovered_key(threshold)
        ranked = sorted(ev.methods, key=lambda m: -np.nan_to_num(means[m][key], nan=-1))
        top = ranked[0]
        out += ["", f"Best one-to-one recovery: **{top}** recovers {means[top][key]:.0%} of the "
                f"represented features at matched cos ≥ {threshold:g} on average (mcc "
                f"{fmt('mcc', means[top]['mcc'])}, FVU {fmt('fvu', means[top]['fvu'])}); "
                f"worst: {ranked[-1]} ({means[ranked[-1]][key]:.0%})."]
    if ev.notes:
        out += ["", f"{len(ev.notes)} note(s) at the end: something was skipped."]

    # ---- method comparison --------------------------------------------------------------
    out += ["", f"## Method comparison (mean over instances)", ""]
    if ev.methods:
        out += [table(means, metrics)]
        partial = [f"{m} ({counts[m]} of {len(res)})" for m in ev.methods if counts[m] < len(res)]
        if partial:
            out += ["", "Scored on fewer instances: " + ", ".join(partial) + "."]
    else:
        out += ["No dictionary could be scored; see the notes."]
    out += ["", DEFINITIONS.format(dup=ev.config.duplicate_cosine)]
    for key, alt in (("headline", "recovery against feature probability"),
                     ("dimensionality", "feature dimensionality against feature probability"),
                     ("recovery_vs_dimensionality", "per-feature recovery against D_i")):
        if key in figures:
            out += [f"![{alt}]({fig(key)})", ""]

    # ---- each instance ------------------------------------------------------------------
    for r in res:
        v, iid = r.view, r.instance.id
        fit_rows = sorted({n for n in r.fit_rows.values() if n is not None})
        out += [f"## Instance `{iid}` (feature probability {r.probability:.3g})", "",
                f"Toy model: ‖W‖²_F = {v['frobenius_norm_sq']:.3g}, d / ‖W‖²_F = "
                f"{v['dimensions_per_feature']:.3g} dimensions per feature; "
                f"{v['n_represented']} of {v['n_true_directions']} true directions represented, "
                f"mean D_i {fmt('x', v['mean_dimensionality'])}. Evaluated on {v['rows']} rows "
                f"drawn from {v['candidate_rows']}"
                + (f" (stage 2 fitted on {', '.join(map(str, fit_rows))} of them)." if fit_rows else "."),
                ""]
        if r.scores:
            out += [table({m: r.scores[m].scalars for m in ev.methods if m in r.scores}, metrics), ""]
        for key, alt in ((f"{iid}/toy_model", "W^T W, bias and feature norms"),
                         (f"{iid}/cosine", "cosine of true directions and matched atoms")):
            if key in figures:
                out += [f"![{iid}: {alt}]({fig(key)})", ""]

    # ---- notes --------------------------------------------------------------------------
    out += ["## Notes", ""]
    if ev.notes:
        out += [f"- `{n['instance']}`{' / ' + n['method'] if n['method'] else ''}: {n['note']}"
                for n in ev.notes]
    else:
        out += ["Nothing was skipped."]
    return "\n".join(out) + "\n"
