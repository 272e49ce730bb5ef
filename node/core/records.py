"""Complete records of models, versions, files and images, loaded in bulk (a handful of queries per
page, whatever its size) for the APIs and pages to render.

These are the hottest reads of a node (every listing and by-hash lookup), so they skip the ORM: the
records hold Core rows, read-only objects with the same attribute names as the table classes. On
SQLite they run in a small thread pool, each thread with its own plain sqlite3 connection; measured
with bench/catalog_queries.py, that is several times cheaper per query than the async session over
aiosqlite (one connection, a thread hop per cursor call, ORM objects). PostgreSQL uses the async engine.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import weakref
from collections import defaultdict, namedtuple
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import col, select

from node.core.db import Database
from node.core.tables import (FileHash, FileTorrent, Image, ImageResource, Model, ModelFile, ModelTag, ModelVersion, Tag,
                              User, UTCDateTime)

# How many example images a model listing carries per version.
IMAGES_PER_VERSION = 10
# Reader threads (and sqlite3 connections) per SQLite database: one per core of the machines we target.
READ_THREADS = 2
# Per reader connection: address space mapped over the database file, and the page cache (KiB).
MMAP_BYTES = 1 << 30
CACHE_KIB = 32 * 1024

T = TypeVar("T")

MODELS = Model.__table__  # type: ignore[attr-defined]
VERSIONS = ModelVersion.__table__  # type: ignore[attr-defined]
FILES = ModelFile.__table__  # type: ignore[attr-defined]
HASHES = FileHash.__table__  # type: ignore[attr-defined]
TORRENTS = FileTorrent.__table__  # type: ignore[attr-defined]
IMAGES = Image.__table__  # type: ignore[attr-defined]
USERS = User.__table__  # type: ignore[attr-defined]


class _SqliteReader:
    """Read-only queries on one SQLite database from a small pool of threads, one connection each."""

    def __init__(self, database: str, busy_timeout_ms: int = 5000) -> None:
        # A sync engine only to compile and run Core statements (with its statement cache); the
        # connections are created and kept per thread below, not pooled across threads.
        self.engine = sa.create_engine(f"sqlite:///{database}", poolclass=sa.pool.NullPool)
        self.busy_timeout_ms = busy_timeout_ms
        self.local = threading.local()
        self.connections: list[Connection] = []
        self.pool: ThreadPoolExecutor | None = ThreadPoolExecutor(max_workers=READ_THREADS,
                                                                  thread_name_prefix="atrium-read")

        @sa.event.listens_for(self.engine, "connect")
        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we say when a read transaction starts
            dbapi_connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            dbapi_connection.execute("PRAGMA query_only = ON")
            # Pages read through a memory map and a larger page cache: no read() per page on the hot path.
            dbapi_connection.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
            dbapi_connection.execute(f"PRAGMA cache_size = -{CACHE_KIB}")

    def _connection(self) -> Connection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = self.engine.connect()
            self.connections.append(conn)
        return conn

    def _run(self, fn: Callable[[Connection], T]) -> T:
        conn = self._connection()
        # One snapshot for every query of the record set.
        conn.exec_driver_sql("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.exec_driver_sql("ROLLBACK")
            conn.commit()  # ends SQLAlchemy's own (driver-level no-op) transaction

    async def run(self, fn: Callable[[Connection], T]) -> T:
        if self.pool is None:
            raise RuntimeError("the database is closed")
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._run, fn)

    def close(self) -> None:
        if self.pool is None:
            return  # closed already (by Database.close, then again by the finalizer)
        pool, self.pool = self.pool, None
        pool.shutdown(wait=False)
        for conn in self.connections:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing from another thread at exit is best effort
                pass
        self.engine.dispose()


class RowType:
    """Rows of one table read with plain sqlite3, as the same kind of values SQLAlchemy gives: named
    tuples with the table's column names, timestamps as aware datetimes, booleans, parsed JSON."""

    def __init__(self, table: sa.Table) -> None:
        self.columns = [c.name for c in table.columns]
        self.select = ", ".join(f'"{name}"' for name in self.columns)
        self.tuple = namedtuple(f"{table.name}_row", self.columns)  # type: ignore[misc]
        self.converters = [(i, _converter(c.type)) for i, c in enumerate(table.columns) if _converter(c.type)]

    def make(self, raw: Sequence[Any]) -> Any:
        if not self.converters:
            return self.tuple._make(raw)
        values = list(raw)
        for i, convert in self.converters:
            if values[i] is not None:
                values[i] = convert(values[i])
        return self.tuple._make(values)


def _sqlite_datetime(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _converter(type_: Any) -> Callable[[Any], Any] | None:
    if isinstance(type_, UTCDateTime):
        return _sqlite_datetime
    if isinstance(type_, sa.JSON):
        return json.loads
    if isinstance(type_, sa.Boolean):
        return bool
    return None


def raw_sqlite(conn: Connection) -> sqlite3.Connection | None:
    """The plain sqlite3 connection under `conn`, on a reader thread; None elsewhere (PostgreSQL, or
    SQLite through aiosqlite, whose connection belongs to its own thread)."""
    if conn.dialect.name != "sqlite":
        return None
    driver = conn.connection.driver_connection
    return driver if isinstance(driver, sqlite3.Connection) else None


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


_readers: weakref.WeakKeyDictionary[Database, _SqliteReader] = weakref.WeakKeyDictionary()
_readers_lock = threading.Lock()


def _sqlite_reader(db: Database) -> _SqliteReader | None:
    if db.dialect != "sqlite":
        return None
    reader = _readers.get(db)
    if reader is None:
        database = db.engine.url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        with _readers_lock:
            reader = _readers.get(db)
            if reader is None:
                reader = _readers[db] = _SqliteReader(database)
                db.on_close(reader.close)
                weakref.finalize(db, reader.close)
    return reader


async def read(db: Database, fn: Callable[[Connection], T]) -> T:
    """Run `fn(connection)`, a function of read-only Core queries, in one read transaction.

    On SQLite it runs in a reader thread with its own connection (it may block there); elsewhere
    through the async engine, where `fn` gets the sync facade of an async connection.
    """
    reader = _sqlite_reader(db)
    if reader is not None:
        return await reader.run(fn)
    async with db.engine.connect() as conn:
        return await conn.run_sync(fn)


@dataclass
class FileRecord:
    file: Any  # a row with the columns of ModelFile
    hashes: dict[str, str]  # Civitai hash kind -> uppercase hex
    torrent: tuple[str, str] | None = None  # (v1, v2) info-hashes, once the file's torrent is made


@dataclass
class VersionRecord:
    version: Any  # a row with the columns of ModelVersion
    files: list[FileRecord] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)  # rows with the columns of Image


@dataclass
class ModelRecord:
    model: Any  # a row with the columns of Model
    creator: Any  # a row with the username of the owner
    tags: list[str]
    versions: list[VersionRecord]


async def load_models(db: Database, ids: Sequence[int], *, include_drafts: bool = False,
                      image_levels: int | None = None) -> list[ModelRecord]:
    """Records for the models with these ids, in the order given (missing ids are skipped).

    Only published versions are included unless `include_drafts`. `image_levels` restricts the
    example images to a content-level mask.
    """
    if not ids:
        return []
    ids = list(ids)
    return await read(db, lambda conn: _load_models(conn, ids, include_drafts, image_levels))


def _load_models(conn: Connection, ids: list[int], include_drafts: bool,
                 image_levels: int | None) -> list[ModelRecord]:
    raw = raw_sqlite(conn)
    if raw is not None:
        return _load_models_sqlite(raw, ids, include_drafts, image_levels)
    models = {row.id: row for row in conn.execute(sa.select(MODELS).where(MODELS.c.id.in_(ids)))}
    if not models:
        return []
    owners = {row.id: row for row in conn.execute(
        sa.select(USERS.c.id, USERS.c.username).where(USERS.c.id.in_({m.owner_id for m in models.values()})))}
    tags: dict[int, list[str]] = defaultdict(list)
    for model_id, name in conn.execute(
            sa.select(col(ModelTag.model_id), col(Tag.name)).join(Tag, col(Tag.id) == col(ModelTag.tag_id))
            .where(col(ModelTag.model_id).in_(ids)).order_by(col(Tag.name))):
        tags[model_id].append(name)
    version_stmt = sa.select(VERSIONS).where(VERSIONS.c.model_id.in_(ids))
    if not include_drafts:
        version_stmt = version_stmt.where(VERSIONS.c.status == "Published")
    versions = conn.execute(version_stmt.order_by(VERSIONS.c.id.desc())).all()
    by_version = _version_records(conn, versions, image_levels)
    by_model: dict[int, list[VersionRecord]] = defaultdict(list)
    for v in versions:
        by_model[v.model_id].append(by_version[v.id])
    return [ModelRecord(model=models[i], creator=owners[models[i].owner_id], tags=tags.get(i, []),
                        versions=by_model.get(i, [])) for i in ids if i in models]


async def load_versions(db: Database, version_ids: Sequence[int], *,
                        image_levels: int | None = None) -> list[tuple[VersionRecord, Any]]:
    """Version records with their models (rows with the columns of Model), in the order given."""
    if not version_ids:
        return []
    version_ids = list(version_ids)
    return await read(db, lambda conn: _load_versions(conn, version_ids, image_levels))


def _load_versions(conn: Connection, version_ids: list[int],
                   image_levels: int | None) -> list[tuple[VersionRecord, Any]]:
    raw = raw_sqlite(conn)
    if raw is not None:
        return _load_versions_sqlite(raw, version_ids, image_levels)
    versions = conn.execute(sa.select(VERSIONS).where(VERSIONS.c.id.in_(version_ids))).all()
    if not versions:
        return []
    models = {row.id: row for row in conn.execute(
        sa.select(MODELS).where(MODELS.c.id.in_({v.model_id for v in versions})))}
    by_version = _version_records(conn, versions, image_levels)
    order = {v.id: v for v in versions}
    return [(by_version[vid], models[order[vid].model_id]) for vid in version_ids if vid in order]


def _version_records(conn: Connection, versions: Sequence[Any], image_levels: int | None) -> dict[int, VersionRecord]:
    records = {v.id: VersionRecord(version=v) for v in versions}
    if not records:
        return records
    files = conn.execute(sa.select(FILES).where(FILES.c.version_id.in_(list(records)))
                         .order_by(FILES.c.primary.desc(), FILES.c.id)).all()
    hashes: dict[int, dict[str, str]] = defaultdict(dict)
    if files:
        for file_id, kind, value in conn.execute(
                sa.select(HASHES.c.file_id, HASHES.c.kind, HASHES.c.value)
                .where(HASHES.c.file_id.in_([f.id for f in files]))):
            hashes[file_id][kind] = value.upper()
    torrents = {} if not files else {row.file_id: (row.info_hash_v1, row.info_hash_v2) for row in conn.execute(
        sa.select(TORRENTS.c.file_id, TORRENTS.c.info_hash_v1, TORRENTS.c.info_hash_v2)
        .where(TORRENTS.c.file_id.in_([f.id for f in files])))}
    for f in files:
        records[f.version_id].files.append(FileRecord(file=f, hashes=hashes.get(f.id, {}), torrent=torrents.get(f.id)))
    # The first few images of each version, without reading every image of popular versions.
    position = sa.func.row_number().over(partition_by=IMAGES.c.version_id, order_by=IMAGES.c.id).label("n")
    ranked = sa.select(IMAGES.c.id, position).where(IMAGES.c.version_id.in_(list(records)))
    if image_levels is not None:
        ranked = ranked.where(IMAGES.c.nsfw_level.op("&")(image_levels) != 0)
    ranked_sub = ranked.subquery()
    first_ids = sa.select(ranked_sub.c.id).where(ranked_sub.c.n <= IMAGES_PER_VERSION)
    for image in conn.execute(sa.select(IMAGES).where(IMAGES.c.id.in_(first_ids)).order_by(IMAGES.c.id)):
        records[image.version_id].images.append(image)
    return records


# -- the same reads in plain SQL on SQLite ---------------------------------------------------------
# Building and compiling a Core statement and processing its rows cost about a millisecond per
# statement, more than SQLite takes to answer it; these run the same queries as prepared SQL text
# (sqlite3 keeps the compiled statements) and give rows of the same shape. The Core versions above stay
# the definition, and run on PostgreSQL; tests compare the two backends' answers.

_MODEL_ROWS = RowType(MODELS)
_VERSION_ROWS = RowType(VERSIONS)
_FILE_ROWS = RowType(FILES)
_IMAGE_ROWS = RowType(IMAGES)
_Owner = namedtuple("_Owner", "id username")


def _load_models_sqlite(db: Any, ids: list[int], include_drafts: bool, image_levels: int | None) -> list[ModelRecord]:
    marks = _marks(ids)
    models = {row.id: row for row in map(_MODEL_ROWS.make, db.execute(
        f"SELECT {_MODEL_ROWS.select} FROM models WHERE id IN ({marks})", ids))}
    if not models:
        return []
    owner_ids = list({m.owner_id for m in models.values()})
    owners = {row[0]: _Owner._make(row) for row in db.execute(
        f"SELECT id, username FROM users WHERE id IN ({_marks(owner_ids)})", owner_ids)}
    tags: dict[int, list[str]] = defaultdict(list)
    for model_id, name in db.execute(
            "SELECT model_tags.model_id, tags.name FROM model_tags JOIN tags ON tags.id = model_tags.tag_id "
            f"WHERE model_tags.model_id IN ({marks}) ORDER BY tags.name", ids):
        tags[model_id].append(name)
    published = "" if include_drafts else " AND status = 'Published'"
    versions = [_VERSION_ROWS.make(row) for row in db.execute(
        f"SELECT {_VERSION_ROWS.select} FROM model_versions WHERE model_id IN ({marks}){published} ORDER BY id DESC",
        ids)]
    by_version = _version_records_sqlite(db, versions, image_levels)
    by_model: dict[int, list[VersionRecord]] = defaultdict(list)
    for v in versions:
        by_model[v.model_id].append(by_version[v.id])
    return [ModelRecord(model=models[i], creator=owners[models[i].owner_id], tags=tags.get(i, []),
                        versions=by_model.get(i, [])) for i in ids if i in models]


def _load_versions_sqlite(db: Any, version_ids: list[int], image_levels: int | None) -> list[tuple[VersionRecord, Any]]:
    versions = [_VERSION_ROWS.make(row) for row in db.execute(
        f"SELECT {_VERSION_ROWS.select} FROM model_versions WHERE id IN ({_marks(version_ids)})", version_ids)]
    if not versions:
        return []
    model_ids = list({v.model_id for v in versions})
    models = {row.id: row for row in map(_MODEL_ROWS.make, db.execute(
        f"SELECT {_MODEL_ROWS.select} FROM models WHERE id IN ({_marks(model_ids)})", model_ids))}
    by_version = _version_records_sqlite(db, versions, image_levels)
    order = {v.id: v for v in versions}
    return [(by_version[vid], models[order[vid].model_id]) for vid in version_ids if vid in order]


def _version_records_sqlite(db: Any, versions: Sequence[Any], image_levels: int | None) -> dict[int, VersionRecord]:
    records = {v.id: VersionRecord(version=v) for v in versions}
    if not records:
        return records
    version_ids = list(records)
    marks = _marks(version_ids)
    files = [_FILE_ROWS.make(row) for row in db.execute(
        f'SELECT {_FILE_ROWS.select} FROM model_files WHERE version_id IN ({marks}) ORDER BY "primary" DESC, id',
        version_ids)]
    hashes: dict[int, dict[str, str]] = defaultdict(dict)
    if files:
        file_ids = [f.id for f in files]
        for file_id, kind, value in db.execute(
                f"SELECT file_id, kind, value FROM file_hashes WHERE file_id IN ({_marks(file_ids)})", file_ids):
            hashes[file_id][kind] = value.upper()
    torrents: dict[int, tuple[str, str]] = {}
    if files:
        torrents = {file_id: (v1, v2) for file_id, v1, v2 in db.execute(
            f"SELECT file_id, info_hash_v1, info_hash_v2 FROM file_torrents WHERE file_id IN ({_marks(file_ids)})",
            file_ids)}
    for f in files:
        records[f.version_id].files.append(FileRecord(file=f, hashes=hashes.get(f.id, {}), torrent=torrents.get(f.id)))
    levels = "" if image_levels is None else f" AND (nsfw_level & {int(image_levels)}) != 0"
    for row in db.execute(
            f"SELECT {_IMAGE_ROWS.select} FROM images WHERE id IN (SELECT id FROM (SELECT id, row_number() OVER "
            f"(PARTITION BY version_id ORDER BY id) AS n FROM images WHERE version_id IN ({marks}){levels}) "
            f"WHERE n <= {IMAGES_PER_VERSION}) ORDER BY id", version_ids):
        image = _IMAGE_ROWS.make(row)
        records[image.version_id].images.append(image)
    return records


async def image_resources(db: Database, image_ids: Sequence[int]) -> dict[int, list[ImageResource]]:
    """The resources each image was made with."""
    result: dict[int, list[ImageResource]] = defaultdict(list)
    if not image_ids:
        return result
    async with db.read_session() as session:
        for row in (await session.exec(select(ImageResource).where(col(ImageResource.image_id).in_(image_ids))
                                       .order_by(col(ImageResource.id)))).all():
            result[row.image_id].append(row)
    return result


@dataclass
class ImageRecord:
    image: Image
    username: str
    base_model: str | None


async def load_images(db: Database, ids: Sequence[int]) -> list[ImageRecord]:
    """Image records (with their owner's name and the version's base model), in the order given."""
    if not ids:
        return []
    async with db.read_session() as session:
        images = {i.id: i for i in (await session.exec(select(Image).where(col(Image.id).in_(ids)))).all()}
        owners = {u.id: u.username for u in (await session.exec(
            select(User).where(col(User.id).in_({i.owner_id for i in images.values()})))).all()}
        versions = {v.id: v.base_model for v in (await session.exec(
            select(ModelVersion).where(col(ModelVersion.id).in_(
                {i.version_id for i in images.values() if i.version_id is not None})))).all()}
    return [ImageRecord(image=images[i], username=owners.get(images[i].owner_id, "?"),
                        base_model=versions.get(images[i].version_id) if images[i].version_id else None)
            for i in ids if i in images]
