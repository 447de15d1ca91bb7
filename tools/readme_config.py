"""Rewrite the README's config reference from the config models: `python tools/readme_config.py [--check]`."""

from __future__ import annotations

import sys
from pathlib import Path

from rlhfkit.config import STAGE_CONFIGS, config_template

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
COMMANDS = {"reward-train": "reward train", "reward-eval": "reward eval", "reward-noise-sweep": "reward noise-sweep"}


def reference() -> str:
    blocks = []
    for stage, cls in STAGE_CONFIGS.items():
        lines = "\n".join(config_template(cls))
        blocks.append(
            f"#### `rlhfkit {COMMANDS.get(stage, stage)}` (`rlhfkit config show {stage}`)\n\n```yaml\n{lines}\n```"
        )
    return "\n\n".join(blocks)


def main() -> int:
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    updated = f"{head}{START}\n{reference()}\n{END}{tail}"
    if "--check" in sys.argv:
        return 0 if updated == text else 1
    readme.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
