"""Output for people: one rich console on stderr (stdout stays for data), progress on long work.

On a terminal, progress is a live bar. When stderr is not a terminal (a log file, nohup, CI, `| tee`), a bar would
show only its final state, so long loops print a plain line instead every RLHFKIT_PROGRESS_EVERY seconds (30 by
default) and when they end: step, rate, time left and the bar's metrics. `RLHFKIT_NO_PROGRESS=1` turns both off
(the tests set it)."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def format_fields(fields: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@contextmanager
def progress_lines(description: str, total: int, every: float):
    """Progress as plain lines, for output that is not a terminal; the same `advance` as progress_bar."""
    start = last = time.monotonic()
    done, info = 0, ""

    def line() -> str:
        elapsed = time.monotonic() - start
        rate = done / elapsed if elapsed > 0 else 0.0
        left = f", {duration((total - done) / rate)} left" if rate > 0 and done < total else ""
        shown = f"  {info}" if info else ""
        return f"{description}: {done}/{total} ({rate:.3g}/s, {duration(elapsed)} elapsed{left}){shown}"

    def advance(n: int = 1, **fields: Any) -> None:
        nonlocal done, info, last
        done += n
        info = format_fields(fields) if fields else info
        now = time.monotonic()
        if now - last >= every:
            last = now
            say(line())

    yield advance
    say(line())


@contextmanager
def progress_bar(description: str, total: int):
    """Progress on stderr (a live bar on a terminal, plain lines otherwise); yields `advance(n=1, **fields)` where
    fields are shown after the bar."""
    if os.environ.get("RLHFKIT_NO_PROGRESS") != "1" and not console.is_terminal:
        with progress_lines(description, total, float(os.environ.get("RLHFKIT_PROGRESS_EVERY", "30"))) as advance:
            yield advance
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
        disable=os.environ.get("RLHFKIT_NO_PROGRESS") == "1",
    )
    with progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: Any) -> None:
            progress.update(task, advance=n, **({"info": format_fields(fields)} if fields else {}))

        yield advance


def say(text: str) -> None:
    """Print text as it is (no rich markup or highlighting), wrapped softly."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)
