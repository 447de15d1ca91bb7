"""This machine's fp32 matrix-multiply rate at a given thread count: `python bench/peak.py THREADS` prints GFLOP/s.

The best of several timed torch.matmul calls on large square fp32 matrices (1024 and 2048): the ceiling the
training runs are measured against.
"""

from __future__ import annotations

import json
import sys
import time


def measure(threads: int, sizes=(1024, 2048), repeats: int = 5) -> dict:
    import torch

    torch.set_num_threads(threads)
    best = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)  # warm-up: page in, pick the kernel
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - start)
        best[n] = 2.0 * n**3 / min(times)
    return {
        "threads": threads,
        "gflops": max(best.values()) / 1e9,
        "by_size": {str(n): v / 1e9 for n, v in best.items()},
    }


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 1)))
