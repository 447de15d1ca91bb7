"""Checkpoint registry: an SQLite file (`registry.sqlite`) in a run root that records each checkpoint's metrics,
gate result and lineage, which checkpoint is current, and rolls back to an earlier passing one.

Every change runs in one transaction, so an error leaves the file as it was. "Before" means registered
earlier (a smaller id), never a timestamp comparison.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..atomic import replace_link
from ..errors import RlhfkitError
from .gate import GateResult

SCHEMA_VERSION = 1
FILENAME = "registry.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    created TEXT NOT NULL,
    passed INTEGER,
    metrics TEXT NOT NULL,
    gate TEXT,
    lineage TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    name TEXT PRIMARY KEY,
    checkpoint_id INTEGER REFERENCES checkpoints(id)
);
"""


class RegistryError(RlhfkitError):
    """The registry file is unreadable, an id is unknown, or no checkpoint qualifies for a rollback."""


@dataclass(frozen=True)
class Checkpoint:
    id: int
    path: str
    created: str  # UTC, ISO 8601
    passed: bool | None  # None: no gate recorded
    metrics: dict[str, Any]
    gate: GateResult | None
    lineage: dict[str, Any]  # sft model, reward model, data, config path, ...
    current: bool


class Registry:
    """The registry of one run root; each method opens the file, does one transaction and closes it."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / FILENAME
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"{self.root}: the registry root must be a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
            with conn:
                versions = [v for (v,) in conn.execute("SELECT version FROM schema_version")]
                if not versions:
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                elif max(versions) > SCHEMA_VERSION:
                    raise RegistryError(
                        f"{self.path}: schema version {max(versions)} was written by a newer rlhfkit "
                        f"(this one reads version {SCHEMA_VERSION}); upgrade rlhfkit"
                    )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            with closing(sqlite3.connect(self.path, timeout=30)) as conn:
                conn.execute("PRAGMA foreign_keys = ON")
                yield conn
        except sqlite3.DatabaseError as exc:
            raise RegistryError(
                f"{self.path}: cannot use the registry ({exc}); restore it from a backup or move "
                "it aside to start a new one"
            ) from None

    # ------------------------------------------------------------ writes

    def register(
        self,
        checkpoint_path: str | Path,
        metrics: dict[str, Any] | None = None,
        gate: GateResult | None = None,
        lineage: dict[str, Any] | None = None,
        make_current: bool = True,
    ) -> int:
        """Record a checkpoint and return its id; it becomes current unless `make_current` is False."""
        checkpoint_path = Path(checkpoint_path)
        if not checkpoint_path.exists():
            raise RegistryError(f"{checkpoint_path}: checkpoint not found; pass the folder a stage wrote")
        row = (
            str(checkpoint_path.resolve()),
            datetime.now(timezone.utc).isoformat(timespec="seconds"),
            None if gate is None else int(gate.passed),
            _dumps(metrics or {}, "metrics"),
            None if gate is None else _dumps(gate.to_dict(), "gate"),
            _dumps(lineage or {}, "lineage"),
        )
        with self._connect() as conn, conn:
            cursor = conn.execute(
                "INSERT INTO checkpoints (path, created, passed, metrics, gate, lineage) VALUES (?, ?, ?, ?, ?, ?)", row
            )
            checkpoint_id = int(cursor.lastrowid)
            if make_current:
                self._set_current(conn, checkpoint_id)
        return checkpoint_id

    def record_gate(self, checkpoint_id: int, gate: GateResult) -> None:
        """Store (or replace) the gate result of a registered checkpoint."""
        with self._connect() as conn, conn:
            self._require(conn, checkpoint_id)
            conn.execute(
                "UPDATE checkpoints SET passed = ?, gate = ? WHERE id = ?",
                (int(gate.passed), _dumps(gate.to_dict(), "gate"), checkpoint_id),
            )

    def set_current(self, checkpoint_id: int) -> Checkpoint:
        with self._connect() as conn, conn:
            self._require(conn, checkpoint_id)
            self._set_current(conn, checkpoint_id)
        return self.get(checkpoint_id)

    def rollback(self) -> Checkpoint:
        """Make current the newest passing checkpoint registered before the current one; when the current one is
        not passing (failed or never gated), or none is current, the newest passing checkpoint of all."""
        with self._connect() as conn, conn:
            current = self._current_id(conn)
            passed = (
                conn.execute("SELECT passed FROM checkpoints WHERE id = ?", (current,)).fetchone() if current else None
            )
            if passed is not None and passed[0] == 1:
                target = conn.execute(
                    "SELECT id FROM checkpoints WHERE passed = 1 AND id < ? ORDER BY id DESC LIMIT 1", (current,)
                ).fetchone()
                where = f"registered before the current checkpoint {current}"
            else:
                target = conn.execute("SELECT id FROM checkpoints WHERE passed = 1 ORDER BY id DESC LIMIT 1").fetchone()
                where = "in the registry"
            if target is None:
                raise RegistryError(
                    f"{self.path}: cannot roll back, no checkpoint {where} passed its gate; "
                    "record a gate result (record_gate) or register a passing checkpoint"
                )
            self._set_current(conn, target[0])
        return self.get(target[0])

    # ------------------------------------------------------------ reads

    def get(self, checkpoint_id: int) -> Checkpoint:
        with self._connect() as conn:
            self._require(conn, checkpoint_id)
            current = self._current_id(conn)
            row = conn.execute(f"SELECT {_COLUMNS} FROM checkpoints WHERE id = ?", (checkpoint_id,)).fetchone()
        return _checkpoint(row, current)

    def current(self) -> Checkpoint | None:
        with self._connect() as conn:
            current = self._current_id(conn)
        return self.get(current) if current is not None else None

    def list(self) -> list[Checkpoint]:
        """All checkpoints, oldest first."""
        with self._connect() as conn:
            current = self._current_id(conn)
            rows = conn.execute(f"SELECT {_COLUMNS} FROM checkpoints ORDER BY id").fetchall()
        return [_checkpoint(row, current) for row in rows]

    # ------------------------------------------------------------ helpers

    def _require(self, conn: sqlite3.Connection, checkpoint_id: int) -> None:
        if conn.execute("SELECT 1 FROM checkpoints WHERE id = ?", (checkpoint_id,)).fetchone() is None:
            raise RegistryError(f"{self.path}: no checkpoint with id {checkpoint_id}; `list` shows the ids")

    @staticmethod
    def _current_id(conn: sqlite3.Connection) -> int | None:
        row = conn.execute("SELECT checkpoint_id FROM state WHERE name = 'current'").fetchone()
        return row[0] if row else None

    @staticmethod
    def _set_current(conn: sqlite3.Connection, checkpoint_id: int) -> None:
        conn.execute(
            "INSERT INTO state (name, checkpoint_id) VALUES ('current', ?) "
            "ON CONFLICT(name) DO UPDATE SET checkpoint_id = excluded.checkpoint_id",
            (checkpoint_id,),
        )


_COLUMNS = "id, path, created, passed, metrics, gate, lineage"


def _dumps(value: dict[str, Any], what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RegistryError(
            f"registry: the {what} must be JSON (numbers, strings, lists, mappings; no NaN): {exc}"
        ) from None


def _checkpoint(row: tuple, current: int | None) -> Checkpoint:
    checkpoint_id, path, created, passed, metrics, gate, lineage = row
    return Checkpoint(
        id=checkpoint_id,
        path=path,
        created=created,
        passed=None if passed is None else bool(passed),
        metrics=json.loads(metrics),
        gate=GateResult.from_dict(json.loads(gate)) if gate else None,
        lineage=json.loads(lineage),
        current=checkpoint_id == current,
    )


def format_registry(rows: list[Checkpoint]) -> str:
    """Plain-text table, oldest first; `*` marks the current checkpoint."""
    if not rows:
        return "registry: no checkpoints registered"
    table = [("", "id", "created", "gate", "path", "metrics")]
    for c in rows:
        gate = "-" if c.passed is None else "PASS" if c.passed else "FAIL"
        metrics = " ".join(
            f"{k}={v:.4g}"
            for k, v in sorted(c.metrics.items())
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        )
        table.append(("*" if c.current else "", str(c.id), c.created, gate, c.path, metrics))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table)


def update_current_link(root: Path, target: str) -> None:
    """ROOT/current -> the current checkpoint (a symlink replaced atomically)."""
    replace_link(root / "current", target)
