"""The migration history builds the schema the code expects, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from node.core.config import async_database_url
from node.core.db import SCHEMA_HEAD, Database, alembic_head, declared_in_tables
from node.core.errors import ConfigError, SchemaOutOfDate
from node.core.tables import metadata


# SQLAlchemy cannot reflect SQLite's expression index (migration 0003); it is skipped on purpose.
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
async def test_upgrade_from_nothing_reaches_head_and_matches_the_tables(database_url: str, tmp_path: Path) -> None:
    db = Database(async_database_url(database_url, tmp_path))
    try:
        assert (await db.schema_status()).current is None
        status = await db.upgrade()
        assert status.current == SCHEMA_HEAD and status.up_to_date
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True, "include_object": declared_in_tables}),
                metadata))
        assert diff == [], f"tables and migrations disagree: {diff}"
    finally:
        await db.close()


def test_the_declared_schema_head_is_alembics_head() -> None:
    assert SCHEMA_HEAD == alembic_head()


async def test_upgrade_twice_is_harmless(database_url: str, tmp_path: Path) -> None:
    db = Database(async_database_url(database_url, tmp_path))
    try:
        await db.upgrade()
        status = await db.upgrade()
        assert status.up_to_date
    finally:
        await db.close()


async def test_an_unmigrated_database_is_refused_with_the_command_to_run(database_url: str, tmp_path: Path) -> None:
    db = Database(async_database_url(database_url, tmp_path))
    try:
        with pytest.raises(SchemaOutOfDate, match="atrium db upgrade"):
            await db.require_current_schema()
    finally:
        await db.close()


async def test_an_older_schema_is_refused_naming_both_revisions(database_url: str, tmp_path: Path) -> None:
    db = Database(async_database_url(database_url, tmp_path))
    try:
        await db.upgrade()
        async with db.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'older'"))
        with pytest.raises(SchemaOutOfDate, match=f"at older but this version of Atrium needs {SCHEMA_HEAD}"):
            await db.require_current_schema()
    finally:
        await db.close()


async def test_sqlite_runs_in_wal_mode_with_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", busy_timeout_ms=1234)
    try:
        async with db.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 1234
    finally:
        await db.close()


async def test_an_unreachable_postgresql_is_a_config_error_naming_database_url() -> None:
    db = Database("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    try:
        with pytest.raises(ConfigError, match="database.url: cannot open the database"):
            await db.schema_status()
    finally:
        await db.close()


async def test_models_mirrored_before_0011_get_their_files_indexed(database_url: str, tmp_path: Path) -> None:
    import json

    db = Database(async_database_url(database_url, tmp_path))
    try:
        await db.upgrade("0010")
        versions = [{"id": 7, "name": "v1", "baseModel": "SD 1.5", "air": "urn:air:sd1:lora:a:3@7",
                     "files": [{"id": 9, "name": "cats.safetensors", "size": 1024, "primary": True, "sha256": "AB" * 32},
                               {"id": "bad"}]},
                    "not a version"]
        async with db.engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO remote_models (origin, remote_id, origin_name, name, type, description, nsfw_level,"
                " tags, versions, seq, updated_at) VALUES ('z6Mkorigin', 3, 'a', 'Cats', 'LORA', '', 1, '[]',"
                " :versions, 5, CURRENT_TIMESTAMP)"), {"versions": json.dumps(versions)})
        await db.upgrade()
        async with db.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT origin, file_id, model_id, version_id, base_model, sha256, size,"
                                            " \"primary\" FROM remote_files"))).all()
        assert [tuple(r) for r in rows] == [("z6Mkorigin", 9, 3, 7, "SD 1.5", "ab" * 32, 1024, True)]
    finally:
        await db.close()
