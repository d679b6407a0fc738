"""Shared by the benchmark scripts: the machine's matmul roofline, timed in the same run."""
from __future__ import annotations

import time

import torch


def matmul_peak_gflops(n: int = 2048, repeats: int = 10, device: str = "cpu") -> float:
    """Best-of float32 GFLOP/s of an n x n x n torch.mm: the reference a kernel is held to."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.mm(a, b)  # warm-up: thread pool, caches
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def best_of(fn, repeats: int = 3) -> float:
    """Smallest wall time of `repeats` calls, in seconds."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)
