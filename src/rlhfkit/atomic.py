"""Files and directories that appear whole or not at all: write into a temporary sibling, then rename it into place."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside TARGET; when the block ends without error it replaces TARGET (an old
    TARGET is moved aside first and removed after, so a crash leaves either the old or the new one, never a mix).
    On error the temporary folder is removed and TARGET is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Yield a handle on a fresh temporary file beside PATH; when the block ends without error the file replaces
    PATH. On error the temporary file is removed and PATH is left as it was (a crash leaves at most a hidden
    `.NAME.*.tmp`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write PATH whole or not at all (see atomic_file)."""
    with atomic_file(path, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)
    return Path(path)


def write_json(path: str | Path, value: Any) -> Path:
    """Indented JSON, written atomically; values JSON cannot hold (paths, dates) as their str()."""
    return atomic_write(path, json.dumps(value, indent=2, default=str) + "\n")


def replace_link(link: Path, target: str | Path) -> None:
    """Point the symlink LINK at TARGET atomically (a new link beside it, then a rename over the old one)."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def check_writable(path: str | Path, option: str, folder: bool = True) -> Path:
    """Refuse, before any work is done, an output PATH that cannot be written: a folder that is a file (a file
    that is a folder), a parent that is a file, or a place this user cannot write in. OPTION names the setting in
    the message. The nearest existing folder is probed by making (and removing) a temporary folder in it."""
    from .errors import ConfigError

    path = Path(path).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{option} '{path}' is a file, not a folder; give a folder (or remove the file)")
    if not folder and path.is_dir():
        raise ConfigError(f"{option} '{path}' is a folder; give a file name")
    nearest = path if folder else path.parent
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise ConfigError(f"{option} '{path}': '{nearest}' is a file, so no folder can be made under it")
    try:
        shutil.rmtree(tempfile.mkdtemp(prefix=".rlhfkit-write-check.", dir=nearest))
    except OSError as exc:
        raise ConfigError(f"{option} '{path}': cannot write in '{nearest}' ({exc.strerror})") from None
    return path


@contextmanager
def run_folder(path: str | Path) -> Iterator[Path]:
    """A run writing into the folder PATH: when the block fails and PATH did not exist before it, what the run
    made is removed (no partial run folder that looks like a result), unless it holds checkpoints/, which
    `resume=true` continues from. A PATH that existed before is left as it is."""
    path = Path(path)
    existed = path.exists()
    try:
        yield path
    except BaseException:
        if not existed and path.is_dir() and not (path / "checkpoints").is_dir():
            shutil.rmtree(path, ignore_errors=True)
        raise
