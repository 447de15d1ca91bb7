"""Output for people: one rich console on stderr (stdout stays for data), progress bars on long work.

`RLHFKIT_NO_PROGRESS=1` turns the bars off (the tests and CI set it)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int):
    """A rich progress bar on stderr; yields `advance(n=1, **fields)` where fields are shown after the bar."""
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
            info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            progress.update(task, advance=n, **({"info": info} if fields else {}))

        yield advance


def say(text: str) -> None:
    """Print text as it is (no rich markup or highlighting), wrapped softly."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)
