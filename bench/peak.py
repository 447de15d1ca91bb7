"""This machine's matrix-multiply rate: `python bench/peak.py THREADS [cpu|cuda]` prints GFLOP/s.

CPU: the best of several timed torch.matmul calls on large square fp32 matrices (1024 and 2048) at THREADS threads.
CUDA: the same with bf16 matrices of 4096 and 8192 on the GPU (the arithmetic both tools' autocast runs), each call
timed between two torch.cuda.synchronize(). The ceiling the training runs are measured against.
"""

from __future__ import annotations

import json
import sys
import time


def measure(threads: int, sizes=(1024, 2048), repeats: int = 5, device: str = "cpu") -> dict:
    import torch

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cuda":
        sizes = (4096, 8192)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best = {}
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        torch.matmul(a, b)  # warm-up: page in, pick the kernel
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            sync()
            times.append(time.perf_counter() - start)
        best[n] = 2.0 * n**3 / min(times)
    return {
        "threads": threads,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "gflops": max(best.values()) / 1e9,
        "by_size": {str(n): v / 1e9 for n, v in best.items()},
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(measure(int(args[0]) if args else 1, device=args[1] if len(args) > 1 else "cpu")))
