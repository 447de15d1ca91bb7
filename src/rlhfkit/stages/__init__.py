"""Every stage kind, in one registry that the CLI (`rlhfkit KIND`), the pipeline runner (`stage: KIND`) and
`rlhfkit config show KIND` read.

A stage is one module of this package with a `run(config)` function (the gate's is `run(config, checkpoint)`) and
a pydantic config class, defined there or in `rlhfkit.config`; adding a stage is that file and one line in
STAGES. Stages are the top layer: they import the library, and nothing below them imports a stage. A module is
imported only when its stage is used, so `rlhfkit --help` does not load torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Stage:
    module: str  # rlhfkit.stages.MODULE
    config_name: str  # the stage's config class, an attribute of that module
    help: str  # what `rlhfkit --help` says of it
    function: str = "run"  # the function of that module that runs the stage
    checkpoint: bool = False  # run(config, checkpoint): the stage checks a model directory named on the command line
    command: bool = True  # False: a step of `rlhfkit flywheel` rounds, no command of its own (pipelines may use it)

    def load(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.module}")

    @property
    def config(self) -> type:
        return getattr(self.load(), self.config_name)

    @property
    def run(self) -> Callable:
        return getattr(self.load(), self.function)


# Command groups: kind GROUP-NAME is the command `rlhfkit GROUP NAME`.
GROUPS = {"reward": "Train and evaluate reward models."}

STAGES: dict[str, Stage] = {
    "sft": Stage("sft", "SFTConfig", "Supervised fine-tuning (loss on response tokens only)."),
    "pairs": Stage(
        "pairs", "PairsConfig", "Sample two responses per prompt and have a simulated annotator panel label them."
    ),
    "judge": Stage(
        "judge",
        "JudgeConfig",
        "AI judge (RLAIF): label preference pairs with a reward model, a causal LM "
        "or an OpenAI-compatible endpoint, both orders asked.",
    ),
    "reward-train": Stage(
        "reward", "RewardTrainConfig", "Train a Bradley-Terry reward model on preference pairs.", function="train"
    ),
    "reward-eval": Stage(
        "reward",
        "RewardEvalConfig",
        "Accuracy, calibration (ECE), margins and length bias of a reward model on preference pairs.",
        function="evaluate",
    ),
    "reward-noise-sweep": Stage(
        "noise_sweep",
        "NoiseSweepConfig",
        "Flip a share of the training labels, retrain per share, and plot held-out accuracy against it.",
    ),
    "dpo": Stage("dpo", "DPOConfig", "Direct preference optimisation (sigmoid, ipo, hinge, robust, simpo, orpo)."),
    "kto": Stage("kto", "KTOConfig", "KTO: learn from thumbs up/down on single responses (unpaired data), no pairs."),
    "ppo": Stage(
        "ppo", "PPOConfig", "PPO: value head, GAE, clipped updates, KL penalty to the reference folded into the reward."
    ),
    "grpo": Stage(
        "grpo",
        "GRPOConfig",
        "GRPO: group-normalised advantages over k samples per prompt, KL to the reference as a loss term.",
    ),
    "rloo": Stage("grpo", "RLOOConfig", "RLOO: k samples per prompt, each baselined by the mean of the other k-1."),
    "reinforce-pp": Stage(
        "reinforce_pp",
        "ReinforcePPConfig",
        "REINFORCE++: critic-free, per-token KL in the reward, returns whitened over the whole batch, PPO clip.",
    ),
    "online-dpo": Stage(
        "online_dpo",
        "OnlineDPOConfig",
        "Online DPO: two fresh samples per prompt, labelled by a judge (reward model or scorer), a DPO step on them.",
    ),
    "bon": Stage(
        "bon",
        "BoNConfig",
        "Best-of-n: sample n, keep the best by reward; `finetune=true` trains on the winners (rejection sampling).",
    ),
    "bon-sweep": Stage(
        "bon_sweep",
        "BonSweepConfig",
        "Best-of-n over-optimisation curve: proxy and gold against KL_bon = log n - (n-1)/n, with the Gao et al. fit.",
    ),
    "frontier": Stage(
        "frontier",
        "FrontierConfig",
        "Reward/KL frontier: DPO, PPO and GRPO at several strengths, gold against KL to the SFT model, per method.",
    ),
    "pareto": Stage(
        "pareto",
        "ParetoConfig",
        "Pareto front of several objectives: best-of-n (or a short GRPO) per weighting of the reward heads, every "
        "objective's gold, the dominated points marked.",
    ),
    "eval": Stage(
        "eval",
        "EvalConfig",
        "Compare policies on held-out prompts: gold, reward, win rate, KL, length, diversity, unsafe rate.",
    ),
    "gate": Stage(
        "gate",
        "GateConfig",
        "Check a checkpoint against the acceptance envelope; record it in the registry; exit 1 when it fails.",
        checkpoint=True,
    ),
    "coverage": Stage(
        "coverage",
        "CoverageConfig",
        "Prompt-set coverage of a reference distribution by MiniLM embeddings; uncovered clusters; picks pool prompts "
        "toward a target.",
    ),
    "shift": Stage(
        "shift",
        "ShiftConfig",
        "Distribution-shift monitor: new prompts' distance to the training ones, the reward model's accuracy, "
        "confidence and gold agreement on new vs training data, and a verdict; shift.json.",
    ),
    # the steps of a flywheel round (`rlhfkit flywheel`): pipeline stages without a command of their own
    "traffic": Stage(
        "traffic",
        "TrafficConfig",
        "A round's prompts and live feedback: the gateway's audit log in a window, plus base prompts.",
        command=False,
    ),
    "labels": Stage(
        "labels",
        "LabelsConfig",
        "A round's labels from every source, split train / held-out, and the rolling window of labels.",
        command=False,
    ),
    "annotations": Stage(
        "annotations",
        "AnnotationsConfig",
        "A round's labels from people in the annotation app: import the pairs, wait for N judgments, export.",
        command=False,
    ),
    "round-shift": Stage(
        "shift",
        "RoundShiftConfig",
        "Distribution-shift checks of a round's labels (pluggable).",
        function="run_round",
        command=False,
    ),
}


def command_name(kind: str) -> tuple[str | None, str]:
    """(group, command) of a stage kind: `reward-train` is `rlhfkit reward train`, `sft` is `rlhfkit sft`."""
    group, _, rest = kind.partition("-")
    return (group, rest) if group in GROUPS and rest else (None, kind)
