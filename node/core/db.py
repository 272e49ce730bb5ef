"""The database: async engine and sessions, SQLite pragmas, and the Alembic migration history.

SQLite (the embedded default) runs in WAL mode with a busy timeout and foreign keys on; PostgreSQL is
used by URL. Both share one migration history in node/core/migrations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from node.core.config import Config
from node.core.errors import ConfigError, SchemaOutOfDate

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest migration. Kept here so that starting a node need not import Alembic (a quarter of a
# second); tests/test_migrations.py fails when it is not Alembic's head.
SCHEMA_HEAD = "0017"
VERSION_TABLE = "alembic_version"
# Indexes that only migrations create: the tsvector's, and those of migration 0003 (an expression
# index cannot be declared on a table class).
MIGRATION_ONLY_INDEXES = {"ix_model_search_tsv", "ix_model_tags_tag_model", "ix_models_status_rating",
                          "ix_models_status_published_at", "ix_models_status_download_count",
                          "ix_models_status_like_count"}


@dataclass(frozen=True)
class SchemaStatus:
    """Where the database's schema stands against this version of the code."""

    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def declared_in_tables(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic `include_object`: skip the search index objects that only migrations create
    (the FTS5 table and its shadow tables on SQLite, the tsvector column on PostgreSQL)."""
    if type_ == "table" and name and name.startswith("model_search_fts"):
        return False
    if type_ == "index" and name in MIGRATION_ONLY_INDEXES:
        return False
    if type_ == "column" and name == "tsv" and getattr(obj, "table", None) is not None \
            and obj.table.name == "model_search":
        return False
    return True


def alembic_config() -> Any:
    """An Alembic config for the project's migrations (no alembic.ini needed)."""
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def alembic_head() -> str | None:
    """The head of the migration history as Alembic computes it from the scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


class Database:
    """One engine and its session factory."""

    def __init__(self, url: str, *, busy_timeout_ms: int = 5000, pool_size: int = 5, echo: bool = False) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"echo": echo}
        if url.startswith("postgresql"):
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            _configure_sqlite(self.engine, busy_timeout_ms)
        # On SQLite a session that reads and then writes must hold the write lock from its first
        # statement: a deferred transaction cannot upgrade once another connection has committed
        # ("database is locked" at once, whatever the busy timeout). `session()` therefore begins
        # IMMEDIATE there; `read_session()` stays deferred, for work that never writes.
        writer = self.engine.execution_options(atrium_begin="BEGIN IMMEDIATE")
        self.sessionmaker = async_sessionmaker(writer, class_=AsyncSession, expire_on_commit=False)
        self.read_sessionmaker = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        self._closers: list[Any] = []

    def on_close(self, closer: Any) -> None:
        """Run `closer()` when the database is closed (resources opened beside the engine)."""
        self._closers.append(closer)

    @classmethod
    def from_config(cls, config: Config) -> Database:
        url = config.database_url
        if url.startswith("sqlite"):
            config.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(url, busy_timeout_ms=config.database.busy_timeout_ms,
                   pool_size=config.database.pool_size, echo=config.database.echo)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session that may write; commit explicitly, it rolls back on error and is closed on exit."""
        async with self.sessionmaker() as session:
            yield session

    @asynccontextmanager
    async def read_session(self) -> AsyncIterator[AsyncSession]:
        """A session for reads only: on SQLite it does not take the write lock."""
        async with self.read_sessionmaker() as session:
            yield session

    async def schema_status(self) -> SchemaStatus:
        """The applied and the newest migration revision."""
        async with self._connect() as conn:
            current = await conn.run_sync(_current_revision)
        return SchemaStatus(current=current, head=SCHEMA_HEAD)

    async def require_current_schema(self) -> None:
        """Raise SchemaOutOfDate unless every migration has been applied."""
        status = await self.schema_status()
        if status.up_to_date:
            return
        if status.current is None:
            raise SchemaOutOfDate("the database has no schema yet: run `atrium db upgrade` "
                                  "(or start with `atrium serve --migrate`)")
        raise SchemaOutOfDate(f"the database schema is at {status.current} but this version of Atrium needs "
                              f"{status.head}: back up the database, then run `atrium db upgrade` "
                              "(or start with `atrium serve --migrate`)")

    async def upgrade(self, revision: str = "head") -> SchemaStatus:
        """Apply migrations up to `revision` in one transaction; returns the new status."""
        async with self._connect() as conn:
            await conn.run_sync(_run_upgrade, revision)
            await conn.commit()
        return await self.schema_status()

    async def close(self) -> None:
        for closer in reversed(self._closers):
            closer()
        self._closers.clear()
        await self.engine.dispose()

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[Any]:
        # Any failure to open a connection (refused, unknown host, wrong password, no such
        # database) is a configuration problem, reported in one line naming database.url.
        try:
            conn = await self.engine.connect()
        except Exception as exc:
            raise ConfigError(f"database.url: cannot open the database: {_short(exc)}") from None
        try:
            yield conn
        finally:
            await conn.close()


def _current_revision(sync_conn: Connection) -> str | None:
    if not inspect(sync_conn).has_table(VERSION_TABLE):
        return None
    rows = sync_conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return rows[0] if len(rows) == 1 else ",".join(sorted(rows)) or None


def _run_upgrade(sync_conn: Connection, revision: str) -> None:
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, revision)


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _configure_sqlite(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (pysqlite's own
        # handling breaks SAVEPOINT and transactional DDL).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get("atrium_begin", "BEGIN"))
