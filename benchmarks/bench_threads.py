"""Threads never hurt (issue 28): `--threads auto` against 1 thread and torch's old default.

    python benchmarks/bench_threads.py [--scale 0.5]

One fit of each family (a TopK SAE, MOD, a plain L1 SAE, and a TopK SAE large enough for
`auto` to use the free cores) and `make paper`'s slowest section (geometry: 20 relu_output
models n=400, m=30, batch 256; 50 steps of the paper's 3000 by default), each timed in a fresh
process per thread setting:

- `1`: torch.set_num_threads(1), what the README's timings used;
- `auto`: the default now (data/threads.py): OpenMP waits passively, the count chosen per fit
  from its size and the free cores;
- `old`: torch's default before issue 28: one thread per core, OpenMP spinning (torch is
  imported before unsuperpose, so OMP_WAIT_POLICY stays unset).

Quiet, then beside two CPU-bound busy processes that this script starts and stops. Each
time is shown in seconds and as a ratio to the `1` reference of the same condition (lower is
faster; `auto` should never be much above 1.00). Sizes are small so that the whole run,
`old` under load included, takes a few minutes; --scale multiplies the steps.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("1", "auto", "old")
WORKLOADS = ("topk", "mod", "l1", "topk_large", "paper_geometry")


def _child(mode: str, scale: float) -> dict:
    """Run every workload under `mode`; {workload: seconds, "threads": {workload: n}}."""
    if mode == "old":
        import torch  # before unsuperpose: OpenMP starts without OMP_WAIT_POLICY

    from unsuperpose.data import threads

    if mode == "old":
        threads.set_threads(threads.usable_cores())  # explicit: the fits keep every core
    else:
        threads.set_threads(mode)  # what a command does with --threads auto / 1
    import torch

    from unsuperpose.generate.paper.common import train_grid
    from unsuperpose.generate.paper.geometry import densities
    from unsuperpose.sae import MOD, L1SAE, TopKSAE

    gen = torch.Generator().manual_seed(0)
    steps = lambda n, per=1: max(2, int(n * scale) // per)  # noqa: E731

    def sparse_rows(rows, d, n, k):  # k-sparse nonnegative codes of n unit atoms in d dims
        atoms = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1)
        codes = torch.zeros(rows, n)
        idx = torch.rand(rows, n, generator=gen).argsort(dim=1)[:, :k]
        codes.scatter_(1, idx, torch.rand(rows, k, generator=gen))
        return codes @ atoms

    H_small = sparse_rows(16384, 32, 128, 4)
    H_large = sparse_rows(8192, 256, 2048, 8)
    p = densities(20).tolist()
    fits = {
        "topk": lambda s: TopKSAE(n_components=256, k=4, batch_size=128,
                                  n_steps=steps(s)).fit(H_small),
        "mod": lambda s: MOD(n_components=128, k=4, n_iter=steps(s, 40)).fit(H_small),
        "l1": lambda s: L1SAE(n_components=256, l1_coefficient=1e-3, batch_size=128,
                              n_steps=steps(s)).fit(H_small),
        "topk_large": lambda s: TopKSAE(n_components=2048, k=8, batch_size=1024,
                                        n_steps=steps(s, 8)).fit(H_large),
        "paper_geometry": lambda s: train_grid("relu_output", 400, 30, p, steps=steps(s, 4),
                                               batch_size=256, lr=3e-3, seed=30, device="cpu"),
    }
    out = {"threads": {}}
    for name, fit in fits.items():
        fit(16)  # warm-up: thread pool, caches, the OMP kernel's compile
        started = time.perf_counter()
        fit(400)
        out[name] = time.perf_counter() - started
        out["threads"][name] = threads.last_fit_threads()  # the fit's own choice
    return out


def _run_child(mode: str, scale: float) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    result = subprocess.run([sys.executable, __file__, "--child", mode, "--scale", str(scale)],
                            env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _busy(n: int) -> list[subprocess.Popen]:
    """`n` CPU-bound processes (a Python loop each); stopped by the caller."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.5,
                        help="multiplies every step count (1: 400 SAE steps, 10 MOD iterations, "
                             "100 paper steps)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.scale)))
        return

    from unsuperpose.data.threads import usable_cores

    print(f"cores usable: {usable_cores()}; load before: {os.getloadavg()[0]:.2f}; "
          f"python {sys.version.split()[0]}")
    started = time.perf_counter()
    results = {}
    for condition in ("quiet", "loaded"):
        busy = _busy(2) if condition == "loaded" else []
        try:
            time.sleep(1.0 if busy else 0.0)  # let the busy ones show in /proc/loadavg
            for mode in MODES:
                results[condition, mode] = _run_child(mode, args.scale)
        finally:
            for proc in busy:
                proc.terminate()
            for proc in busy:
                proc.wait()
    print()
    print("| work | condition | 1 thread | auto | old default (all cores, spinning) |")
    print("|---|---|---:|---:|---:|")
    for name in WORKLOADS:
        for condition in ("quiet", "loaded"):
            ref = results[condition, "1"][name]
            cells = []
            for mode in MODES:
                r = results[condition, mode]
                cells.append(f"{r[name] / ref:.2f} ({r[name]:.2f} s, {r['threads'][name]} thr)")
            print(f"| {name} | {condition} | " + " | ".join(cells) + " |")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
