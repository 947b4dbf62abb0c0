"""An idempotent inbox on SQLite: the effect of a message and the record that it was processed
commit in one transaction, so a redelivered message is recognised and has no second effect.

``processed`` holds one row per message uid (the primary key makes a second insert a no-op);
``effects`` gets a row only when that insert made a new row, in the same transaction. The effect
count of a uid is its number of ``effects`` rows: the checker requires exactly one for every
message that must arrive. Several consumer processes may share one file (WAL, ``BEGIN IMMEDIATE``
and a busy timeout serialise them); a consumer killed mid-transaction leaves nothing behind.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["SqliteInbox"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS processed (uid TEXT PRIMARY KEY, message_id TEXT NOT NULL,"
    " consumer TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS effects (seq INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT NOT NULL,"
    " consumer TEXT NOT NULL)",
)


class SqliteInbox:
    def __init__(self, path: str | os.PathLike[str], *, consumer: str = "") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.consumer = consumer
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def apply(self, uid: str, message_id: str = "") -> bool:
        """Process ``uid`` once: True if this call made the effect, False if it was already done."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO processed (uid, message_id, consumer) VALUES (?, ?, ?)",
                (uid, message_id, self.consumer),
            )
            first = cursor.rowcount == 1
            if first:
                self._db.execute("INSERT INTO effects (uid, consumer) VALUES (?, ?)", (uid, self.consumer))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return first

    def is_processed(self, uid: str) -> bool:
        row = self._db.execute("SELECT 1 FROM processed WHERE uid = ?", (uid,)).fetchone()
        return row is not None

    def effect_counts(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for uid, count in self._db.execute("SELECT uid, COUNT(*) FROM effects GROUP BY uid"):
            counts[str(uid)] = int(count)
        return counts

    def processed_count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM processed").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
