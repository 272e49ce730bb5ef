"""Answers to catalog reads, kept in memory until the database changes.

The catalog's public reads (model listings, single models and versions, by-hash lookups) are far more
frequent than writes, and each answer is a pure function of the database and the request. An answer is
kept, as the bytes sent, until the next commit to the database, by any connection of any process:

- On SQLite, `PRAGMA data_version` on a private connection changes whenever another connection (this
  node's engine, its other processes, or any other program) commits to the file. It is read, in a few
  microseconds and without leaving the event loop, on every `get` and again on every `put`; the whole
  cache is dropped when it moved. Every write of the node goes through connections other than this one,
  so an answer is never served after a commit that could change it (download counts included).
- Elsewhere (PostgreSQL, in-memory SQLite) nothing is cached: PostgreSQL has no cheap, exact signal that
  another process committed, and a time-to-live would serve stale answers.

Use: `generation, value = cache.get(key)`; on a miss compute the value and `cache.put(generation, key,
value)`, which keeps it only if the database did not change in between (so the value was computed from
the state that `generation` names, whatever thread computed it).
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections import OrderedDict
from typing import Any

from node.core.db import Database

# Bookkeeping per entry beside the bytes of the value (key, dict slot, tuple), for the size bound.
ENTRY_OVERHEAD_BYTES = 256


class ReadCache:
    """An LRU of answers (bytes) bounded in total size, dropped whole whenever the database changes."""

    def __init__(self, db: Database, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Any, bytes] = OrderedDict()
        self._seen: int | None = None
        self._conn: sqlite3.Connection | None = None
        database = db.engine.url.database if db.dialect == "sqlite" else None
        if max_bytes > 0 and database and database != ":memory:" and not database.startswith("file:"):
            try:
                self._conn = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
                # Never wait on the event loop: a locked database reads as "changed" (nothing cached).
                self._conn.execute("PRAGMA busy_timeout = 0")
                self._conn.execute("PRAGMA query_only = ON")
            except sqlite3.Error:
                self._conn = None
            else:
                db.on_close(self.close)

    @property
    def enabled(self) -> bool:
        return self._conn is not None

    def _generation(self) -> int | None:
        if self._conn is None:
            return None
        try:
            current = self._conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            self.clear()
            self._seen = None
            return None
        if current != self._seen:
            self.clear()
            self._seen = current
        return current

    def get(self, key: Any) -> tuple[int | None, bytes | None]:
        """(generation, value): value is None on a miss; generation is None when nothing may be kept."""
        generation = self._generation()
        if generation is None:
            return None, None
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
            self._entries.move_to_end(key)
        return generation, value

    def put(self, generation: int | None, key: Any, value: bytes) -> None:
        """Keep `value`, computed after `get` returned `generation`, unless the database changed since."""
        if generation is None or self._generation() != generation:
            return
        cost = len(value) + ENTRY_OVERHEAD_BYTES
        if cost > self.max_bytes // 4:
            return  # one huge answer would push out many ordinary ones
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= len(old) + ENTRY_OVERHEAD_BYTES
        self._entries[key] = value
        self.size += cost
        while self.size > self.max_bytes:
            _key, dropped = self._entries.popitem(last=False)
            self.size -= len(dropped) + ENTRY_OVERHEAD_BYTES

    def clear(self) -> None:
        self._entries.clear()
        self.size = 0

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self.clear()
        if conn is not None:
            conn.close()


_caches: weakref.WeakKeyDictionary[Database, ReadCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def read_cache(db: Database, max_bytes: int) -> ReadCache:
    """The cache of answers for this database (one per database, sized by the first caller)."""
    cache = _caches.get(db)
    if cache is None:
        with _caches_lock:
            cache = _caches.get(db)
            if cache is None:
                cache = _caches[db] = ReadCache(db, max_bytes)
    return cache
