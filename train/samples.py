"""The user's collected samples (ink + corrected LaTeX) and fine-tuned model versions,
in one SQLite database. No torch, no Qt: the app and `hmer-train finetune` share it.

Durability: WAL journal, one transaction per change, synchronous=FULL, so a
process killed at any moment loses at most the change in flight and never
corrupts the store. The schema carries a version number.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.inkml import InkMLError, parse_inkml, write_inkml
from model.vocab import Vocabulary
from train.latex import LatexError, tokenize_checked

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    latex TEXT NOT NULL,
    tokens TEXT NOT NULL,      -- space-separated vocabulary tokens
    strokes BLOB NOT NULL,     -- see _pack_strokes
    source TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    path TEXT NOT NULL,
    parent INTEGER REFERENCES models(id),
    metrics TEXT NOT NULL DEFAULT '{}',
    note TEXT NOT NULL DEFAULT ''
);
"""


class SampleError(ValueError):
    """A sample that cannot be stored (e.g. its label has unknown symbols)."""


@dataclass(frozen=True)
class Sample:
    id: int
    latex: str
    tokens: list[str]
    strokes: list[np.ndarray]
    source: str
    created: float
    updated: float


@dataclass(frozen=True)
class ModelVersion:
    id: int
    path: str
    parent: int | None
    metrics: dict
    note: str
    created: float


def _pack_strokes(strokes: list[np.ndarray]) -> bytes:
    arrays = [np.asarray(s, dtype=np.float32)[:, :2] for s in strokes]
    buf = io.BytesIO()
    np.savez(buf, lengths=np.array([len(a) for a in arrays], dtype=np.int64),
             points=np.concatenate(arrays) if arrays else np.zeros((0, 2), np.float32))  # fmt: skip
    return buf.getvalue()


def _unpack_strokes(blob: bytes) -> list[np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        lengths, points = data["lengths"], data["points"].astype(np.float64)
    return np.split(points, np.cumsum(lengths)[:-1]) if len(lengths) else []


class SampleStore:
    def __init__(self, path: str | Path, vocab: Vocabulary | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.vocab = vocab or Vocabulary.default()
        self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        with self._transaction() as db:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise SampleError(f"{self.path} has schema version {row[0]}; this program knows {SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # --- samples ----------------------------------------------------------------------

    def validate_label(self, latex: str) -> list[str]:
        """Tokens of a label, or SampleError naming the unknown symbol or the syntax problem."""
        try:
            return tokenize_checked(latex, self.vocab)
        except (LatexError, ValueError) as e:
            raise SampleError(str(e)) from e

    def add(self, strokes: list[np.ndarray], latex: str, source: str = "app") -> int:
        tokens = self.validate_label(latex)
        if not strokes or not any(len(s) for s in strokes):
            raise SampleError("a sample needs ink")
        now = time.time()
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO samples (created, updated, latex, tokens, strokes, source) VALUES (?, ?, ?, ?, ?, ?)",
                (now, now, latex, " ".join(tokens), _pack_strokes(strokes), source),
            )
            return int(cur.lastrowid)

    def update_label(self, sample_id: int, latex: str) -> None:
        tokens = self.validate_label(latex)
        with self._transaction() as db:
            cur = db.execute("UPDATE samples SET latex=?, tokens=?, updated=? WHERE id=?",
                             (latex, " ".join(tokens), time.time(), sample_id))  # fmt: skip
            if cur.rowcount == 0:
                raise SampleError(f"no sample {sample_id}")

    def delete(self, sample_id: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM samples WHERE id=?", (sample_id,))

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def samples(self, contains: str = "") -> list[Sample]:
        rows = self._db.execute(
            "SELECT id, latex, tokens, strokes, source, created, updated FROM samples "
            "WHERE latex LIKE ? ORDER BY id", (f"%{contains}%",),
        ).fetchall()  # fmt: skip
        return [Sample(r[0], r[1], r[2].split(), _unpack_strokes(r[3]), r[4], r[5], r[6]) for r in rows]

    # --- InkML exchange ---------------------------------------------------------------

    def export_inkml(self, folder: str | Path) -> int:
        """Every sample as CROHME-compatible InkML plus captions/<name>.txt; returns the count."""
        folder = Path(folder)
        split = folder / "samples"
        lines = []
        for s in self.samples():
            name = f"sample{s.id:06d}"
            write_inkml(split / f"{name}.inkml", s.strokes, f"${s.latex}$")
            lines.append(f"{name}\t{' '.join(s.tokens)}")
        (folder / "captions").mkdir(parents=True, exist_ok=True)
        (folder / "captions" / "samples.txt").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        return len(lines)

    def import_inkml(self, source: str | Path) -> tuple[int, list[str]]:
        """Add the labelled InkML files of a folder or .zip; returns (added, problems by file)."""
        source = Path(source)
        added, problems = 0, []
        if source.suffix == ".zip":
            with zipfile.ZipFile(source) as zf:
                items = [(n, zf.read(n)) for n in sorted(zf.namelist()) if n.endswith(".inkml")]
        else:
            items = [(str(p), p.read_bytes()) for p in sorted(source.rglob("*.inkml"))]
        for name, data in items:
            try:
                ink = parse_inkml(data, name)
                if not ink.truth:
                    raise SampleError("no truth annotation")
                self.add(ink.traces, ink.truth.strip().strip("$").strip(), source=f"import:{Path(name).name}")
                added += 1
            except (InkMLError, SampleError) as e:
                problems.append(f"{Path(name).name}: {e}")
        return added, problems

    # --- model versions ---------------------------------------------------------------

    def add_model(self, path: str | Path, parent: int | None, metrics: dict, note: str = "") -> int:
        with self._transaction() as db:
            cur = db.execute("INSERT INTO models (created, path, parent, metrics, note) VALUES (?, ?, ?, ?, ?)",
                             (time.time(), str(path), parent, json.dumps(metrics), note))  # fmt: skip
            return int(cur.lastrowid)

    def models(self) -> list[ModelVersion]:
        rows = self._db.execute("SELECT id, path, parent, metrics, note, created FROM models ORDER BY id").fetchall()
        return [ModelVersion(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]

    def active_model(self) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE key='active_model'").fetchone()
        return int(row[0]) if row and row[0] else None

    def set_active_model(self, model_id: int | None) -> None:
        """None = the bundled model. Rolling back is setting an earlier id."""
        with self._transaction() as db:
            if model_id is not None and db.execute("SELECT 1 FROM models WHERE id=?", (model_id,)).fetchone() is None:
                raise SampleError(f"no model version {model_id}")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('active_model', ?)", ("" if model_id is None else str(model_id),))
