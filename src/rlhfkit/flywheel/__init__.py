"""`rlhfkit flywheel`: rounds of live traffic -> labels -> reward model -> shift check -> policy -> gate, each a cached
pipeline (config.py: FlywheelConfig; rounds.py: the rounds; world.py: simulated users; report.py: flywheel.html).
A top-layer module like rlhfkit.pipeline: it imports the runner and the stages; only rlhfkit.cli imports it."""

from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "demo" / "flywheel.yaml"
