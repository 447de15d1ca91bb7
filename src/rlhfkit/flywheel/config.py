"""The flywheel's config: one pydantic model, YAML plus `key=value` overrides like every rlhfkit command."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ..config import PanelSettings, Strict


class WindowSettings(Strict):
    days: float | None = Field(
        None, gt=0, description="prompts: the gateway's traffic of the last DAYS before the round (null: by rounds)"
    )
    rounds: int = Field(
        2,
        gt=0,
        description="labels of the last N rounds (this one included) train the reward model; older ones "
        "age out. Without days, the prompts are the traffic since the start of the oldest of those rounds",
    )


class PromptSettings(Strict):
    base: str = Field("default", description="base prompt set mixed into every round ('default': the embedded one)")
    base_categories: list[str] | None = Field(None, description="keep only base prompts of these categories")
    per_round: int = Field(256, gt=0, description="prompts a round samples candidate pairs for")
    live_share: float = Field(0.5, ge=0, le=1, description="most of them taken from the gateway's window")
    routes: list[str] | None = Field(None, description="only traffic answered by these gateway routes (null: all)")


class AnnotateSource(Strict):
    db: str = Field("annotate.sqlite", description="the annotation app's store (path or URL), made by `annotate init`")
    project: str = Field("flywheel", description="project name prefix; round N uses PROJECT-round-N")
    rubric: str = Field(
        "Which review is the better one: coherent, on topic, pleasant to read?", description="rubric shown to people"
    )
    pairs: int = Field(50, gt=0, description="candidate pairs imported into the round's project")
    judgments: int = Field(50, gt=0, description="human judgments to wait for")
    timeout: float = Field(3600.0, gt=0, description="seconds to wait for them; then the round fails (rerun resumes)")
    poll: float = Field(2.0, gt=0, description="seconds between looks at the project")


class SourceSettings(Strict):
    feedback: bool = Field(True, description="live feedback in the window (choices; thumbs up vs down on one prompt)")
    panel: PanelSettings | None = Field(
        default_factory=PanelSettings, description="the simulated panel labels the sampled pairs (null: off)"
    )
    judge: dict[str, Any] | None = Field(
        None, description="an AI judge relabels the sampled pairs: `rlhfkit judge` keys (kind, model, base_url, ...)"
    )
    annotate: AnnotateSource | None = Field(None, description="people label pairs in the annotation app")


class ShiftSettings(Strict):
    checks: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"check": "reward_accuracy", "options": {"max_drop": 0.1}}],
        description="shift checks {check: reward_accuracy | embedding | module:function, options: {...}}",
    )
    block: bool = Field(False, description="a shift verdict blocks the round's promotion (default: recorded only)")


class PolicySettings(Strict):
    algorithm: Literal["dpo", "ppo", "grpo"] = Field("dpo", description="how the policy is optimised each round")
    data: Literal["new", "window"] = Field(
        "new", description="dpo: train on this round's new pairs or on the whole window"
    )
    config: dict[str, Any] = Field(default_factory=dict, description="keys of that stage (beta, lr, steps, ...)")


class WorldSettings(Strict):
    users: int = Field(6, gt=0, description="simulated users, each with an API key of the gateway")
    requests: int = Field(20, gt=0, description="requests each user sends per round")
    topics: list[list[str]] = Field(
        default_factory=lambda: [["restaurant", "hotel", "cafe"], ["restaurant", "hotel", "cafe", "phone", "laptop"]],
        description="review topics users ask about, per round (the last list repeats): their interests drift",
    )
    thumbs_rate: float = Field(0.5, ge=0, le=1, description="share of answers a user rates up or down")
    side_by_side_rate: float = Field(
        0.25, ge=0, le=1, description="share of prompts asked twice and answered with a choice between the two"
    )
    thumbs_up_above: float = Field(0.3, description="a user rates up when the gold score is above this")
    noise: float = Field(0.1, ge=0, le=0.5, description="chance a user's thumbs or choice is flipped")
    max_tokens: int = Field(48, gt=0, description="max_tokens of each request")
    seed: int = Field(0, description="seed of the users' prompts and judgments")


class FlywheelConfig(Strict):
    """`rlhfkit flywheel FILE.yaml`: rounds of gateway traffic -> pairs -> labels -> reward model -> shift check ->
    policy -> eval -> gate -> promote or roll back; each round a cached pipeline in OUTPUT_DIR/round-N."""

    output_dir: str = Field("runs/flywheel", description="run root: round-N/, registry.sqlite, current, report")
    rounds: int = Field(3, gt=0, description="rounds to run (a rerun with more continues)")
    model: str = Field("default", description="the starting policy: a model directory or 'default'")
    sft: dict[str, Any] | None = Field(
        None, description="round 0 fine-tunes `model` first with these `rlhfkit sft` keys (null: start from model)"
    )
    gateway_db: str | None = Field(
        None, description="the gateway's store to read traffic from (null: OUTPUT_DIR/serve.sqlite)"
    )
    window: WindowSettings = Field(default_factory=WindowSettings)
    prompts: PromptSettings = Field(default_factory=PromptSettings)
    sources: SourceSettings = Field(default_factory=SourceSettings)
    heldout_fraction: float = Field(
        0.2, gt=0, lt=1, description="share of each round's prompts whose labels never train"
    )
    pairs: dict[str, Any] = Field(
        default_factory=dict, description="`rlhfkit pairs` keys for sampling candidates (max_new_tokens, temperature)"
    )
    reward: dict[str, Any] = Field(default_factory=dict, description="`rlhfkit reward train` keys (epochs, lr, ...)")
    shift: ShiftSettings = Field(default_factory=ShiftSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    eval: dict[str, Any] = Field(
        default_factory=dict, description="`rlhfkit eval` keys (prompts, num_prompts, samples_per_prompt)"
    )
    thresholds: Any = Field(
        default_factory=lambda: {"mean_gold": ">= 0.0", "win_rate": ">= 0.5"},
        description="the gate's envelope for each round's candidate (win_rate is against the parent)",
    )
    initial_thresholds: Any = Field(
        default_factory=lambda: {"mean_gold": ">= -1.0"},
        description="the envelope of the starting policy in round 0 (the default accepts it)",
    )
    world: WorldSettings | None = Field(
        None, description="a simulated world of users who use the gateway between rounds (null: real traffic only)"
    )
    report: bool = Field(True, description="write OUTPUT_DIR/flywheel.html after every round")
    seed: int = Field(0, description="seed of samples and splits (each round adds its number)")
    threads: int | None = Field(None, gt=0, description="torch CPU threads of every stage")

    @model_validator(mode="after")
    def _some_source(self):
        s = self.sources
        if not (s.feedback or s.panel or s.judge or s.annotate):
            raise ValueError("sources: turn on at least one of feedback, panel, judge, annotate")
        return self
