"""The figures of the report. Each plot function takes arrays and returns a Figure;
`save_figures` draws them all for an evaluation and writes the PNGs.

Colours: one fixed colour per method family from the Okabe-Ito palette, which stays
distinguishable under the common colour-vision deficiencies, and a marker per method;
diverging maps (cosines, W^T W) are RdBu centred on 0, sequential ones cividis.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from unsuperpose.data import files  # noqa: E402
from unsuperpose.evaluate import metrics as gm  # noqa: E402
from unsuperpose.evaluate.evaluation import Evaluation  # noqa: E402
from unsuperpose.evaluate.chance import CHANCE  # noqa: E402
from unsuperpose.evaluate.oracle import ORACLE, unit_rows  # noqa: E402
from unsuperpose.evaluate.scoring import recovered_key  # noqa: E402

# Okabe-Ito without its yellow, which is faint on white
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#000000", "#56B4E9"]
MARKERS = ["o", "s", "D", "^", "v", "P", "X", "*", "<", ">"]
DPI = 110
# the paper's feature-dimensionality fractions (Elhage et al. 2022, "Feature Dimensionality")
DIMENSION_FRACTIONS = (1, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 1 / 3)
NONNEGATIVE_SUFFIX = "_nn"
EXTERNAL_MARKERS = ["h", "p", "8", "d"]  # an external dictionary's (ext:NAME), none of ours
# the oracle (the true directions as a dictionary) is a reference: grey, dotted, drawn last
ORACLE_STYLE = {"color": "0.45", "marker": "*", "linestyle": ":"}
# the chance row (random directions as a dictionary) is the other reference: light grey, dashed
CHANCE_STYLE = {"color": "0.65", "marker": "x", "linestyle": "--"}


def method_style(method: str) -> dict:
    """Colour, marker and line style of a method, fixed by its place in the sae registry: a
    nonnegative variant (`ksvd_nn`) takes its family's colour (`ksvd`) with a dashed line;
    an external dictionary (ext:NAME) is dash-dotted, with a marker none of ours uses; the
    oracle is grey and dotted, the chance row light grey and dashed."""
    from unsuperpose.evaluate.external import EXTERNAL_PREFIX, is_external
    from unsuperpose.sae import METHODS

    if method == ORACLE:
        return dict(ORACLE_STYLE)
    if method == CHANCE:
        return dict(CHANCE_STYLE)
    if is_external(method):  # dash-dot, from the end of the palette, by name
        i = sum(map(ord, method.removeprefix(EXTERNAL_PREFIX)))
        return {"color": PALETTE[-1 - i % len(PALETTE)],
                "marker": EXTERNAL_MARKERS[i % len(EXTERNAL_MARKERS)], "linestyle": "-."}
    names = list(METHODS)
    families = list(dict.fromkeys(m.removesuffix(NONNEGATIVE_SUFFIX) for m in names))
    family = method.removesuffix(NONNEGATIVE_SUFFIX)
    i = families.index(family) if family in families else len(families) + len(family)
    j = names.index(method) if method in names else len(names) + len(method)
    return {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[j % len(MARKERS)],
            "linestyle": "--" if method.endswith(NONNEGATIVE_SUFFIX) else "-"}


def method_label(method: str) -> str:
    """A method's name in legends and panel titles; the oracle is marked as the reference,
    the chance row as chance, an external dictionary as external."""
    from unsuperpose.evaluate.external import is_external

    if is_external(method):
        return f"{method} (external)"
    if method == CHANCE:
        return f"{method} (chance)"
    return f"{method} (reference)" if method == ORACLE else method


def _panel_grid(n_panels: int, panel: tuple[float, float]) -> tuple[Figure, np.ndarray, plt.Axes]:
    """Up to 4 panels a row, a colorbar axis on the right; margins set by hand in inches
    (constrained layout took 3x as long to draw these grids)."""
    cols = min(4, n_panels)
    rows = -(-n_panels // cols)
    w, h = panel[0] * cols + 1.9, panel[1] * rows + 1.1
    fig, axes = plt.subplots(rows, cols, figsize=(w, h), squeeze=False)
    fig.subplots_adjust(left=0.75 / w, right=1 - 1.2 / w, bottom=0.55 / h, top=1 - 0.75 / h,
                        wspace=0.3, hspace=0.55 * 2.9 / panel[1])
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    cax = fig.add_axes((1 - 0.95 / w, 0.15, 0.15 / w, 0.7))
    return fig, axes, cax


def plot_recovery_vs_probability(probability: dict[str, np.ndarray], mmcs: dict[str, np.ndarray],
                                 recovered: dict[str, np.ndarray], threshold: float) -> Figure:
    """The headline: per method, MMCS and the fraction of represented features recovered
    (matched cos >= threshold) against the instances' feature probability.
    Each dict maps method -> [n_instances] values (NaN where not scored)."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), sharex=True, constrained_layout=True)
    panels = [(mmcs, "MMCS (mean best cosine per true feature)"),
              (recovered, f"fraction recovered (matched cos ≥ {threshold:g})")]
    for ax, (values, label) in zip(axes, panels):
        for method, y in values.items():
            x = probability[method]
            order = np.argsort(x)
            ax.plot(x[order], y[order], label=method_label(method), lw=1.8, ms=6, alpha=0.9,
                    **method_style(method))
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("feature probability 1 − S (log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title("best cosine per feature")
    axes[1].set_title("one-to-one (Hungarian) recovery")
    axes[1].legend(title="method", loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.suptitle("Recovering the toy model's features, by feature probability")
    return fig


def plot_feature_dimensionality(probability: list[np.ndarray], dimensionality: list[np.ndarray],
                                represented: list[np.ndarray], dims_per_feature: list[float],
                                instance_probability: list[float]) -> Figure:
    """Elhage et al.'s feature-dimensionality plot: D_i of every true direction (points;
    hollow for one the model does not represent) and d / ||W||_F^2 (line) against feature
    probability, one column of points per instance. Lists hold one array per instance."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5), constrained_layout=True)
    for f in DIMENSION_FRACTIONS:
        ax.axhline(f, color="0.75", lw=0.8, ls=":", zorder=0)
        ax.text(1.005, f, f"{f:.2g}", transform=ax.get_yaxis_transform(), va="center",
                fontsize=8, color="0.4")
    rng = np.random.default_rng(0)  # horizontal jitter only, so overlapping points show
    labels = {True: "D_i of a represented direction", False: "not represented"}
    for p, D, rep in zip(probability, dimensionality, represented):
        x = p * np.exp(rng.uniform(-0.08, 0.08, size=len(D)))
        for flag in (True, False):
            mask = rep == flag
            ax.scatter(x[mask], D[mask], s=16, lw=0.8, alpha=0.6, label=labels.pop(flag, None),
                       color="#0072B2" if flag else "none", edgecolors="#0072B2" if flag else "0.5")
    order = np.argsort(instance_probability)
    ax.plot(np.asarray(instance_probability)[order], np.asarray(dims_per_feature)[order],
            color="#D55E00", marker="s", lw=2, label="d / ‖W‖²_F (dimensions per feature)")
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.1)
    ax.set_xlabel("feature probability 1 − S (log scale)")
    ax.set_ylabel("dimensions per feature")
    ax.set_title("Feature dimensionality D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)²")
    ax.legend(loc="upper left", frameon=False)
    ax.grid(alpha=0.3, axis="x", which="both")
    return fig


def plot_recovery_vs_dimensionality(dimensionality: dict[str, np.ndarray],
                                    best_cos: dict[str, np.ndarray],
                                    probability: dict[str, np.ndarray], threshold: float) -> Figure:
    """Per method (one panel each), every represented true direction of every instance:
    its best cosine with any atom against its dimensionality D_i, coloured by its instance's
    feature probability."""
    methods = list(best_cos)
    fig, axes, cax = _panel_grid(len(methods), (3.0, 2.6))
    all_p = np.concatenate([probability[m] for m in methods])
    norm = LogNorm(vmin=all_p.min(), vmax=max(all_p.max(), all_p.min() * 1.0001))
    lo = min(0.0, min(np.nanmin(best_cos[m]) for m in methods))
    for ax, method in zip(axes.flat, methods):
        points = ax.scatter(dimensionality[method], best_cos[method], c=probability[method],
                            cmap="cividis", norm=norm, s=14, alpha=0.8, lw=0)
        ax.axhline(threshold, color="0.5", ls="--", lw=0.8)
        ax.set_ylim(lo - 0.03, 1.03)
        ax.set_title(method_label(method), color=method_style(method)["color"], fontweight="bold")
        ax.set_xlabel("feature dimensionality D_i")
        ax.set_ylabel("best cosine with an atom")
        ax.grid(alpha=0.3)
    fig.colorbar(points, cax=cax, label="feature probability 1 − S")
    fig.suptitle(f"Per-feature recovery against dimensionality (dashed: cos = {threshold:g})")
    return fig


def plot_toy_model(W: np.ndarray, b: np.ndarray | None, title: str) -> Figure:
    """The paper's view of one toy model: W^T W [n, n] and the bias b [n] as heatmaps, and
    the norm ||W_i|| of each feature coloured by its superposition sum_{j!=i} (W^_i.W_j)^2,
    all three on the same feature axis."""
    W = np.asarray(W, dtype=np.float64)  # [d, n]
    n = W.shape[1]
    fig, axes = plt.subplots(1, 3, figsize=(11, 4.6), constrained_layout=True, sharey=True,
                             gridspec_kw={"width_ratios": [4, 0.3, 2.4]})
    wtw = W.T @ W
    lim = max(np.abs(wtw).max(), 1e-9)
    extent = (-0.5, n - 0.5, n - 0.5, -0.5)
    im = axes[0].imshow(wtw, cmap="RdBu", vmin=-lim, vmax=lim, interpolation="nearest",
                        aspect="auto", extent=extent)
    axes[0].set_title("WᵀW")
    axes[0].set_xlabel("feature j")
    axes[0].set_ylabel("feature i")
    fig.colorbar(im, ax=axes[0], location="bottom", shrink=0.6, pad=0.02, label="Wᵀ_i W_j")
    if b is not None:
        blim = max(np.abs(b).max(), 1e-9)
        axes[1].imshow(np.asarray(b)[:, None], cmap="RdBu", vmin=-blim, vmax=blim, aspect="auto",
                       interpolation="nearest", extent=(-0.5, 0.5, n - 0.5, -0.5))
        axes[1].set_title(f"b\n(±{blim:.2g})", fontsize=9)
    else:
        axes[1].text(0, n / 2, "no bias", rotation=90, ha="center", va="center")
        axes[1].set_xlim(-0.5, 0.5)
    axes[1].set_xticks([])
    sup = np.clip(gm.superposition(W), 0, 1)
    cmap = plt.get_cmap("cividis")
    axes[2].barh(np.arange(n), np.linalg.norm(W, axis=0), color=cmap(sup), height=0.8)
    axes[2].set_ylim(n - 0.5, -0.5)
    axes[2].set_xlabel("‖W_i‖")
    axes[2].set_title("feature norms")
    fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1)), ax=axes[2],
                 label="superposition Σ_j≠i (Ŵ_i·W_j)²", shrink=0.8)
    fig.suptitle(title)
    return fig


def plot_cosine_matrices(G: np.ndarray, atoms: dict[str, np.ndarray], title: str,
                         subtitles: dict[str, str]) -> Figure:
    """Per method, cos(true direction i, atom j) [n_true, n_atoms], atoms reordered to their
    matched true direction (so a perfect recovery is a diagonal of 1s), unmatched atoms last."""
    methods = list(atoms)
    fig, axes, cax = _panel_grid(len(methods), (3.0, 2.9))
    for ax, method in zip(axes.flat, methods):
        im = ax.imshow(gm.cosine_matrix(G, atoms[method]), cmap="RdBu", vmin=-1, vmax=1,
                       interpolation="nearest", aspect="auto")
        ax.set_title(f"{method_label(method)}\n{subtitles.get(method, '')}", fontsize=9,
                     color=method_style(method)["color"])
        ax.set_xlabel("matched atom")
        ax.set_ylabel("true direction")
    fig.colorbar(im, cax=cax, label="cosine")
    fig.suptitle(title)
    return fig


def save_figures(ev: Evaluation, folder: Path) -> dict[str, str]:
    """Draw and write every figure of `ev` under `folder`; returns {key: file name}, keys
    'headline', 'dimensionality', 'recovery_vs_dimensionality', '<instance>/toy_model',
    '<instance>/cosine'."""
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    def save(key: str, name: str, fig: Figure) -> None:
        fig.savefig(folder / name, dpi=DPI)
        plt.close(fig)
        written[key] = name

    threshold = max(ev.config.thresholds)
    scored = {m: [r for r in ev.results if m in r.scores] for m in ev.methods}
    if scored and any(r.oracle is not None for r in ev.results):
        scored[ORACLE] = [r for r in ev.results if r.oracle is not None]  # the references, last
    if scored and any(getattr(r, "chance", None) is not None for r in ev.results):
        scored[CHANCE] = [r for r in ev.results if getattr(r, "chance", None) is not None]

    def scores_of(r, m):
        return {ORACLE: r.oracle, CHANCE: getattr(r, "chance", None)}.get(m) or r.scores[m]

    def per_instance(key: str) -> dict[str, np.ndarray]:
        return {m: np.array([scores_of(r, m).scalars.get(key, np.nan) for r in rs])
                for m, rs in scored.items()}

    if scored:
        save("headline", files.HEADLINE_FIGURE, plot_recovery_vs_probability(
            {m: np.array([r.probability for r in rs]) for m, rs in scored.items()},
            per_instance("mmcs"), per_instance(recovered_key(threshold)), threshold))
    gts = [r.instance.gt for r in ev.results]
    save("dimensionality", files.DIMENSIONALITY_FIGURE, plot_feature_dimensionality(
        [gt[files.GT_PROBABILITY][gt[files.GT_FEATURE_INDEX]] for gt in gts],
        [gt[files.GT_DIMENSIONALITY] for gt in gts],
        [gt[files.GT_REPRESENTED].astype(bool) for gt in gts],
        [r.view["dimensions_per_feature"] for r in ev.results],
        [r.probability for r in ev.results]))
    # per-feature scores exist where the instance represents some feature
    featured = {m: [r for r in rs if scores_of(r, m).per_feature] for m, rs in scored.items()}
    featured = {m: rs for m, rs in featured.items() if rs}
    if featured:
        save("recovery_vs_dimensionality", files.RECOVERY_VS_DIMENSIONALITY_FIGURE,
             plot_recovery_vs_dimensionality(
                 {m: np.concatenate([r.instance.gt[files.GT_DIMENSIONALITY][r.instance.represented]
                                     for r in rs]) for m, rs in featured.items()},
                 {m: np.concatenate([scores_of(r, m).per_feature["best_cos"] for r in rs])
                  for m, rs in featured.items()},
                 {m: np.concatenate([np.full(r.view["n_represented"], r.probability) for r in rs])
                  for m, rs in featured.items()}, threshold))
    for r in ev.results:
        inst = r.instance
        save(f"{inst.id}/toy_model", files.TOY_MODEL_FIGURE.format(instance=inst.id),
             plot_toy_model(inst.W, inst.b, f"{inst.id}: {inst.model_kind} toy model, "
                                            f"‖W‖²_F = {r.view['frobenius_norm_sq']:.3g}, "
                                            f"d/‖W‖²_F = {r.view['dimensions_per_feature']:.3g}"))
        matched = {m: r.atoms[m][r.scores[m].atom_order] for m in r.scores
                   if r.scores[m].atom_order is not None}
        if matched and r.oracle is not None and r.oracle.atom_order is not None:
            matched[ORACLE] = unit_rows(inst.G)[r.oracle.atom_order]
        if matched:
            subtitles = {m: f"rec@{threshold:g} = "
                            f"{scores_of(r, m).scalars[recovered_key(threshold)]:.2f}"
                         for m in matched}
            save(f"{inst.id}/cosine", files.COSINE_FIGURE.format(instance=inst.id),
                 plot_cosine_matrices(inst.G, matched, f"{inst.id}: true directions × matched atoms",
                                      subtitles))
    return written
