"""Models and data for the benchmark, built once per configuration into bench/.cache (runs in rlhfkit's venv).

Equal work needs the same weights, the same examples in the same order and the same token ids in both tools:
- models: the embedded default, a ~20M-parameter Llama-config model (random init, seed 0, the default's
  tokenizer), and a Qwen2-config model at Qwen's vocabulary size (random init, seed 0, a 151,936-token tokenizer
  built here: build_qwen_tokenizer); for reward training a sequence-classification copy of each, its head
  initialised once here (rlhfkit's own initialisation, seeded) so both tools start from the same head.
- data: from the default's files. SFT examples and preference pairs (two reviews of one prompt, ordered by the
  gold judge) are kept only when they need no truncation and tokenise the same jointly (TRL) and in parts
  (rlhfkit): then the token ids agree exactly.
- order: rlhfkit shuffles internally; we replay its shuffles on indices (the same `random.Random` calls on a list
  of the same length) and hand TRL the records in the order rlhfkit will consume them, read sequentially.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from .spec import LLAMA20M, QWEN152K, QWEN_VOCAB, Hyper, Plan

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"


def matmul_params(model) -> int:
    """Weights that take part in a matrix multiply: linear / Conv1D layers, the LM head and score heads."""
    import torch
    from transformers.pytorch_utils import Conv1D

    seen, total = set(), 0
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
    return total


def build_llama20m(out_dir: Path, tokenizer_dir: Path) -> Path:
    """The ~20M-parameter Llama-config model, random init with seed 0 (rebuilt only when missing)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from rlhfkit.models.loading import load_tokenizer

    if (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file():
        return out_dir
    tokenizer = load_tokenizer(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
        **LLAMA20M,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    tmp.rename(out_dir)
    return out_dir


def tokenizer_texts(default_root: Path) -> tuple[list[str], list[str]]:
    """(texts, their sources) for the qwen152k tokenizer: the default's pre-training corpus (the bench's data come
    from the same generator), and the HH-RLHF sample in shared/data when the checkout has one (real dialogue)."""
    import gzip

    texts = (default_root / "corpus.txt").read_text().splitlines()
    sources = [f"the default's corpus.txt ({len(texts)} reviews)"]
    root = HERE.parent
    for folder in (root / "shared" / "data", root.parent / "shared" / "data"):
        hh = folder / "hh-rlhf-harmless-sample.jsonl.gz"
        if hh.is_file():
            with gzip.open(hh, "rt") as lines:
                records = [json.loads(line) for line in lines if line.strip()]
            texts += [r[side] for r in records for side in ("chosen", "rejected")]
            sources.append(f"{hh.name} ({len(records)} records, both transcripts)")
            break
    return texts, sources


def build_qwen_tokenizer(texts: list[str]):
    """A byte-level BPE trained on `texts`, QWEN_VOCAB tokens long. Local text gives far fewer merges than Qwen's
    151,643, so the vocabulary is topped up with `<|reserved_N|>` entries that no merge produces (as Qwen's own
    vocabulary has tokens past its BPE's, and its embedding rows past its tokenizer's): they exist for the model and
    the sampler, the text never tokenises to them. Special tokens as Qwen2.5-Instruct's: EOS `<|im_end|>`, pad
    `<|endoftext|>`, no BOS. The tokenizers library's BPE trainer is deterministic, so the same texts give the same
    tokenizer."""
    from tokenizers import ByteLevelBPETokenizer, Tokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts,
        vocab_size=QWEN_VOCAB,
        min_frequency=2,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        show_progress=False,
    )
    spec = json.loads(bpe._tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    learned = len(vocab)
    for i in range(QWEN_VOCAB - learned):
        vocab[f"<|reserved_{i}|>"] = learned + i
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=QWEN152K["max_position_embeddings"],
    )
    return tokenizer, learned


def build_qwen152k(out_dir: Path, default_root: Path) -> Path:
    """The Qwen2-config model at Qwen's vocabulary (spec.QWEN152K), random init with seed 0, and its tokenizer
    (rebuilt only when missing); build.json says what the tokenizer was trained on."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    if (out_dir / "build.json").is_file():
        return out_dir
    texts, sources = tokenizer_texts(default_root)
    tokenizer, learned = build_qwen_tokenizer(texts)
    config = Qwen2Config(
        vocab_size=QWEN_VOCAB,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
        **QWEN152K,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    info = {"vocab": len(tokenizer), "bpe_tokens": learned, "reserved": QWEN_VOCAB - learned, "texts": sources}
    (tmp / "build.json").write_text(json.dumps(info, indent=1) + "\n")
    tmp.rename(out_dir)
    return out_dir


def build_reward_init(causal_dir: Path, out_dir: Path) -> Path:
    """A sequence-classification directory with rlhfkit's head initialisation (seeded): both tools load it as is."""
    import torch

    from rlhfkit.models.loading import load_reward_model, load_tokenizer

    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer = load_tokenizer(causal_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = load_reward_model(causal_dir, tokenizer, new_head=True)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    tmp.rename(out_dir)
    return out_dir


class Tokens:
    """Token ids as rlhfkit builds them (parts) and as TRL builds them (joint text); equal when `same` is true."""

    def __init__(self, tokenizer, hyper: Hyper):
        self.tok = tokenizer
        self.eos = tokenizer.eos_token_id
        self.eos_text = tokenizer.eos_token
        self.hyper = hyper

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def response_ok(self, prompt: str, response: str) -> tuple[bool, int, int]:
        p, r = self.ids(prompt), self.ids(response) + [self.eos]
        joint = self.tok(prompt + response + self.eos_text)["input_ids"]
        fits = len(p) <= self.hyper.max_prompt_length and len(p) + len(r) <= self.hyper.max_length
        return joint == p + r and fits, len(p), len(r)


def sft_examples(default_root: Path) -> list[dict]:
    return [json.loads(line) for line in (default_root / "sft.jsonl").read_text().splitlines() if line.strip()]


def make_sft(default_root: Path, tokens: Tokens, n: int) -> tuple[list[dict], list[int]]:
    rows, lengths = [], []
    for ex in sft_examples(default_root):
        ok, lp, lr = tokens.response_ok(ex["prompt"], ex["response"])
        if ok:
            rows.append({"prompt": ex["prompt"], "response": ex["response"]})
            lengths.append(lp + lr)
        if len(rows) == n:
            return rows, lengths
    raise SystemExit(f"prepare: only {len(rows)} SFT examples fit max_length={tokens.hyper.max_length}; need {n}")


def make_pairs(default_root: Path, tokens: Tokens, n: int) -> tuple[list[dict], list[int]]:
    """Pairs (prompt of review i; its response and the next review's response), the gold judge's favourite chosen."""
    from rlhfkit.demo.gold import gold_score

    examples = sft_examples(default_root)
    rows, lengths = [], []
    for a, b in zip(examples, examples[1:]):
        if a["response"] == b["response"]:
            continue
        ok_a, lp, la = tokens.response_ok(a["prompt"], a["response"])
        ok_b, _, lb = tokens.response_ok(a["prompt"], b["response"])
        if not (ok_a and ok_b):
            continue
        first = gold_score(a["response"]) >= gold_score(b["response"])
        chosen, rejected = (a["response"], b["response"]) if first else (b["response"], a["response"])
        rows.append({"prompt": a["prompt"], "chosen": chosen, "rejected": rejected})
        lengths.append((lp + (la if first else lb), lp + (lb if first else la)))
        if len(rows) == n:
            return rows, lengths
    raise SystemExit(f"prepare: only {len(rows)} preference pairs fit max_length={tokens.hyper.max_length}; need {n}")


def consumption_order(n: int, batch: int, steps: int, seed: int, pre_shuffle: bool) -> list[list[int]]:
    """The record indices rlhfkit's training loop takes, batch by batch, for `steps` steps.

    Replays rlhfkit's own calls: (SFT) `random.Random(seed).shuffle` of the encoded list, or (DPO) of the index
    list, then `rlhfkit.train.forever` / `batches` with shuffle=True and seed + epoch."""
    from rlhfkit.train import forever

    items = list(range(n))
    if pre_shuffle:
        random.Random(seed).shuffle(items)
    stream = forever(items, batch, seed)
    out = [next(stream) for _ in range(steps)]
    if any(len(b) != batch for b in out):
        raise SystemExit(f"prepare: {n} records do not give {steps} full batches of {batch}")
    return out


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def prepare(hypers: dict, models: list[str], tasks: list[str], seed: int = 0) -> dict:
    """Build everything; returns {(task, model) key: {model_dir, data, trl_data, plan, extra}} (also saved as JSON)."""
    import torch

    from rlhfkit.data.records import load_records, split_pairs
    from rlhfkit.demo.build import ensure_default
    from rlhfkit.models.loading import load_causal_lm, load_reward_model, load_tokenizer

    default = ensure_default()
    model_dirs = {"default": default.model_dir}
    if "llama20m" in models:
        model_dirs["llama20m"] = build_llama20m(CACHE / "models" / "llama20m", default.model_dir)
    if "qwen152k" in models:
        model_dirs["qwen152k"] = build_qwen152k(CACHE / "models" / "qwen152k", default.root)
    reward_dirs = {
        m: build_reward_init(model_dirs[m], CACHE / "models" / f"{m}-reward-init")
        for m in models
        if "reward" in tasks and ("reward", m) in hypers
    }
    params = {}
    for m in models:
        params[(m, "lm")] = matmul_params(load_causal_lm(model_dirs[m]))
        if m in reward_dirs:
            tok = load_tokenizer(reward_dirs[m])
            params[(m, "rm")] = matmul_params(load_reward_model(reward_dirs[m], tok))
    entries = {}
    for m in models:
        tokenizer = load_tokenizer(model_dirs[m])
        for task in tasks:
            if (task, m) not in hypers:  # qwen152k: SFT, DPO and GRPO only
                continue
            hyper: Hyper = hypers[(task, m)]
            folder = CACHE / "data" / f"{task}-{m}-b{hyper.batch}-s{hyper.steps}"
            tokens = Tokens(tokenizer, hyper)
            entry = {"model_dir": str(model_dirs[m]), "total_params": None}
            n = hyper.batch * hyper.steps
            if task == "sft":
                rows, lengths = make_sft(default.root, tokens, n)
                order = consumption_order(n, hyper.batch, hyper.steps, seed, pre_shuffle=True)
                entry["data"] = write_jsonl(folder / "data.jsonl", rows)
                entry["trl_data"] = write_jsonl(
                    folder / "trl.jsonl",
                    [{"prompt": rows[i]["prompt"], "completion": rows[i]["response"]} for b in order for i in b],
                )
                per_step = [sum(lengths[i] for i in b) for b in order]
                padded = [hyper.batch * max(lengths[i] for i in b) for b in order]
                plan = Plan(params[(m, "lm")], per_step, padded, hyper.batch)
            elif task == "dpo":
                rows, lengths = make_pairs(default.root, tokens, n)
                order = consumption_order(n, hyper.batch, hyper.steps, seed, pre_shuffle=True)
                entry["data"] = write_jsonl(folder / "data.jsonl", rows)
                entry["trl_data"] = write_jsonl(folder / "trl.jsonl", [rows[i] for b in order for i in b])
                per_step = [sum(sum(lengths[i]) for i in b) for b in order]
                padded = [2 * hyper.batch * max(max(lengths[i]) for i in b) for b in order]
                plan = Plan(params[(m, "lm")], per_step, padded, hyper.batch)
            elif task == "reward":
                # A validation share for rlhfkit's end-of-run validation pass (not timed); pairs sharing a prompt stay
                # on one side of rlhfkit's split, so the split is replayed with rlhfkit's own function.
                total = math.ceil(n / 0.75) + hyper.batch
                rows, lengths = make_pairs(default.root, tokens, total)
                entry["data"] = write_jsonl(folder / "data.jsonl", rows)
                pairs = load_records(entry["data"], "preference")
                train, _ = split_pairs(pairs, 0.2, seed)
                index = {id(p): i for i, p in enumerate(pairs)}
                train_idx = [index[id(p)] for p in train]
                if len(train_idx) < n:
                    raise SystemExit(f"prepare: reward split left {len(train_idx)} training pairs; need {n}")
                order = [
                    [train_idx[j] for j in b]
                    for b in consumption_order(len(train_idx), hyper.batch, hyper.steps, seed, pre_shuffle=False)
                ]
                entry["model_dir"] = str(reward_dirs[m])
                entry["trl_data"] = write_jsonl(folder / "trl.jsonl", [rows[i] for b in order for i in b])
                per_step = [sum(sum(lengths[i]) for i in b) for b in order]
                padded = [2 * hyper.batch * max(max(lengths[i]) for i in b) for b in order]
                plan = Plan(params[(m, "rm")], per_step, padded, hyper.batch)
            else:  # grpo, rloo: prompts in the order rlhfkit's PromptStream hands them out
                prompts = [json.loads(line)["prompt"] for line in default.prompts.read_text().splitlines()[:256]]
                entry["data"] = write_jsonl(
                    folder / "data.jsonl", [{"prompt": p, "id": i} for i, p in enumerate(prompts)]
                )
                taken = []
                for position in range(hyper.batch * hyper.steps):
                    epoch, offset = divmod(position, len(prompts))
                    order = list(range(len(prompts)))
                    random.Random(seed + epoch).shuffle(order)
                    taken.append(order[offset])
                entry["trl_data"] = write_jsonl(folder / "trl.jsonl", [{"prompt": prompts[i]} for i in taken])
                plan = Plan(params[(m, "lm")], [], [], hyper.batch * hyper.group)
            entry["plan"] = plan.__dict__
            entries[f"{task}/{m}"] = entry
    (CACHE / "plan.json").write_text(json.dumps(entries, indent=1))
    del torch
    return entries


if __name__ == "__main__":
    import sys

    from .spec import DEFAULT_MODELS, default_hypers

    prepare(default_hypers(), sys.argv[1:] or list(DEFAULT_MODELS), ["sft", "reward", "dpo", "grpo", "rloo"])
