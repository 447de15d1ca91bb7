"""Build the embedded default: review corpus -> BPE tokenizer -> tiny GPT-2 pre-trained on it -> task files.

Built once into the cache (`$RLHFKIT_HOME`, default `~/.cache/rlhfkit`) under a folder named by a hash of
the build recipe *and of the code that builds it* (this module and the corpus generator), so a changed recipe
or a changed builder builds anew and an unchanged one is reused: a cache written by older code is never
taken for what this code would build. The build writes
into a temporary folder and renames it into place, under a file lock, so a crash or two concurrent
builds never leave a half-built default behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..atomic import atomic_dir, write_json
from ..console import console, progress_bar
from ..data.records import PromptRecord, SFTExample, write_jsonl
from ..train import make_optimizer, setup_torch
from . import corpus


@dataclass(frozen=True)
class Recipe:
    version: int = 2
    pretrain_reviews: int = 20000
    sft_reviews: int = 4000
    train_prompts: int = 4000
    vocab_size: int = 2048
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 256
    block_size: int = 128
    batch_size: int = 32
    epochs: int = 3
    lr: float = 3e-3
    seed: int = 0
    # CPU threads of the pre-training: the float reductions split by thread count, so a 2-thread build's weights
    # differ from a 1-thread build's (sha256 76d8d361... against de3bfc27... on the same machine). Fixed, so that
    # `make test` and `make demo` build the same default whichever runs first, on any number of cores.
    threads: int = 1

    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        for source in BUILDER_SOURCES:
            digest.update(source.read_bytes())
        return digest.hexdigest()[:10]


# The code whose output the cache holds: editing either (even a comment) gives a new cache folder.
BUILDER_SOURCES = (Path(__file__), Path(corpus.__file__))


@dataclass
class DefaultTask:
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def sft_data(self) -> Path:
        return self.root / "sft.jsonl"

    @property
    def prompts(self) -> Path:
        return self.root / "prompts.jsonl"

    @property
    def heldout_prompts(self) -> Path:
        return self.root / "heldout_prompts.jsonl"

    @property
    def info(self) -> dict:
        return json.loads((self.root / "build.json").read_text())


def cache_root() -> Path:
    return Path(os.environ.get("RLHFKIT_HOME") or Path.home() / ".cache" / "rlhfkit")


def default_dir(recipe: Recipe = Recipe()) -> Path:
    return cache_root() / f"default-{recipe.key()}"


def ensure_default(force: bool = False, recipe: Recipe = Recipe()) -> DefaultTask:
    """The built default task; builds it on first use (a few minutes on 2 cores)."""
    target = default_dir(recipe)
    if (target / "build.json").is_file() and not force:
        return DefaultTask(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "build.json").is_file() and not force:
            return DefaultTask(target)
        console.print(f"[bold]Building the embedded default task[/] into {target} (once; reused afterwards)")
        with atomic_dir(target) as tmp:
            build(tmp, recipe)
    return DefaultTask(target)


def build(out: Path, recipe: Recipe) -> None:
    from ..models.loading import quiet_transformers

    quiet_transformers()
    start = time.time()
    threads = torch.get_num_threads()
    setup_torch(recipe.seed, recipe.threads)
    try:
        _build(out, recipe, start)
    finally:
        torch.set_num_threads(threads)


def _build(out: Path, recipe: Recipe, start: float) -> None:
    train_openings, heldout_openings = corpus.split_openings(seed=recipe.seed)
    pretrain = corpus.generate_reviews(recipe.pretrain_reviews, train_openings, seed=recipe.seed + 1)
    sft = corpus.generate_reviews(recipe.sft_reviews, train_openings, seed=recipe.seed + 2)

    write_jsonl(
        out / "sft.jsonl",
        (SFTExample(prompt=r.opening, response=" " + r.body, category=r.topic, metadata={"mood": r.mood}) for r in sft),
    )
    import random

    rng = random.Random(recipe.seed + 3)
    write_jsonl(
        out / "prompts.jsonl",
        (
            PromptRecord(prompt=o, category=t, id=i)
            for i, (t, o) in enumerate(rng.choice(train_openings) for _ in range(recipe.train_prompts))
        ),
    )
    write_jsonl(
        out / "heldout_prompts.jsonl",
        (PromptRecord(prompt=o, category=t, id=f"heldout-{i}") for i, (t, o) in enumerate(heldout_openings)),
    )
    (out / "corpus.txt").write_text("\n".join(r.text for r in pretrain) + "\n")

    tokenizer = train_tokenizer([r.text for r in pretrain], recipe)
    model, losses = pretrain_model([r.text for r in pretrain], tokenizer, recipe)
    model_dir = out / "model"
    model.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    write_json(
        out / "build.json",
        {
            "recipe": asdict(recipe),
            "key": recipe.key(),
            "seconds": round(time.time() - start, 1),
            "parameters": sum(p.numel() for p in model.parameters()),
            "final_loss": losses[-1],
            "first_loss": losses[0],
            "train_openings": len(train_openings),
            "heldout_openings": len(heldout_openings),
        },
    )
    console.print(
        f"built the default in {time.time() - start:.0f}s: pre-training loss {losses[0]:.2f} -> {losses[-1]:.2f}"
    )


def train_tokenizer(texts: list[str], recipe: Recipe):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts,
        vocab_size=recipe.vocab_size,
        min_frequency=2,
        special_tokens=["<|endoftext|>", "<pad>"],
        show_progress=False,
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
        model_max_length=recipe.n_positions,
    )


def pretrain_model(texts: list[str], tokenizer, recipe: Recipe):
    """Next-token pre-training on packed blocks of reviews, each ending in EOS (so the model learns to stop)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=recipe.n_positions,
        n_embd=recipe.n_embd,
        n_layer=recipe.n_layer,
        n_head=recipe.n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc + [tokenizer.eos_token_id])
    n_blocks = len(ids) // recipe.block_size
    blocks = torch.tensor(ids[: n_blocks * recipe.block_size]).view(n_blocks, recipe.block_size)
    steps = recipe.epochs * (n_blocks // recipe.batch_size)
    optimizer, scheduler = make_optimizer(model, recipe.lr, 0.01, 0.05, steps)
    generator = torch.Generator().manual_seed(recipe.seed)
    losses = []
    model.train()
    with progress_bar("pre-training the tiny model", steps) as advance:
        step = 0
        for _ in range(recipe.epochs):
            order = torch.randperm(n_blocks, generator=generator)
            for i in range(n_blocks // recipe.batch_size):
                batch = blocks[order[i * recipe.batch_size : (i + 1) * recipe.batch_size]]
                loss = model(input_ids=batch, labels=batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(round(loss.item(), 4))
                step += 1
                advance(loss=loss.item())
    model.eval()
    return model, losses
