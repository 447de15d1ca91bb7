"""Shared test settings: no progress bars (keeps captured output small), no network for Hugging Face, and one
torch thread (the models are tiny; on a shared 2-core machine more threads only contend with other jobs). The
`cli_in_process` fixture runs a command without starting an interpreter (which re-imports torch: seconds a run)."""

from __future__ import annotations

import contextlib
import os
import subprocess

import pytest

os.environ["RLHFKIT_NO_PROGRESS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS, which torch reads on import)

with contextlib.suppress(ValueError):
    torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))


@pytest.fixture
def cli_in_process(monkeypatch, capsys):
    """`rlhfkit ARGS...` run by `rlhfkit.cli.main` in this process: a CompletedProcess with its exit code and output.
    For tests of what a command does; the tests that start real processes (test_cli_errors.py, the launchers of
    test_distributed.py) keep the interpreter's own start covered."""
    from rlhfkit import cli

    def run(*args: str) -> subprocess.CompletedProcess:
        monkeypatch.setattr("sys.argv", ["rlhfkit", *args])
        capsys.readouterr()
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(["rlhfkit", *args], code, captured.out, captured.err)

    return run


# The small demo that tests reading a finished demo folder share (test_report.py, test_stages.py): every stage of the
# packaged pipeline, each at a few steps and samples. As `rlhfkit demo` nests them: {stage: {key: value}}.
TINY_DEMO = {
    "pairs": {"num_prompts": 120},
    "sft": {"max_steps": 10, "batch_size": 8, "val_fraction": 0.01},
    "reward": {"max_steps": 15, "eval_every": 5, "batch_size": 16},
    "dpo": {"max_steps": 10, "batch_size": 8},
    "ppo": {"steps": 3, "batch_size": 4, "mini_batch_size": 4, "max_new_tokens": 16, "save_every": 3},
    "bon_sweep": {"max_n": 8, "num_prompts": 4, "max_new_tokens": 16, "bootstrap": 20},
    "bon_sweep_length": {"max_n": 8, "num_prompts": 4, "max_new_tokens": 16, "bootstrap": 20},
    "eval": {"num_prompts": 12, "samples_per_prompt": 2, "self_bleu_texts": 20},
    "gate": {"thresholds": ["mean_gold >= -1.0", "distinct_2 >= 0.0"]},
}


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """One run of the demo at TINY_DEMO's settings, made once a session: (its folder, the summary it returned)."""
    from rlhfkit.stages import demo

    root = tmp_path_factory.mktemp("demo")
    return root, demo.run({"output_dir": str(root), **TINY_DEMO})
