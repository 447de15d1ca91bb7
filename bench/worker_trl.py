"""One benchmark run of TRL, in its own process and virtual environment: `bench/.venv-trl/bin/python
bench/worker_trl.py JOB.json`.

TRL gets the configuration that does the same work as rlhfkit, and its fastest equal-work settings:
- fp32, no gradient checkpointing (TRL's defaults are bf16 autocast and gradient checkpointing: other arithmetic,
  and a recomputed forward);
- the same AdamW (betas 0.9/0.999, no weight decay; eps 1e-8 offline, 1e-5 online) and the same schedule (linear
  decay to 10% of the peak, no warm-up; constant online), passed in through `optimizers=`;
- records in the order rlhfkit consumes them, read sequentially (`train_sampling_strategy="sequential"`;
  online: `shuffle_dataset=False`);
- DPO: sigmoid loss, beta 0.1, reference log-probs precomputed once before training (`precompute_ref_log_probs`),
  as rlhfkit does;
- GRPO: k3 KL as a loss term, token-level mean over the batch (`loss_type="dapo"`), group std scaling, one update
  per generation, and the KL without the importance-ratio factor (`use_bias_correction_kl=False`), as rlhfkit;
- RLOO: k1 sequence KL folded into the reward, leave-one-out baseline, no advantage normalisation.
- the console printer callback is removed (a progress line per step is not part of the work).

On `job.device == "cuda"` (bench/gpu/run.sh) TRL runs on the GPU with its fastest settings there: bf16 autocast
(`bf16=True`, as rlhfkit's mixed_precision=bf16), attention through flash_attention_2 where the flash-attn package is
installed, else PyTorch's SDPA, and padding-free SFT batches (`padding_free=True`; every record already fits
max_length, so TRL's max_length=None truncates nothing). TRL 1.16 disables padding_free in DPO.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "src"))  # for the gold judge only (rlhfkit.demo.gold needs just vaderSentiment)

from bench.spec import Job, Result  # noqa: E402


def gold_reward(prompts, completions, **kwargs):
    from rlhfkit.demo.gold import score

    return score(prompts, completions)


def main(job_path: str) -> None:
    job = Job.from_json(Path(job_path).read_text())
    h = job.hyper
    cuda = job.device == "cuda"

    import importlib.util

    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(job.threads)
    sync = torch.cuda.synchronize if cuda else (lambda: None)  # a GPU step ends when its kernels have run
    attention = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    load = {"dtype": torch.float32, **({"attn_implementation": attention} if cuda else {})}
    transformers.set_seed(job.seed)
    result = Result(
        tool="trl",
        task=job.task,
        model=job.model,
        repeat=job.repeat,
        versions={"trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__},
    )

    tokenizer = AutoTokenizer.from_pretrained(job.model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = [__import__("json").loads(line) for line in Path(job.trl_data).read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list(rows)

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            sync()
            result.step_ends.append(time.perf_counter())
            result.step_cpu.append(time.process_time())

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                result.losses.append(logs["loss"])
            if "reward" in logs:
                result.rewards.append(logs["reward"])
            if "kl" in logs:
                result.kls.append(logs["kl"])

    common = dict(
        output_dir=job.out_dir,
        per_device_train_batch_size=h.batch,
        max_steps=h.steps,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        bf16=cuda,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=not cuda,
        seed=job.seed,
        data_seed=job.seed,
        dataloader_num_workers=0,
        max_grad_norm=1.0,
        learning_rate=h.lr,
        weight_decay=0.0,
    )

    def decaying(model):
        # rlhfkit's schedule with warmup_ratio=0: linear from the peak down to 10% of it over the run.
        optimizer = torch.optim.AdamW(model.parameters(), lr=h.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        steps = h.steps
        return optimizer, torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: max(0.1, 1.0 - 0.9 * s / max(1, steps))
        )

    def constant(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=h.lr, eps=1e-5)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)

    if job.task == "sft":
        from trl import SFTConfig, SFTTrainer

        model = AutoModelForCausalLM.from_pretrained(job.model_dir, **load)
        args = SFTConfig(
            **common,
            train_sampling_strategy="sequential",
            max_length=None if cuda else h.max_length,
            packing=False,
            padding_free=cuda,
            pad_to_multiple_of=None,
            completion_only_loss=True,
            shuffle_dataset=False,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            optimizers=decaying(model),
            callbacks=[Probe()],
        )
    elif job.task == "reward":
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(job.model_dir, **load)
        args = RewardConfig(
            **common,
            train_sampling_strategy="sequential",
            max_length=h.max_length,
            pad_to_multiple_of=None,
            center_rewards_coefficient=None,
        )
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            optimizers=decaying(model),
            callbacks=[Probe()],
        )
    elif job.task == "dpo":
        from trl import DPOConfig, DPOTrainer

        model = AutoModelForCausalLM.from_pretrained(job.model_dir, **load)
        args = DPOConfig(
            **common,
            train_sampling_strategy="sequential",
            max_length=h.max_length,
            pad_to_multiple_of=None,
            beta=h.beta,
            loss_type=["sigmoid"],
            precompute_ref_log_probs=True,
            precompute_ref_batch_size=2 * h.batch,
        )
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            optimizers=decaying(model),
            callbacks=[Probe()],
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(job.model_dir, **load)
        online = dict(
            common,
            per_device_train_batch_size=h.batch * h.group,
            num_generations=h.group,
            max_completion_length=h.max_new_tokens,
            temperature=h.temperature,
            top_k=0,
            top_p=1.0,
            beta=h.beta,
            epsilon=0.2,
            num_iterations=1,
            shuffle_dataset=False,
            pad_to_multiple_of=None,
        )
        if job.task == "grpo":
            from trl import GRPOConfig as Config
            from trl import GRPOTrainer as Trainer

            args = Config(**online, loss_type="dapo", scale_rewards="group", use_bias_correction_kl=False)
        else:
            from trl import RLOOConfig as Config
            from trl import RLOOTrainer as Trainer

            args = Config(**online, normalize_advantages=False)

        class Counted(Trainer):
            def _generate_and_score_completions(self, inputs):
                out = super()._generate_and_score_completions(inputs)
                prompt, completion = int(out["prompt_mask"].sum()), int(out["completion_mask"].sum())
                result.tokens.append(prompt + completion)
                result.generated.append(completion)
                return out

        trainer = Counted(
            model=model,
            reward_funcs=[gold_reward],
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            optimizers=constant(model),
            callbacks=[Probe()],
        )

    trainer.remove_callback(PrinterCallback)
    if job.task in ("sft", "reward", "dpo"):
        collate = trainer.data_collator

        def checked(examples):
            batch = collate(examples)
            if result.first_batch_tokens is None:  # padding-free batches are one row of real tokens, with no mask
                mask = batch.get("attention_mask")
                result.first_batch_tokens = int(mask.sum() if mask is not None else batch["input_ids"].numel())
            return batch

        trainer.data_collator = checked
    trainer.train()
    result.setup_s = result.step_ends[0] - START if result.step_ends else 0.0
    result.wall_s = time.perf_counter() - START
    if cuda:
        result.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    result.save(job.result)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1])
