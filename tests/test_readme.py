"""The README stays true: its config reference matches the config models, and it names every command."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_current():
    result = subprocess.run([sys.executable, "tools/readme_config.py", "--check"], cwd=ROOT)
    assert result.returncode == 0, "README config reference is stale: run `python tools/readme_config.py`"


def test_every_command_is_documented():
    from typer.main import get_command

    from rlhfkit.cli import app

    readme = (ROOT / "README.md").read_text()
    root = get_command(app)
    for name, command in root.commands.items():
        subs = getattr(command, "commands", None)
        for full in [f"rlhfkit {name} {sub}" for sub in subs] if subs else [f"rlhfkit {name}"]:
            assert f"`{full}" in readme, f"README does not document `{full}`"
    assert "make demo" in readme and "make test" in readme
