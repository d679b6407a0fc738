"""The chance row: random unit directions, scored as a dictionary.

A dictionary of n_atoms directions drawn uniformly on the unit sphere of the activation space
already matches some true directions well when n_atoms is large against d: in d = 10, 40
random atoms reach an mcc of about 0.66 against 40 true directions. That is the floor a
learnt dictionary's scores must be read against. The random atoms have the count of the
instance's dictionaries and are coded exactly as the oracle codes the true directions
(`oracle.oracle_codes`: nonnegative OMP with at most k atoms, the dictionaries' k), then
scored by `scoring.score_dictionary`; the row is the mean over CHANCE_DRAWS draws. Like the
oracle it is a reference: never ranked, never bold. Every function here is a pure function of
arrays and a seed; its generator is its own, so no other number of a run changes.
"""
from __future__ import annotations

import warnings
import zlib
from collections import Counter

import numpy as np

from unsuperpose.evaluate.oracle import oracle_codes
from unsuperpose.evaluate.scoring import Scores, score_dictionary

CHANCE = "random"
"""The chance row's method name in metrics.json, metrics.csv, the report and the figures."""
CHANCE_DRAWS = 3
"""Random dictionaries drawn per instance; the row is the mean of their scores."""


def random_directions(n_atoms: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """[n_atoms, d] float32 rows drawn uniformly on the unit sphere (normalised Gaussians)."""
    if n_atoms < 1 or d < 1:
        raise ValueError(f"n_atoms and d must be >= 1, got n_atoms={n_atoms}, d={d}")
    A = rng.standard_normal((n_atoms, d))
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    while (norms == 0).any():  # probability 0 in float64; redrawn rather than divided by 0
        zero = norms[:, 0] == 0
        A[zero] = rng.standard_normal((int(zero.sum()), d))
        norms = np.linalg.norm(A, axis=1, keepdims=True)
    return (A / norms).astype(np.float32)


def chance_generator(seed: int, instance_id: str) -> np.random.Generator:
    """The chance row's generator for one instance: from the evaluate seed and the instance id
    (crc32), so instances draw different directions and a rerun draws the same ones."""
    return np.random.default_rng([int(seed), zlib.crc32(instance_id.encode())])


def chance_size(counts: list) -> tuple[int | None, str | None]:
    """The number of random atoms from the n_components of an instance's dictionaries: (n,
    None) when they agree; the most common (the largest among equally common ones) with a note
    when they differ; (None, None) when there is none."""
    valid = [int(n) for n in counts if isinstance(n, (int, np.integer)) and n >= 1]
    if not valid:
        return None, None
    tally = Counter(valid)
    n = max(tally, key=lambda size: (tally[size], size))
    if len(tally) == 1:
        return n, None
    sizes = ", ".join(str(s) for s in sorted(tally))
    return n, (f"the dictionaries have different sizes ({sizes} atoms): the random row uses "
               f"the most common, {n} atoms")


def score_chance(G: np.ndarray, H: np.ndarray, true_acts: np.ndarray, k: int, n_atoms: int,
                 thresholds: tuple[float, ...], duplicate_cosine: float,
                 rng: np.random.Generator, draws: int = CHANCE_DRAWS) -> Scores:
    """Every metric of `score_dictionary` for `draws` dictionaries of `n_atoms` random unit
    directions, each coded as the oracle codes (nonnegative OMP, at most k atoms), averaged
    over the draws (per-feature values too, NaN-skipping); scalars also `k` (as used, after
    capping at n_atoms) and `draws`. G [n_true, d] represented true directions; H [rows, d];
    true_acts [rows, n_true]. No atom order: a random dictionary has no matched view."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if len(G) == 0:
        raise ValueError("the chance row needs at least one represented true direction")
    d = np.asarray(G).shape[1]
    runs = []
    for _ in range(draws):
        atoms, codes, H_hat = oracle_codes(random_directions(n_atoms, d, rng), H, k)
        runs.append(score_dictionary(G, atoms, H, H_hat, codes, true_acts, thresholds,
                                     duplicate_cosine))
    scalars = {name: _mean([r.scalars[name] for r in runs]) for name in runs[0].scalars}
    scalars.update(k=min(int(k), int(n_atoms)), draws=draws)
    with warnings.catch_warnings():  # a feature unmatched in every draw stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        per_feature = {name: np.nanmean(np.stack([r.per_feature[name] for r in runs]), axis=0)
                       for name in runs[0].per_feature}
    return Scores(scalars, per_feature)


def _mean(values: list):
    """The mean of one metric over the draws; a count every draw agrees on stays an int."""
    if all(isinstance(v, (int, np.integer)) for v in values) and len(set(values)) == 1:
        return int(values[0])
    return float(np.mean(values))
