"""Shared test settings: no progress bars (keeps captured output small), no network for Hugging Face, and one
torch thread (the models are tiny; on a shared 2-core machine more threads only contend with other jobs)."""

from __future__ import annotations

import contextlib
import os

os.environ["RLHFKIT_NO_PROGRESS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS, which torch reads on import)

with contextlib.suppress(ValueError):
    torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
