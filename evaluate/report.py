"""report.md: a summary, the method comparison, each instance, the errors, then the notes.

Every table ends with the oracle's row (the true directions coded by nonnegative OMP at the
dictionaries' k, see evaluate/oracle.py) and the chance row (as many random unit directions as
the dictionaries have atoms, coded the same way, see evaluate/chance.py), in italics:
references, never ranked or bold."""
from __future__ import annotations

import math

import numpy as np

from unsuperpose.data import files
from unsuperpose.evaluate.chance import CHANCE, CHANCE_DRAWS
from unsuperpose.evaluate.evaluation import Evaluation
from unsuperpose.evaluate.oracle import ORACLE
from unsuperpose.evaluate.scoring import metric_info, recovered_key

# the columns of the comparison and instance tables (every metric is in metrics.csv)
TABLE_METRICS = ("mmcs", "mmcs_abs", "matched_cos", "{recovered}", "mcc", "uniqueness", "f1",
                 "f1_vs_oracle", "code_correlation", "fvu", "l0", "target_l0", "dead_fraction",
                 "duplicate_fraction", "fit_seconds")
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
- *oracle* (the last row of every table, in italics; a reference, not ranked): the
  represented true directions themselves, scaled to unit norm, as the dictionary, each row
  coded by nonnegative OMP with at most k atoms, the k the dictionaries were fitted with. Its
  FVU, L0, F1 and code r are what a perfect dictionary reaches at that sparsity (up to OMP
  being greedy); its direction metrics are 1 by construction. **F1/oracle**: a method's F1
  over the oracle's on the same instance and rows.
- *random* (the row after the oracle, in italics; a reference, not ranked): as many random
  unit directions as the instance's dictionaries have atoms, coded the same way as the oracle,
  mean of {draws} draws: the chance floor. Random atoms already match true directions when
  they outnumber d (in d = 10, 40 random atoms reach an mcc of about 0.66), so a method's
  score means something only as far as it sits above this row.
- *ext:NAME*: a dictionary from outside the run (`evaluate --external NAME=PATH`), scored on
  the same rows against the same ground truth and listed under External dictionaries; it
  has no fit time, and its target L0 is the stage's.
"""


def fmt(metric: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if metric in ("fit_seconds",):
        return f"{value:.1f}"
    if metric in ("l0", "true_l0", "target_l0", "dead_latents", "n_components", "n_represented"):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{value:.3f}"


def table(rows: dict[str, dict[str, float]], metrics: list[str], bold_best: bool = True,
          reference: dict[str, dict[str, float]] | None = None) -> str:
    """A markdown table, methods as rows; the best value of each scored column in bold.
    `reference` rows (the oracle, the chance row) come last, in italics, and take no part in
    the bolding."""
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
    for meth, v in (reference or {}).items():
        cells = [_italic(fmt(m, v.get(m))) for m in metrics]
        lines.append(f"| *{reference_label(meth)}* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reference_label(method: str) -> str:
    """A reference row's name in the tables: "oracle (reference)", "random (chance)"."""
    return f"{method} (chance)" if method == CHANCE else f"{method} (reference)"


def references(oracle, chance) -> dict[str, dict[str, float]]:
    """The reference rows of a table, the oracle first: {name: scalars} of those scored."""
    return {name: sc for name, sc in ((ORACLE, oracle), (CHANCE, chance)) if sc is not None}


def _italic(cell: str) -> str:
    return cell if cell == "–" else f"*{cell}*"


def method_means(ev: Evaluation, metrics: list[str]) -> tuple[dict, dict]:
    """Per method, the mean over instances of each metric (NaN-skipping), and how many
    instances each method was scored on; the oracle and the chance row (when scored) under
    ORACLE and CHANCE, last."""
    means, counts = {}, {}
    scored_by = {m: [r.scores[m].scalars for r in ev.results if m in r.scores] for m in ev.methods}
    for name, attr in ((ORACLE, "oracle"), (CHANCE, "chance")):
        reference = [getattr(r, attr).scalars for r in ev.results
                     if getattr(r, attr, None) is not None]
        if reference:
            scored_by[name] = reference
    for method, scored in scored_by.items():
        counts[method] = len(scored)
        means[method] = {}
        for m in metrics:
            vals = [s[m] for s in scored if s.get(m) is not None and np.isfinite(s[m])]
            means[method][m] = float(np.mean(vals)) if vals else float("nan")
    return means, counts


L0_TOLERANCE = 0.1  # a method's L0 within 10% of its target counts as matched sparsity


def off_target(scalars: dict) -> bool:
    """Whether a dictionary's L0 on the evaluation rows is more than 10% from its target."""
    l0, target = scalars.get("l0"), scalars.get("target_l0")
    if l0 is None or not target or not np.isfinite(l0):
        return False
    return abs(l0 - target) > L0_TOLERANCE * target


def _off_target_text(r) -> str:
    off = [f"{m} (L0 {fmt('l0', sc.scalars['l0'])}, target {fmt('l0', sc.scalars['target_l0'])})"
           for m, sc in r.scores.items() if off_target(sc.scalars)]
    return ("Off the target sparsity (L0 more than 10% from the target): " + ", ".join(off)
            + ": compare these at their own L0, not at the others'.") if off else ""


def _truth(kinds: list[str]) -> str:
    """What the dictionaries are scored against: a toy model's represented directions, or a
    synthetic world's true directions (model kind "synthetic")."""
    if all(k == "synthetic" for k in kinds):
        return "the world's true directions"
    if "synthetic" in kinds:
        return "the true directions (the toy models' represented ones, the worlds' own)"
    return "the directions the toy model represents"


def _pct(value) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.0%}"


def _names(methods: list[str]) -> str:
    shown = [f"**{m}**" for m in methods]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def headline(methods: list[str], means: dict, threshold: float) -> str:
    """The summary's sentence on one-to-one recovery (rec@threshold, mean over instances):
    the best and the worst method, methods tied at the shown percentage named together, and a
    tie sentence where every method shows the same."""
    key = recovered_key(threshold)
    ranked = sorted(methods, key=lambda m: -np.nan_to_num(means[m][key], nan=-1))
    shown = {m: _pct(means[m][key]) for m in ranked}
    what = f"of the represented features at matched cos ≥ {threshold:g} on average"
    top = [m for m in ranked if shown[m] == shown[ranked[0]]]
    if len(ranked) == 1:
        m = ranked[0]
        return (f"One method, **{m}**: it recovers {shown[m]} {what} (mcc "
                f"{fmt('mcc', means[m]['mcc'])}, FVU {fmt('fvu', means[m]['fvu'])}).")
    if len(top) == len(ranked):
        spread = "; ".join(f"{label} {fmt(metric, min(v))}–{fmt(metric, max(v))}"
                           for metric, label in (("mcc", "mcc"), ("fvu", "FVU"))
                           for v in [[means[m][metric] for m in ranked
                                      if np.isfinite(means[m][metric])]] if v)
        return (f"A tie on one-to-one recovery: all {len(ranked)} methods recover "
                f"{shown[ranked[0]]} {what}" + (f" ({spread} across them)." if spread else "."))
    bottom = [m for m in ranked if shown[m] == shown[ranked[-1]]]
    if len(top) == 1:
        m = top[0]
        best = (f"Best one-to-one recovery: **{m}** recovers {shown[m]} {what} (mcc "
                f"{fmt('mcc', means[m]['mcc'])}, FVU {fmt('fvu', means[m]['fvu'])})")
    else:
        best = f"Best one-to-one recovery, tied: {_names(top)} recover {shown[top[0]]} {what}"
    worst = (f"worst: {bottom[0]} ({shown[bottom[0]]})" if len(bottom) == 1 else
             f"worst, tied: {', '.join(bottom)} ({shown[bottom[0]]})")
    return f"{best}; {worst}."


SHRINKAGE_FVU_RATIO = 3.0  # the L1 SAE's FVU this many times the oracle's (and 0.02 above it)


def shrinkage_line(results) -> str:
    """One line where the L1 SAE's FVU is far above the oracle's and its reconstructions are
    shrunk (shrinkage, the mean ||h^|| / ||h||, below the oracle's): the penalty on the codes'
    size, not the directions, is what costs it FVU there. Empty otherwise."""
    hits = []
    for r in results:
        l1, oracle = r.scores.get("l1"), r.oracle
        if l1 is None or oracle is None:
            continue
        a, o = l1.scalars, oracle.scalars
        fvu, ofvu, sh, osh = (a.get("fvu"), o.get("fvu"), a.get("shrinkage"), o.get("shrinkage"))
        if None in (fvu, ofvu, sh, osh) or not np.isfinite([fvu, ofvu, sh, osh]).all():
            continue
        if fvu > SHRINKAGE_FVU_RATIO * ofvu and fvu - ofvu > 0.02 and sh < osh - 0.02:
            hits.append(f"{r.instance.id} (FVU {fmt('fvu', fvu)} against the oracle's "
                        f"{fmt('fvu', ofvu)}; shrinkage {fmt('x', sh)} against {fmt('x', osh)})")
    if not hits:
        return ""
    return ("The L1 SAE's FVU is far above the oracle's on " + ", ".join(hits) + ": its L1 "
            "penalty shrinks the codes (shrinkage, the mean ‖ĥ‖/‖h‖, is below the oracle's), so "
            "much of that FVU is magnitude lost to the penalty, not directions missed; read its "
            "directions by MMCS and mcc.")


def render_report(ev: Evaluation, figures: dict[str, str]) -> str:
    threshold = max(ev.config.thresholds)
    metrics = [m.format(recovered=recovered_key(threshold)) for m in TABLE_METRICS]
    if len(ev.config.thresholds) > 1:
        metrics.insert(metrics.index(recovered_key(threshold)), recovered_key(min(ev.config.thresholds)))
    means, counts = method_means(ev, metrics)
    oracle_mean = {name: means.pop(name) for name in (ORACLE, CHANCE) if name in means}
    errors = [n for n in ev.notes if n.get("kind") == "error"]
    notes = [n for n in ev.notes if n.get("kind") != "error"]
    fig = lambda key: f"{files.FIGURES_DIR}/{figures[key]}"  # noqa: E731
    out = [f"# Evaluation of `{ev.run_dir}`", ""]

    # ---- summary ------------------------------------------------------------------------
    res = ev.results
    kinds = sorted({r.instance.model_kind for r in res})
    out += [f"{len(res)} instance(s) ({', '.join(kinds)}; n = {res[0].view['n_features']} "
            f"features in d = {res[0].view['d']}; feature probability "
            f"{', '.join(f'{r.probability:.3g}' for r in res)}), {len(ev.methods)} method(s), "
            f"each dictionary scored against {_truth(kinds)}"
            + (f" and on up to {ev.config.max_rows} activation rows per instance."
               if ev.config.max_rows else " (directions only: max_rows = 0).")]
    train_scored = [r.instance.id for r in res if r.instance.split != "heldout"]
    if train_scored:
        out += ["", f"**WARNING: {', '.join(train_scored)} {'has' if len(train_scored) == 1 else 'have'} "
                f"no held-out split** (generated with --heldout-rows 0, or before the split "
                f"existed), so {'its' if len(train_scored) == 1 else 'their'} "
                f"FVU, L0, F1 and code r are training-set numbers."]
    else:
        out += ["", "Every row-level score (FVU, L0, F1, code r) comes from held-out rows: "
                "`generate` drew them from a random stream of their own and `sae` never read them."]
    if ev.methods:
        out += ["", headline(ev.methods, means, threshold)]
    o = oracle_mean.get(ORACLE)
    if o is not None and np.isfinite(o["fvu"]):
        out += ["", f"Oracle (the true directions coded at the dictionaries' k): FVU "
                f"{fmt('fvu', o['fvu'])}, L0 {fmt('l0', o['l0'])}, F1 {fmt('f1', o['f1'])}, "
                f"code r {fmt('code_correlation', o['code_correlation'])}: the best a "
                f"dictionary can do at that sparsity."]
    c = oracle_mean.get(CHANCE)
    if c is not None:
        out += ["", f"Random (as many random unit directions as the dictionaries have atoms, "
                f"coded the same way, mean of {CHANCE_DRAWS} draws): mcc {fmt('mcc', c['mcc'])}, "
                f"MMCS {fmt('mmcs', c['mmcs'])}, {metric_info(recovered_key(threshold))[1]} "
                f"{fmt('x', c[recovered_key(threshold)])}, FVU {fmt('fvu', c['fvu'])}: the "
                f"chance floor; a score means something only as far as it is above it."]
    if errors:
        out += ["", f"**{len(errors)} dictionar{'y' if len(errors) == 1 else 'ies'} could not "
                f"be loaded or applied**: see Errors."]
    if notes:
        out += ["", f"{len(notes)} note(s) at the end: something was skipped."]
    externals = getattr(ev, "externals", None) or []
    if externals:
        out += ["", f"{len(externals)} external dictionar{'y' if len(externals) == 1 else 'ies'} "
                f"({', '.join(e.method for e in externals)}) scored beside the run's own: see "
                f"External dictionaries."]

    # ---- method comparison --------------------------------------------------------------
    out += ["", "## Method comparison (mean over instances)", ""]
    if ev.methods:
        out += [table(means, metrics, reference=oracle_mean)]
        off = sorted({m for r in res for m, sc in r.scores.items() if off_target(sc.scalars)})
        if off:
            out += ["", f"Off the target sparsity on some instance (L0 more than 10% from its "
                    f"target, see each instance): {', '.join(off)}."]
        shrunk = shrinkage_line(res)
        if shrunk:
            out += ["", shrunk]
        partial = [f"{m} ({counts[m]} of {len(res)})" for m in ev.methods if counts[m] < len(res)]
        if partial:
            out += ["", "Scored on fewer instances: " + ", ".join(partial) + "."]
    else:
        out += ["No dictionary could be scored; see the notes."]
    out += ["", DEFINITIONS.format(dup=ev.config.duplicate_cosine, draws=CHANCE_DRAWS)]
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
                f"mean D_i {fmt('x', v['mean_dimensionality'])}, interference (mean max |cos| "
                f"between them) {fmt('x', v.get('interference'))}. Evaluated on {v['rows']} "
                + ("held-out rows" if r.instance.split == "heldout" else "training rows (no held-out split)")
                + f" drawn from {v['candidate_rows']}"
                + (f"; stage 2 fitted on {', '.join(map(str, fit_rows))} training rows."
                   if fit_rows else "."),
                ""]
        if _off_target_text(r):
            out += [_off_target_text(r), ""]
        if r.scores:
            reference = references(*(None if sc is None else sc.scalars
                                     for sc in (r.oracle, getattr(r, "chance", None))))
            out += [table({m: r.scores[m].scalars for m in ev.methods if m in r.scores}, metrics,
                          reference=reference), ""]
        for key, alt in ((f"{iid}/toy_model", "W^T W, bias and feature norms"),
                         (f"{iid}/cosine", "cosine of true directions and matched atoms")):
            if key in figures:
                out += [f"![{iid}: {alt}]({fig(key)})", ""]

    # ---- errors and notes -----------------------------------------------------------
    def line(n):
        return f"- `{n['instance']}`{' / ' + n['method'] if n['method'] else ''}: {n['note']}"

    if externals:
        out += ["## External dictionaries", "",
                "Read from outside the run (`--external NAME=PATH`) and scored beside its own "
                "dictionaries, on the same evaluation rows:", ""]
        for e in externals:
            shas = ", ".join(f"`{name}` sha256 {sha[:16]}" for name, sha in e.sha256.items())
            out.append(f"- **{e.method}**: `{e.path}`: {e.description}; {shas}.")
        out.append("")
    if errors:
        out += ["## Errors", "", "These dictionaries could not be loaded or applied, and are "
                "missing from every table above:", ""] + [line(n) for n in errors] + [""]
    out += ["## Notes", ""]
    if notes:
        out += [line(n) for n in notes]
    else:
        out += ["Nothing was skipped."]
    return "\n".join(out) + "\n"
