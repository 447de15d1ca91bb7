"""What answers a route: a local model sampled by rlhfkit's own KV-cached decoder with concurrent requests batched
together, a run root whose current checkpoint is followed (hot reload), or an upstream OpenAI-compatible server.

Local models: each has one batcher thread. It takes the first waiting request, gathers more for `wait_ms` (up to
`max_batch`), and generates for them together with `rollout.generate`; its token hook hands every token to its
request as it is drawn (streaming) and ends a row at the request's own max_tokens, or when its client went away.
Requests join a batch only before it starts (no continuous batching); requests with different temperature or top_p,
or that would not fit the model's context together, go into separate batches.

Hot reload: the new checkpoint is loaded beside the old one, then swapped in; requests already queued on the old
batcher finish there, and the old model is released once its queue is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..console import console
from ..data.tokenize import pad_left, render_prompt
from ..errors import ModelError
from ..evaluate.registry import FILENAME as REGISTRY_FILE
from ..evaluate.registry import Registry, RegistryError
from ..models.loading import load_causal_lm, load_tokenizer
from ..resolve import resolve_model_path
from ..rollout import generate, stop_token_ids
from .store import ServeError

DEFAULT_CONTEXT = 2048  # when a model config names no context length


@dataclass
class Generation:
    """One request's generation on a local model: the batcher thread fills it, the request's handler reads `events`
    (("token", id), then ("done", finish_reason) or ("error", message)) on its event loop."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    token_ids: list[int] = field(default_factory=list)  # every generated token, EOS included
    first_token_at: float | None = None  # time.monotonic() of the first token
    finish_reason: str | None = None
    cancelled: bool = False  # set by the handler when its client went away
    checkpoint: str = ""  # the checkpoint that generated it

    def push(self, kind: str, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def finish(self, reason: str) -> None:
        self.finish_reason = reason
        self.push("done", reason)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def sampling(self) -> tuple[float, float]:
        return self.temperature, self.top_p


class LocalModel:
    """A causal LM and its tokenizer, loaded for sampling, with one batcher thread."""

    def __init__(self, path: Path, label: str, *, max_batch: int, wait_ms: float, seed: int, on_batch=None):
        self.path, self.checkpoint = path, label
        self.tokenizer = load_tokenizer(path, padding_side="left")
        self.model = load_causal_lm(path).eval()
        config = self.model.config
        self.context = next(
            (getattr(config, k) for k in ("n_positions", "max_position_embeddings") if getattr(config, k, None)),
            DEFAULT_CONTEXT,
        )
        self.stop_ids, self.pad_id = stop_token_ids(self.tokenizer, self.model), self.tokenizer.pad_token_id
        self.max_batch, self.wait = max_batch, wait_ms / 1000
        self.generator = torch.Generator().manual_seed(seed)
        self.on_batch = on_batch or (lambda size: None)
        self.queue: queue.Queue[Generation] = queue.Queue()
        self.lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self.loop, name=f"batcher {label}", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------------------------------ prompts

    def render(self, prompt: str | list[dict]) -> str:
        """Chat messages through the tokenizer's chat template where it has one, else the plain transcript
        ("\\n\\nHuman: ...\\n\\nAssistant:", data.tokenize.render_prompt); a completion prompt as it is."""
        return render_prompt(self.tokenizer, prompt)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------------------------------------ batching

    def submit(self, generation: Generation) -> bool:
        """Queue a generation; False once this model is retired (the caller asks its route for the new one)."""
        with self.lock:
            if self.closed:
                return False
            generation.checkpoint = self.checkpoint
            self.queue.put(generation)
            return True

    def retire(self) -> None:
        """Take no new requests; those queued are still answered, then the thread ends and the model is freed."""
        with self.lock:
            self.closed = True

    def loop(self) -> None:
        while True:
            try:
                first = self.queue.get(timeout=0.1)
            except queue.Empty:
                with self.lock:
                    if self.closed and self.queue.empty():
                        self.model = None  # release the weights now, not when the last reference goes
                        return
                continue
            batch, deadline = [first], time.monotonic() + self.wait
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    batch.append(self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait())
                except queue.Empty:
                    break
            for generation in batch:
                if generation.cancelled:
                    generation.finish("cancelled")
            for group in self.groups([g for g in batch if not g.cancelled]):
                self.run(group)

    def groups(self, batch: list[Generation]) -> list[list[Generation]]:
        """Batches that share sampling settings and fit the context together (left padding to the longest prompt,
        then room for the largest max_tokens: rows that ended are still carried a while)."""
        out: list[list[Generation]] = []
        for generation in batch:
            for group in out:
                longest = max(len(g.prompt_ids) for g in [*group, generation])
                most = max(g.max_tokens for g in [*group, generation])
                if group[0].sampling == generation.sampling and longest + most <= self.context:
                    group.append(generation)
                    break
            else:
                out.append([generation])
        return out

    def run(self, group: list[Generation]) -> None:
        self.on_batch(len(group))
        temperature, top_p = group[0].sampling
        greedy = temperature < 1e-5  # temperature 0: the most likely token (top-k 1), as OpenAI servers do

        def on_token(step: int, rows: torch.Tensor, tokens: torch.Tensor) -> list[int]:
            now, stop = time.monotonic(), []
            for row, token in zip(rows.tolist(), tokens.tolist()):
                generation = group[row]
                if generation.done:
                    stop.append(row)
                    continue
                generation.token_ids.append(token)
                generation.first_token_at = generation.first_token_at or now
                if token in self.stop_ids:
                    generation.finish("stop")
                    continue
                generation.push("token", token)
                if len(generation.token_ids) >= generation.max_tokens:
                    generation.finish("length")
                    stop.append(row)
                elif generation.cancelled:
                    generation.finish("cancelled")
                    stop.append(row)
            return stop

        batch = pad_left([g.prompt_ids for g in group], self.pad_id)
        try:
            generate(
                self.model,
                batch["input_ids"],
                batch["attention_mask"],
                eos_id=self.stop_ids,
                pad_id=self.pad_id,
                max_new_tokens=max(g.max_tokens for g in group),
                temperature=1.0 if greedy else temperature,
                top_k=1 if greedy else 0,
                top_p=top_p,
                generator=self.generator,
                on_token=on_token,
            )
        except Exception as exc:  # a model failure ends this batch's requests with an error, not the server
            console.print(f"[red]generation failed on {self.checkpoint}: {exc!r}[/]")
            for generation in group:
                if not generation.done:
                    generation.finish_reason = "error"
                    generation.push("error", f"generation failed on {self.checkpoint}: {exc}")
            return
        for generation in group:
            if not generation.done:
                generation.finish("length")


def is_run_root(path: Path) -> bool:
    """A folder with a `current` link or a checkpoint registry (and not itself a model directory)."""
    return (
        path.is_dir()
        and not (path / "config.json").is_file()
        and ((path / "current").is_symlink() or (path / "current").exists() or (path / REGISTRY_FILE).is_file())
    )


def current_checkpoint(root: Path) -> Path:
    """The checkpoint a run root names as current: its `current` link, else its registry's current entry."""
    link = root / "current"
    if link.exists():
        return Path(os.path.realpath(link))
    if (root / REGISTRY_FILE).is_file():
        try:
            current = Registry(root).current()
        except RegistryError as exc:
            raise ModelError(str(exc)) from None
        if current is not None:
            return Path(current.path)
    raise ModelError(
        f"run root '{root}' has no current checkpoint (no current link, nothing current in its registry); "
        "`rlhfkit gate CHECKPOINT` promotes one"
    )


class LocalRoute:
    """A route answered by a local model: a fixed model directory, or a run root whose current checkpoint is served
    and followed (`check` loads a new current checkpoint beside the old one, then swaps)."""

    kind = "local"

    def __init__(self, name: str, spec: str, make_model: Callable[[Path, str], LocalModel], on_reload=None):
        self.name, self.spec, self.make_model = name, spec, make_model
        self.on_reload = on_reload or (lambda route: None)
        self.root = Path(spec).expanduser() if spec not in ("default", "minilm") else None
        self.follows = self.root is not None and is_run_root(self.root)
        self.reload_lock = threading.Lock()
        try:
            path = current_checkpoint(self.root) if self.follows else resolve_model_path(spec)
        except ModelError as exc:
            raise ModelError(
                f"route {name}: {exc}; a route's model is a model directory, 'default', or a run root (a folder "
                "with a current link or registry.sqlite, as `rlhfkit demo` makes in runs/demo)"
            ) from None
        self.model = make_model(path, self.label(path))

    def label(self, path: Path) -> str:
        return "default" if self.spec == "default" else str(path)

    @property
    def checkpoint(self) -> str:
        return self.model.checkpoint

    def check(self) -> bool:
        """Serve the run root's current checkpoint if it changed; True when it switched. A checkpoint that fails to
        load is reported and the old one kept."""
        if not self.follows:
            return False
        with self.reload_lock:
            try:
                path = current_checkpoint(self.root)
            except ModelError as exc:
                console.print(f"[red]route {self.name}: {exc}; still serving {self.checkpoint}[/]")
                return False
            if self.label(path) == self.checkpoint:
                return False
            try:
                new = self.make_model(path, self.label(path))
            except Exception as exc:  # a half-written or broken checkpoint must not take the route down
                console.print(f"[red]route {self.name}: cannot load {path} ({exc}); still serving {self.checkpoint}[/]")
                return False
            old, self.model = self.model, new
            old.retire()
            console.print(f"route {self.name}: now serving {new.checkpoint} (was {old.checkpoint})")
            self.on_reload(self)
            return True

    def submit(self, generation: Generation) -> None:
        """Queue on the current model (the new one if a reload retired the old one meanwhile)."""
        while not self.model.submit(generation):
            time.sleep(0.001)

    def close(self) -> None:
        self.model.retire()


class UpstreamRoute:
    """A route forwarded to an OpenAI-compatible server with httpx; streams are passed through chunk by chunk."""

    kind = "upstream"

    def __init__(self, name: str, url: str, model: str | None, key_env: str | None, timeout: float):
        import httpx

        self.name, self.url, self.upstream_model = name, url.rstrip("/"), model
        headers = {}
        if key_env:
            key = os.environ.get(key_env)
            if not key:
                raise ModelError(f"routes.{name}.upstream_key_env: the environment variable {key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)
        self.checkpoint = f"{self.url}" + (f" ({model})" if model else "")

    def body(self, request: dict) -> dict:
        return {**request, "model": self.upstream_model or request["model"]}

    def failure(self, exc: Exception) -> ServeError:
        return ServeError(f"upstream {self.url} cannot be reached ({type(exc).__name__}: {exc})", status=502)

    async def refused(self, response) -> ServeError:
        text = (await response.aread()).decode(errors="replace")
        try:
            message = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = text[:500]
        status = response.status_code if 400 <= response.status_code < 500 else 502
        return ServeError(f"upstream {self.url} answered {response.status_code}: {message}", status=status)

    async def complete(self, path: str, request: dict) -> dict:
        import httpx

        try:
            response = await self.client.post(path, json=self.body(request))
        except httpx.HTTPError as exc:
            raise self.failure(exc) from None
        if response.status_code != 200:
            raise await self.refused(response)
        try:
            return response.json()
        except ValueError:
            raise ServeError(f"upstream {self.url} answered with something other than JSON", status=502) from None

    async def stream(self, path: str, request: dict) -> AsyncIterator[dict]:
        """The upstream's stream chunks, parsed; its final `[DONE]` is not passed on (the gateway sends its own
        after the audit entry is written)."""
        import httpx

        try:
            async with self.client.stream("POST", path, json=self.body(request)) as response:
                if response.status_code != 200:
                    raise await self.refused(response)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        yield json.loads(data)
                    except ValueError:
                        raise ServeError(
                            f"upstream {self.url} sent a stream line that is not JSON", status=502
                        ) from None
        except httpx.HTTPError as exc:
            raise self.failure(exc) from None

    def close(self) -> None:
        pass


class SplitRoute:
    """An A/B split between two routes with a fixed share, deterministic per request id or per key."""

    kind = "split"

    def __init__(self, name: str, a: str, b: str, share_b: float, by: str):
        self.name, self.a, self.b, self.share_b, self.by = name, a, b, share_b, by

    def pick(self, request_id: str, key_id: str) -> str:
        import hashlib

        subject = key_id if self.by == "key" else request_id
        digest = hashlib.sha256(f"{self.name}:{subject}".encode()).digest()
        return self.b if int.from_bytes(digest[:8], "big") / 2**64 < self.share_b else self.a

    def close(self) -> None:
        pass
