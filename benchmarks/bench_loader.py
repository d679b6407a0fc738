"""Loader speed: rows/s of the `datasets` views against reading the shards directly.

    python benchmarks/bench_loader.py [--rows 1000000] [--d 64] [--batch 4096]

DESIGN.md asks that the loader never be what limits SAE training; the direct read
(memory-mapped safetensors, copied into one array) is the reference measured in the same run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from unsuperpose.data import files  # noqa: E402
from unsuperpose.data.loader import iter_batches, load_activations, stream_activations  # noqa: E402
from unsuperpose.data.rows import iter_shards  # noqa: E402
from unsuperpose.data.shard_writer import ShardWriter  # noqa: E402


def rows_per_s(fn, rows: int) -> float:
    t = time.perf_counter()
    n = fn()
    seconds = time.perf_counter() - t
    assert n == rows, (n, rows)
    return rows / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--rows-per-shard", type=int, default=131072)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gen = torch.Generator().manual_seed(0)
        writer = ShardWriter(tmp, args.d, 32, args.rows_per_shard)
        for lo in range(0, args.rows, 262144):
            n = min(262144, args.rows - lo)
            x = torch.rand((n, 32), generator=gen) * (torch.rand((n, 32), generator=gen) < 0.05)
            writer.add(torch.randn((n, args.d), generator=gen), x)
        writer.close()

        def direct():
            return sum(np.array(t[files.H]).shape[0] for t in iter_shards(tmp, verify=False))

        def torch_batches(ds):
            return sum(len(b[files.H]) for b in ds.iter(batch_size=args.batch))

        def fast_batches(ds):
            return sum(len(b) for b in iter_batches(ds, args.batch))

        ds = load_activations(tmp, verify=False)
        stream = stream_activations(tmp, verify=False)
        results = {"direct read of the shards (reference)": rows_per_s(direct, args.rows)}
        results["Dataset, torch format, .iter(batch)"] = rows_per_s(lambda: torch_batches(ds), args.rows)
        results["Dataset, iter_batches (arrow -> torch)"] = rows_per_s(lambda: fast_batches(ds), args.rows)
        results["IterableDataset, torch format"] = rows_per_s(lambda: torch_batches(stream), args.rows)
        results["IterableDataset, iter_batches"] = rows_per_s(lambda: fast_batches(stream), args.rows)
        results["IterableDataset, shuffled (buffer 65536)"] = rows_per_s(
            lambda: fast_batches(stream.shuffle(seed=0, buffer_size=65536)), args.rows)
        t = time.perf_counter()
        verify = load_activations(tmp, verify=True)
        verify_s = time.perf_counter() - t
        assert len(verify) == args.rows
    ref = results["direct read of the shards (reference)"]
    print(f"{args.rows} rows, d={args.d}, batch {args.batch}")
    print(f"{'view':45s} {'rows/s':>12s} {'vs direct':>10s}")
    for name, r in results.items():
        print(f"{name:45s} {r:12.3e} {r / ref:10.2f}")
    print(f"\nopening with sha256 verification: {verify_s:.2f} s "
          f"({args.rows / verify_s:.3e} rows/s)")


if __name__ == "__main__":
    main()
