"""Stage 1 speed: toy-model training throughput against this machine's matmul roofline,
and dump throughput in MB/s.

    python benchmarks/bench_generate.py [--device auto] [--steps 300]

Training FLOPs per step: forward h = W x and x' = W^T h cost 2 * 2 * batch * inst * n * d;
backward twice that; so 12 * batch * inst * n * d per step (einsum FLOPs only; sampling,
Adam and the elementwise work are the overhead that the fraction of peak exposes).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import matmul_peak_gflops  # noqa: E402
from unsuperpose.data.files import MANIFEST_FILE, read_json  # noqa: E402
from unsuperpose.generate.config import GenerateConfig  # noqa: E402
from unsuperpose.generate.pipeline import distribution, resolve_device, run_generate  # noqa: E402
from unsuperpose.generate.train import train_toy_models  # noqa: E402
from unsuperpose.models.toy import ToyModel  # noqa: E402


def bench_training(config: GenerateConfig, steps: int, device: torch.device) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    dist = distribution(config)
    inst = len(config.feature_probability)
    model = ToyModel(config.model_kind, inst, config.n_features, config.d_hidden, gen, device)
    train_toy_models(model, dist, 2, config.batch_size, config.lr, gen)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    train_toy_models(model, dist, steps, config.batch_size, config.lr, gen, log_every=steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    flops = 12 * config.batch_size * inst * config.n_features * config.d_hidden * steps
    return {"instance_samples_per_s": steps * config.batch_size * inst / seconds,
            "gflops": flops / seconds / 1e9, "seconds": seconds}


def bench_dump(config: GenerateConfig) -> dict:
    """Stage-1 dump (sampling, hidden, CSR, safetensors, sha256, fsync) against writing the
    same number of bytes raw with fsync: the disk's own speed, measured in the same run."""
    import os

    with tempfile.TemporaryDirectory() as tmp:
        run_generate(GenerateConfig(steps=0, rows=1000), Path(tmp) / "warm")  # imports, pools
        t = time.perf_counter()
        out = run_generate(config, Path(tmp) / "run")
        seconds = time.perf_counter() - t
        total = sum(sum(s["bytes"] for s in read_json(m)["shards"])
                    for m in Path(out).rglob(MANIFEST_FILE))
        blob = os.urandom(1 << 24)
        t = time.perf_counter()
        with open(Path(tmp) / "raw.bin", "wb") as f:
            for _ in range(max(1, total // len(blob))):
                f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        raw = max(1, total // len(blob)) * len(blob) / (time.perf_counter() - t)
    return {"mb_per_s": total / seconds / 1e6, "mb": total / 1e6, "seconds": seconds,
            "raw_mb_per_s": raw / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rows", type=int, default=262144)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0: torch's default); on a shared 2-core machine "
                             "two threads wait on each other at every small op")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    peak = matmul_peak_gflops(device=str(device))
    print(f"device {device}, torch threads {torch.get_num_threads()}, "
          f"float32 matmul peak {peak:.1f} GFLOP/s (2048^3 torch.mm, same run)\n")
    default = GenerateConfig(device=str(device))
    # (config, steps): the large model does ~50 GFLOP a step, so it gets few steps
    configs = {
        "default (5 inst, n=40, d=10, batch 1024)": (default, args.steps),
        "large (8 inst, n=1024, d=128, batch 4096)": (GenerateConfig(
            n_features=1024, d_hidden=128, feature_probability=(0.01,) * 8, batch_size=4096,
            device=str(device)), max(3, args.steps // 50)),
    }
    print(f"{'training':45s} {'inst*samples/s':>15s} {'GFLOP/s':>9s} {'of peak':>8s}")
    for name, (cfg, steps) in configs.items():
        r = bench_training(cfg, steps, device)
        print(f"{name:45s} {r['instance_samples_per_s']:15.3e} {r['gflops']:9.2f} "
              f"{r['gflops'] / peak:8.1%}")
    r = bench_dump(GenerateConfig(steps=0, rows=args.rows, device=str(device)))
    print(f"\ndump of the default config ({args.rows} rows x 5 instances, incl. sampling, CSR, "
          f"sha256): {r['mb']:.0f} MB in {r['seconds']:.2f} s = {r['mb_per_s']:.0f} MB/s; "
          f"raw fsync'd write here {r['raw_mb_per_s']:.0f} MB/s "
          f"(ratio {r['mb_per_s'] / r['raw_mb_per_s']:.2f})")


if __name__ == "__main__":
    main()
