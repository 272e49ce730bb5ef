"""The read cache of catalog answers: served until the next commit, from any process, and never after."""

from __future__ import annotations

import asyncio

import sqlite3
import subprocess
import sys
from typing import Any

import pytest

from node.core.db import Database
from node.core.readcache import ENTRY_OVERHEAD_BYTES, ReadCache, read_cache
from node.core.tables import Role
from tests.conftest import Api
from tests.test_catalog import Creator


@pytest.fixture
async def creator(api: Api) -> Creator:
    return Creator(api, await api.user("maker", Role.CREATOR))


def cache_of(api: Api) -> ReadCache:
    node = api.node
    return read_cache(node.db, node.config.database.read_cache_mb * 1024 * 1024)


async def get_json(api: Api, path: str) -> Any:
    response = await api.call("GET", path)
    assert response.status == 200, await response.text()
    return await response.json()


async def listed_names(api: Api) -> list[str]:
    return [item["name"] for item in (await get_json(api, "/api/v1/models?limit=20&query=cat&types=LORA"))["items"]]


async def test_a_repeated_listing_is_answered_from_the_cache(api: Api, creator: Creator) -> None:
    await creator.published()
    cache = cache_of(api)
    assert cache.enabled
    first = await listed_names(api)
    hits = cache.hits
    assert await listed_names(api) == first == ["Cat Style"]
    assert cache.hits == hits + 1


async def test_an_edit_through_the_api_shows_on_the_next_read(api: Api, creator: Creator) -> None:
    model, version, file = await creator.published()
    by_hash = f"/api/v1/model-versions/by-hash/{file['hashes']['SHA256']}"
    for _ in range(2):  # the second read comes from the cache
        assert await listed_names(api) == ["Cat Style"]
        assert (await get_json(api, f"/api/v1/models/{model['id']}"))["name"] == "Cat Style"
        assert (await get_json(api, by_hash))["stats"]["downloadCount"] == 0
    await creator.json("PATCH", f"/api/node/v1/models/{model['id']}", json={"name": "Cat Style Deluxe"})
    assert await listed_names(api) == ["Cat Style Deluxe"]
    assert (await get_json(api, f"/api/v1/models/{model['id']}"))["name"] == "Cat Style Deluxe"
    download = await api.call("GET", f"/api/download/models/{version['id']}")
    assert download.status == 200
    await download.read()
    assert (await get_json(api, by_hash))["stats"]["downloadCount"] == 1
    await creator.json("POST", f"/api/node/v1/models/{model['id']}/unpublish")
    assert await listed_names(api) == []
    assert (await api.call("GET", by_hash)).status == 404


async def test_a_write_by_another_process_shows_on_the_next_read(api: Api, creator: Creator) -> None:
    model, _version, _file = await creator.published()
    for _ in range(2):
        assert await listed_names(api) == ["Cat Style"]
    database = api.node.db.engine.url.database
    script = ("import sqlite3, sys; conn = sqlite3.connect(sys.argv[1]); "
              "conn.execute('UPDATE models SET name = ? WHERE id = ?', ('Renamed Elsewhere', int(sys.argv[2]))); "
              "conn.commit()")
    # In a thread: the node's loop keeps running (its background work may hold the write lock briefly).
    await asyncio.to_thread(subprocess.run, [sys.executable, "-c", script, database, str(model["id"])],
                            check=True, timeout=30)
    assert await listed_names(api) == ["Renamed Elsewhere"]
    assert (await get_json(api, f"/api/v1/models/{model['id']}"))["name"] == "Renamed Elsewhere"


async def test_an_answer_computed_across_a_commit_is_not_kept(tmp_path: Any) -> None:
    path = tmp_path / "cache.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    db = Database(f"sqlite+aiosqlite:///{path}")
    try:
        cache = ReadCache(db, max_bytes=1 << 20)
        generation, value = cache.get("k")
        assert value is None and generation is not None
        with sqlite3.connect(path) as conn:  # a commit while the answer was being computed
            conn.execute("INSERT INTO t VALUES (1)")
        cache.put(generation, "k", b"stale")
        assert cache.get("k")[1] is None
        generation, _ = cache.get("k")
        cache.put(generation, "k", b"fresh")
        assert cache.get("k")[1] == b"fresh"
        with sqlite3.connect(path) as conn:
            conn.execute("INSERT INTO t VALUES (2)")
        assert cache.get("k")[1] is None
    finally:
        await db.close()


async def test_the_cache_keeps_to_its_size_dropping_the_least_recently_used(tmp_path: Any) -> None:
    path = tmp_path / "cache.db"
    sqlite3.connect(path).close()
    db = Database(f"sqlite+aiosqlite:///{path}")
    try:
        value = b"x" * 1000
        cache = ReadCache(db, max_bytes=4 * (len(value) + ENTRY_OVERHEAD_BYTES))
        for key in "abcd":
            cache.put(cache.get(key)[0], key, value)
        cache.get("a")  # now the most recently used
        cache.put(cache.get("e")[0], "e", value)
        assert [k for k in "abcde" if cache.get(k)[1] is not None] == ["a", "c", "d", "e"]
        assert cache.size <= cache.max_bytes
    finally:
        await db.close()


async def test_nothing_is_cached_on_postgresql_or_when_turned_off(tmp_path: Any, pg_url: str) -> None:
    pg = Database(pg_url.replace("postgresql://", "postgresql+asyncpg://"))
    sqlite3.connect(tmp_path / "off.db").close()
    off = Database(f"sqlite+aiosqlite:///{tmp_path / 'off.db'}")
    try:
        for cache in (ReadCache(pg, max_bytes=1 << 20), ReadCache(off, max_bytes=0)):
            assert not cache.enabled
            cache.put(cache.get("k")[0], "k", b"v")
            assert cache.get("k") == (None, None)
    finally:
        await pg.close()
        await off.close()
