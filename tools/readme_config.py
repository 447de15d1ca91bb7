"""Rewrite the README's config reference from the config models: `python tools/readme_config.py [--check]`."""

from __future__ import annotations

import sys
from pathlib import Path

from rlhfkit.config import config_template
from rlhfkit.stages import STAGES, command_name

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def reference() -> str:
    blocks = []
    for stage, entry in STAGES.items():
        lines = "\n".join(config_template(entry.config))
        command = " ".join(part for part in command_name(stage) if part)
        blocks.append(f"#### `rlhfkit {command}` (`rlhfkit config show {stage}`)\n\n```yaml\n{lines}\n```")
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
