"""Durable scheduler state in SQLite (WAL): models, pipelines, their generations/versions, topic deletes,
the units' placement, the workers known to the cluster and settings changed at run time."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from headrace.config.manifests import ModelManifest

log = logging.getLogger("headrace.scheduler")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    manifest TEXT NOT NULL,
    generation INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    placement TEXT NOT NULL DEFAULT '{}'
);
-- The last generation ever given to a name, so a model loaded again after an unload never reuses one.
CREATE TABLE IF NOT EXISTS generations (
    name TEXT PRIMARY KEY,
    generation INTEGER NOT NULL
);
-- Pipelines: the manifest is that pipeline's YAML document, as workers receive it.
CREATE TABLE IF NOT EXISTS pipelines (
    name TEXT PRIMARY KEY,
    manifest TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pipeline_versions (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
-- Topics to delete once their owner ("model:<name>" or "pipeline:<name>") is gone (cleanTopicsOnDelete).
CREATE TABLE IF NOT EXISTS topic_deletes (
    topic TEXT PRIMARY KEY,
    owner TEXT NOT NULL
);
-- Sharding: the worker each unit ("pipeline:<p>:<partition>", "modelgw:<slot>:<partition>") goes to.
CREATE TABLE IF NOT EXISTS units (
    unit TEXT PRIMARY KEY,
    worker TEXT NOT NULL
);
-- Workers that joined and did not leave: after a restart the scheduler waits for them to come back.
CREATE TABLE IF NOT EXISTS known_workers (
    worker TEXT PRIMARY KEY
);
-- Settings changed through the control API (e.g. maxShardCountMultiplier), as JSON values.
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class StoredPlacement(msgspec.Struct, frozen=True):
    server: str = ""
    replicas: list[int] = []


class ModelRow(msgspec.Struct, frozen=True, kw_only=True):
    manifest: ModelManifest
    generation: int
    updated_at: float
    placement: StoredPlacement = StoredPlacement()


class PipelineRow(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    manifest: str  # YAML
    version: int
    updated_at: float


class Store:
    """One SQLite connection, serialised by a lock; every write is committed before it returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def models(self) -> list[ModelRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, manifest, generation, updated_at, placement FROM models ORDER BY name"
            ).fetchall()
        out: list[ModelRow] = []
        for name, manifest, generation, updated_at, placement in rows:
            try:
                out.append(
                    ModelRow(
                        manifest=msgspec.json.decode(manifest, type=ModelManifest),
                        generation=generation,
                        updated_at=updated_at,
                        placement=msgspec.json.decode(placement, type=StoredPlacement),
                    )
                )
            except msgspec.DecodeError as exc:
                log.error("stored model %s cannot be read, skipping it: %s", name, exc)
        return out

    def next_generation(self, name: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT generation FROM generations WHERE name = ?", (name,)).fetchone()
        return (int(row[0]) if row else 0) + 1

    def put_models(self, rows: list[ModelRow]) -> None:
        """Insert or replace these models in one transaction."""
        if not rows:
            return
        with self._tx() as db:
            for row in rows:
                name = row.manifest.name
                db.execute(
                    "INSERT OR REPLACE INTO models (name, manifest, generation, updated_at, placement) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        name,
                        msgspec.json.encode(row.manifest).decode(),
                        row.generation,
                        row.updated_at,
                        msgspec.json.encode(row.placement).decode(),
                    ),
                )
                db.execute(
                    "INSERT INTO generations (name, generation) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET generation = max(generation, excluded.generation)",
                    (name, row.generation),
                )

    def set_placement(self, name: str, placement: StoredPlacement) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE models SET placement = ? WHERE name = ?",
                (msgspec.json.encode(placement).decode(), name),
            )

    def delete_model(self, name: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM models WHERE name = ?", (name,)).rowcount > 0

    # ------------------------------------------------------------------------------- pipelines

    def pipelines(self) -> list[PipelineRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, manifest, version, updated_at FROM pipelines ORDER BY name"
            ).fetchall()
        return [PipelineRow(name=n, manifest=m, version=v, updated_at=u) for n, m, v, u in rows]

    def next_pipeline_version(self, name: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT version FROM pipeline_versions WHERE name = ?", (name,)).fetchone()
        return (int(row[0]) if row else 0) + 1

    def put_pipelines(self, rows: list[PipelineRow]) -> None:
        """Insert or replace these pipelines in one transaction."""
        if not rows:
            return
        with self._tx() as db:
            for row in rows:
                db.execute(
                    "INSERT OR REPLACE INTO pipelines (name, manifest, version, updated_at) "
                    "VALUES (?, ?, ?, ?)",
                    (row.name, row.manifest, row.version, row.updated_at),
                )
                db.execute(
                    "INSERT INTO pipeline_versions (name, version) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET version = max(version, excluded.version)",
                    (row.name, row.version),
                )

    def delete_pipeline(self, name: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM pipelines WHERE name = ?", (name,)).rowcount > 0

    # ---------------------------------------------------------------------------- topic deletes

    def topic_deletes(self) -> dict[str, str]:
        """Topic -> owner, for topics still to delete."""
        with self._lock:
            rows = self._db.execute("SELECT topic, owner FROM topic_deletes ORDER BY topic").fetchall()
        return {str(topic): str(owner) for topic, owner in rows}

    def add_topic_deletes(self, topics: dict[str, str]) -> None:
        if not topics:
            return
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO topic_deletes (topic, owner) VALUES (?, ?)", sorted(topics.items())
            )

    def remove_topic_deletes(self, topics: set[str]) -> None:
        if not topics:
            return
        with self._tx() as db:
            db.executemany("DELETE FROM topic_deletes WHERE topic = ?", [(t,) for t in sorted(topics)])

    # ------------------------------------------------------------------------------ sharding

    def units(self) -> dict[str, str]:
        with self._lock:
            rows = self._db.execute("SELECT unit, worker FROM units").fetchall()
        return {str(u): str(w) for u, w in rows}

    def put_units(self, placement: dict[str, str]) -> None:
        """Replace the stored placement with this one."""
        with self._tx() as db:
            db.execute("DELETE FROM units")
            db.executemany("INSERT INTO units (unit, worker) VALUES (?, ?)", sorted(placement.items()))

    def known_workers(self) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT worker FROM known_workers").fetchall()
        return {str(w) for (w,) in rows}

    def set_known_workers(self, workers: set[str]) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM known_workers")
            db.executemany("INSERT INTO known_workers (worker) VALUES (?)", [(w,) for w in sorted(workers)])

    def setting(self, name: str) -> object | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return msgspec.json.decode(row[0]) if row else None

    def put_setting(self, name: str, value: object) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO settings (name, value) VALUES (?, ?)",
                (name, msgspec.json.encode(value).decode()),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
