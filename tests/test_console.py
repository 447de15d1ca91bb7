"""Progress where a person reads it: a log file gets plain progress lines (a bar would show only its end)."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_progress_goes_to_a_log_file_as_plain_lines(tmp_path):
    env = {**os.environ, "RLHFKIT_PROGRESS_EVERY": "0"}
    env.pop("RLHFKIT_NO_PROGRESS", None)
    log = tmp_path / "sft.log"
    with log.open("w") as handle:  # stderr is a file, not a terminal
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "rlhfkit.cli",
                "sft",
                f"output_dir={tmp_path / 'sft'}",
                "max_steps=3",
                "batch_size=4",
                "eval_every=3",
                "log_every=1",
                "threads=1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=handle,
            env=env,
            timeout=300,
        )
    text = log.read_text()
    assert done.returncode == 0, text
    steps = re.findall(r"^sft: (\d)/3 \([\d.]+/s, 0:00:\d\d elapsed.*loss=[\d.]+", text, re.M)
    assert steps[:3] == ["1", "2", "3"], text
    assert "\x1b[" not in text and "━" not in text  # no escape codes, no bar characters
