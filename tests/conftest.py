"""Shared test settings: no progress bars (keeps captured output small), no network for Hugging Face."""

from __future__ import annotations

import os

os.environ["RLHFKIT_NO_PROGRESS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
