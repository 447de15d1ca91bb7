"""Peak memory of the full and the chunked output layer at Qwen's vocabulary: `python bench/logits_memory.py`.

A Qwen2-architecture model with the real vocabulary (151,936 tokens, tied embeddings as in Qwen2.5-0.5B) and a small
body (hidden 256, 2 layers), batch 4 x 512 tokens (a 32-token prompt, 480 response tokens each), through the three
ways rlhfkit takes log-probs:

- sft: forward.response_logps and the backward pass of the SFT loss (also DPO's path);
- online: forward.token_logps at temperature 0.7 with entropies, and the backward pass of a policy-gradient term
  with an entropy bonus (the GRPO / RLOO / PPO update);
- reference: forward.token_logps without gradients (reference log-probs, eval's KL).

Each (mode, path) runs in a fresh process; the peak is the process's resident-set high-water mark (VmHWM, reset just
before the pass through /proc/self/clear_refs) minus its resident set right before the pass: what the pass itself
adds on top of the model and its inputs. The full path's logits alone are 4 x 512 x 151,936 fp32 = 1,245 MB.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time

from rlhfkit.forward import CHUNK_SIZE

VOCAB, HIDDEN, LAYERS, BATCH, TOKENS, PROMPT = 151_936, 256, 2, 4, 512, 32
MODES = ("sft", "online", "reference")


def rss_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def one(mode: str, path: str, chunk_size: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from rlhfkit.forward import response_logps, token_logps

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=TOKENS,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    ids = torch.randint(1, VOCAB, (BATCH, TOKENS))
    mask = torch.ones_like(ids)
    prompts, responses = ids[:, :PROMPT].tolist(), ids[:, PROMPT:].tolist()
    options = {"logits": path, "chunk_size": chunk_size}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the resident set now
    before = rss_kb("VmRSS")
    start = time.perf_counter()
    if mode == "sft":
        logps, counts = response_logps(model, prompts, responses, 0, **options)
        (-logps.sum() / counts.sum()).backward()
    elif mode == "online":
        logps, entropy = token_logps(model, ids, mask, PROMPT, 0.7, with_entropy=True, **options)
        (-logps.sum() - 0.01 * entropy.sum()).backward()
    else:
        with torch.no_grad():
            token_logps(model, ids, mask, PROMPT, 0.7, **options)
    seconds = time.perf_counter() - start
    return {"mode": mode, "path": path, "peak_mb": (rss_kb("VmHWM") - before) / 1024, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-size", type=int, default=CHUNK_SIZE, help="positions per chunk (logits_chunk_size)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.chunk_size, args.threads)))
        return
    print(
        f"vocab {VOCAB:,}, hidden {HIDDEN}, {LAYERS} layers, batch {BATCH} x {TOKENS} tokens, "
        f"chunk {args.chunk_size} positions, {args.threads} threads"
    )
    print("| mode | full: peak MB | chunked: peak MB | chunked / full | full: s | chunked: s |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in MODES:
        rows = {}
        for path in ("full", "chunked"):
            command = [sys.executable, __file__, "--one", mode, path, "--chunk-size", str(args.chunk_size)]
            out = subprocess.run(command + ["--threads", str(args.threads)], capture_output=True, text=True, check=True)
            rows[path] = json.loads(out.stdout.strip().splitlines()[-1])
        full, chunked = rows["full"], rows["chunked"]
        print(
            f"| {mode} | {full['peak_mb']:,.0f} | {chunked['peak_mb']:,.0f} | "
            f"{chunked['peak_mb'] / full['peak_mb']:.2f} | {full['seconds']:.1f} | {chunked['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
