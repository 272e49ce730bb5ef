"""Finding models: full-text query, filters, the Civitai sorts, and keyset (cursor) pagination.

Text search uses SQLite FTS5 on the embedded default and a tsvector on PostgreSQL. Both treat a
query the same way: it is split into words, every word must match, and the last word also matches
as a prefix ("cat sty" finds "cat style"). Results are never ranked by relevance (bm25 ranking
scans every match and does not scale); they come in the order of the requested sort.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import threading
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from node.core.db import Database
from node.core.errors import InvalidInput
from node.core.records import raw_sqlite, read
from node.core.tables import Model, ModelFile, ModelSearch, ModelTag, ModelVersion, Tag, User, utcnow
from node.core.vocabulary import ALL_BROWSING_LEVELS, ModelSort, NsfwLevel, Period

MAX_LIMIT = 100
DEFAULT_LIMIT = 100
# Civitai refuses page-based requests past this many items: clients must switch to cursors.
PAGE_ITEM_CAP = 1000
MAX_QUERY_WORDS = 12
# Letters and digits; everything else (punctuation, underscores, spaces) separates words.
WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)
SAFE_LEVELS = int(NsfwLevel.PG | NsfwLevel.PG13)
VISIBLE_LEVELS = int(ALL_BROWSING_LEVELS)

PERIOD_DAYS = {Period.DAY: 1, Period.WEEK: 7, Period.MONTH: 30, Period.YEAR: 365}
# On PostgreSQL, a listing first looks for its page among this many published models, taken in the
# requested order from the sort's index, then among the next size, and only then sorts every match
# (SQLite chooses its plan per request: _find_models_sqlite). Common filters
# (a type, a popular tag or word) fill a page from the first window, and sorting all of their tens of
# thousands of matches cost 50-250 ms a request on 100,000 models (bench/catalog_queries.py).
SORT_WINDOWS = (400, 4000)


class PageCapExceeded(InvalidInput):
    """page * limit is past the cap: Civitai answers 429 and says to use cursors."""

    code = "page_cap_exceeded"


def search_words(text: str) -> list[str]:
    """Text as search sees it: accents folded, lower case, split into runs of letters and digits.

    Documents are stored in this form and queries are put in it too, so SQLite's and PostgreSQL's
    tokenizers (which differ on accents, hosts, versions and decimals) both see plain words and find
    the same models.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    folded = "".join(c for c in decomposed if not unicodedata.combining(c))
    return WORD_RE.findall(folded.lower())


def search_document(parts: list[str]) -> str:
    """The stored search document of a model: each part normalised, one part per line."""
    return "\n".join(" ".join(search_words(part)) for part in parts if part)


def query_words(text: str) -> list[str]:
    """The words of a search query, normalised like documents, so FTS and SQL syntax cannot leak in."""
    return search_words(text)[:MAX_QUERY_WORDS]


def fts5_expression(words: list[str]) -> str:
    """An FTS5 MATCH expression: each word quoted, the last one also as a prefix."""
    quoted = [f'"{w}"' for w in words]
    quoted[-1] += "*"
    return " AND ".join(quoted)


def tsquery_expression(words: list[str]) -> str:
    """The same query for PostgreSQL's to_tsquery('simple', ...)."""
    parts = [w for w in words]
    parts[-1] += ":*"
    return " & ".join(parts)


def rating_expr() -> Any:
    # Constants are literal, not bound parameters: SQLite uses an index on an expression only for the
    # identical expression (migration 0003 indexes this one).
    return sa.case((col(Model.rating_count) > sa.literal_column("0"),
                    sa.cast(col(Model.rating_sum), sa.Float) / col(Model.rating_count)),
                   else_=sa.literal_column("0.0"))


SORT_COLUMNS: dict[ModelSort, tuple[Any, bool]] = {
    # sort -> (expression, descending)
    ModelSort.NEWEST: (col(Model.published_at), True),
    ModelSort.OLDEST: (col(Model.published_at), False),
    ModelSort.MOST_DOWNLOADED: (col(Model.download_count), True),
    ModelSort.MOST_LIKED: (col(Model.like_count), True),
    # Atrium has no collections yet: a like is the nearest thing to collecting a model.
    ModelSort.MOST_COLLECTED: (col(Model.like_count), True),
    ModelSort.MOST_DISCUSSED: (col(Model.comment_count), True),
    ModelSort.MOST_IMAGES: (col(Model.image_count), True),
}


@dataclass
class ModelQuery:
    """The parameters of `GET /api/v1/models`, already parsed."""

    limit: int = DEFAULT_LIMIT
    page: int | None = None
    cursor: str | None = None
    query: str | None = None
    tag: str | None = None
    username: str | None = None
    types: list[str] = field(default_factory=list)
    base_models: list[str] = field(default_factory=list)
    sort: ModelSort = ModelSort.HIGHEST_RATED
    period: Period = Period.ALL_TIME
    nsfw: bool | None = None
    browsing_level: int = VISIBLE_LEVELS
    ids: list[int] = field(default_factory=list)
    allow_no_credit: bool | None = None
    allow_derivatives: bool | None = None
    allow_different_license: bool | None = None
    allow_commercial_use: list[str] = field(default_factory=list)
    hash: str | None = None

    def check(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidInput(f"limit: must be from 1 to {MAX_LIMIT}")
        if self.page is not None:
            if self.page < 1:
                raise InvalidInput("page: must be 1 or more")
            if self.cursor is not None:
                raise InvalidInput("give either page or cursor, not both")
            if self.page * self.limit > PAGE_ITEM_CAP:
                raise PageCapExceeded(f"page * limit may not exceed {PAGE_ITEM_CAP}; use the cursor from "
                                      "metadata.nextCursor to go further")


@dataclass
class ModelPage:
    """One page of model ids in order, with what the client needs to fetch the next."""

    ids: list[int]
    next_cursor: str | None
    total: int | None = None


def encode_cursor(value: Any, model_id: int) -> str:
    if hasattr(value, "isoformat"):
        value = {"t": value.isoformat()}
    raw = json.dumps([value, model_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[Any, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value, model_id = json.loads(raw)
        if isinstance(value, dict):
            value = datetime.fromisoformat(value["t"])
        if not isinstance(model_id, int):
            raise ValueError
        return value, model_id
    except (ValueError, TypeError, KeyError, json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidInput("cursor: not a cursor this node gave out") from None


def _base_query(q: ModelQuery, dialect: str, *, windowed: bool = False) -> Any:
    # sa.select, not sqlmodel's: rows keep every column (sqlmodel returns scalars for one column).
    stmt = sa.select(col(Model.id)).where(Model.status == "Published")
    if q.query:
        words = query_words(q.query)
        if words:
            if dialect == "sqlite":
                fts = sa.text("SELECT rowid FROM model_search_fts WHERE model_search_fts MATCH :expr") \
                    .bindparams(expr=fts5_expression(words)).columns(sa.column("rowid"))
                stmt = stmt.where(col(Model.id).in_(fts))
            else:
                match = sa.text("tsv @@ to_tsquery('simple', :expr)").bindparams(expr=tsquery_expression(words))
                stmt = stmt.where(col(Model.id).in_(select(ModelSearch.model_id).where(match)))
    if q.tag:
        tag_name = " ".join(q.tag.strip().lower().split())
        if windowed:
            # One primary-key probe per candidate, instead of listing every model with the tag.
            stmt = stmt.where(sa.exists().where(col(ModelTag.model_id) == col(Model.id), col(ModelTag.tag_id) ==
                                                sa.select(col(Tag.id)).where(Tag.name == tag_name).scalar_subquery()))
        else:
            stmt = stmt.where(col(Model.id).in_(
                select(ModelTag.model_id).join(Tag, col(Tag.id) == col(ModelTag.tag_id)).where(Tag.name == tag_name)))
    if q.username:
        stmt = stmt.where(col(Model.owner_id).in_(select(User.id).where(User.username_key == q.username.lower())))
    if q.types:
        stmt = stmt.where(col(Model.type).in_(q.types))
    if q.base_models:
        stmt = stmt.where(col(Model.id).in_(
            select(ModelVersion.model_id).where(col(ModelVersion.base_model).in_(q.base_models),
                                                ModelVersion.status == "Published")))
    if q.ids:
        stmt = stmt.where(col(Model.id).in_(q.ids))
    if q.hash:
        from node.core.tables import FileHash

        stmt = stmt.where(col(Model.id).in_(
            select(ModelVersion.model_id).join(ModelFile, col(ModelFile.version_id) == col(ModelVersion.id))
            .join(FileHash, col(FileHash.file_id) == col(ModelFile.id)).where(FileHash.value == q.hash.lower())))
    levels = q.browsing_level & (SAFE_LEVELS if q.nsfw is False else VISIBLE_LEVELS)
    stmt = stmt.where(col(Model.nsfw_level).op("&")(levels) != 0)
    for flag in ("allow_no_credit", "allow_derivatives", "allow_different_license"):
        value = getattr(q, flag)
        if value is not None:
            stmt = stmt.where(getattr(Model, flag) == value)
    if q.allow_commercial_use:
        # Models allowing any of the uses asked for. The JSON list's text is compared, the same way on
        # SQLite and PostgreSQL; the quotes keep "Rent" from matching "RentCivit".
        uses = sa.cast(col(Model.allow_commercial_use), sa.Text)
        allowed = [uses.like(f'%"{use}"%') for use in q.allow_commercial_use]
        if "None" in q.allow_commercial_use:
            allowed.append(uses.notlike('%"%'))  # an empty list: no commercial use
        stmt = stmt.where(sa.or_(*allowed))
    if q.period != Period.ALL_TIME:
        stmt = stmt.where(col(Model.published_at) >= utcnow() - timedelta(days=PERIOD_DAYS[q.period]))
    return stmt


async def find_models(db: Database, q: ModelQuery) -> ModelPage:
    """The ids of the published models matching `q`, in its sort order, one page at a time."""
    q.check()
    dialect = db.dialect
    return await read(db, lambda conn: _find_models(conn, q, dialect))


def _find_models(conn: Any, q: ModelQuery, dialect: str) -> ModelPage:
    raw = raw_sqlite(conn)
    if raw is not None:
        return _find_models_sqlite(raw, q)
    if q.sort == ModelSort.HIGHEST_RATED:
        key, descending = rating_expr(), True
    else:
        key, descending = SORT_COLUMNS[q.sort]
    after = None
    if q.cursor is not None:
        value, last_id = decode_cursor(q.cursor)
        if descending:
            after = sa.or_(key < value, sa.and_(key == value, col(Model.id) < last_id))
        else:
            after = sa.or_(key > value, sa.and_(key == value, col(Model.id) > last_id))
    order = [key.desc(), col(Model.id).desc()] if descending else [key.asc(), col(Model.id).asc()]
    offset = (q.page - 1) * q.limit if q.page is not None else 0
    wanted = q.limit + 1
    rows = None
    for size in SORT_WINDOWS:
        # The first `size` published models in sort order (read from the sort's index), then the filters.
        window = sa.select(col(Model.id)).where(Model.status == "Published")
        if after is not None:
            window = window.where(after)
        window = window.order_by(*order).limit(size + offset)
        stmt = _base_query(q, dialect, windowed=True).where(col(Model.id).in_(window))
        stmt = stmt.add_columns(key).order_by(*order).limit(wanted).offset(offset)
        found = conn.execute(stmt).all()
        if len(found) == wanted:
            rows = found
            break
    if rows is None:
        stmt = _base_query(q, dialect)
        if after is not None:
            stmt = stmt.where(after)
        rows = conn.execute(stmt.add_columns(key).order_by(*order).limit(wanted).offset(offset)).all()
    total = None
    if q.page is not None:
        total = conn.execute(sa.select(sa.func.count()).select_from(_base_query(q, dialect).subquery())).scalar_one()
    return _page(q, [tuple(row) for row in rows], total)


def _page(q: ModelQuery, rows: list[tuple[int, Any]], total: int | None) -> ModelPage:
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    next_cursor = encode_cursor(rows[-1][1], rows[-1][0]) if more and rows else None
    return ModelPage(ids=[row[0] for row in rows], next_cursor=next_cursor, total=total)


# -- SQLite: plain SQL, and a plan chosen per request --------------------------------------------
# The filters of _base_query in SQL text, and a choice between two plans:
# - walk: read published models in sort order from the sort's index, checking each against every
#   filter, and stop after the page (cheap when the filters together match many models);
# - drive: read the models of the smallest filter (a query's FTS matches, a tag's models, a type's
#   models...), check the other filters, sort them (cheap when that filter matches few).
# The sizes of the filters are counted by SQLite (capped, and remembered per reader connection until the
# database changes); the walk is tried when it should be cheaper, and given up for the other plan after
# WALK_BUDGET_STEPS virtual machine steps, when the filters turn out to be correlated.

SQLITE_SORT_KEYS: dict[ModelSort, tuple[str, str | None, bool]] = {
    # sort -> (expression, index that walks it among published models, descending)
    ModelSort.HIGHEST_RATED: ("CASE WHEN (rating_count > 0) THEN CAST(rating_sum AS FLOAT) / (rating_count + 0.0) "
                              "ELSE 0.0 END", "ix_models_status_rating", True),
    ModelSort.NEWEST: ("published_at", "ix_models_status_published_at", True),
    ModelSort.OLDEST: ("published_at", "ix_models_status_published_at", False),
    ModelSort.MOST_DOWNLOADED: ("download_count", "ix_models_status_download_count", True),
    ModelSort.MOST_LIKED: ("like_count", "ix_models_status_like_count", True),
    ModelSort.MOST_COLLECTED: ("like_count", "ix_models_status_like_count", True),
    ModelSort.MOST_DISCUSSED: ("comment_count", None, True),
    ModelSort.MOST_IMAGES: ("image_count", None, True),
}
# Counting a filter's models stops here: past it, the filter is "broad" and its exact size matters little.
COUNT_CAP = 50_000
# The progress handler runs every this many VM steps; the walk gets WALK_BUDGET_STEPS in all (about 5 ms).
PROGRESS_EVERY = 1000
WALK_BUDGET_STEPS = 400_000
# VM steps of the walk allowed per unit of the other plan's estimated cost.
STEPS_PER_DRIVEN_ROW = 100
# Relative costs per row: a step of the walk (index entry, table row, checks), a driven row (a rowid
# lookup, checks, the sorter), and a FTS match put aside for the walk's checks.
WALK_ROW_COST = 1.0
DRIVE_ROW_COST = 1.5
FTS_MATCH_COST = 0.2
_counts = threading.local()


def _sqlite_time(value: datetime) -> str:
    """A timestamp as SQLAlchemy stores it on SQLite (UTC, no zone)."""
    return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def _sqlite_count(db: Any, sql: str, params: list[Any]) -> int:
    """The number of rows of `sql` (capped at COUNT_CAP), remembered on this thread until the database changes."""
    version = db.execute("PRAGMA data_version").fetchone()[0]
    memo = getattr(_counts, "memo", None)
    if memo is None or _counts.db is not db or _counts.version != version:
        memo = _counts.memo = {}
        _counts.db, _counts.version = db, version
    key = (sql, tuple(params))
    found = memo.get(key)
    if found is None:
        if len(memo) > 4096:
            memo.clear()
        found = memo[key] = db.execute(f"SELECT count(*) FROM ({sql} LIMIT {COUNT_CAP})", params).fetchone()[0]
    return found


@dataclass
class _Filter:
    """One condition on `models` rows, and, when it can drive a listing, the ids it matches."""

    name: str
    check: str
    params: list[Any]
    ids_sql: str | None = None  # SELECT of matching model ids (a superset: every check still applies)
    ids_params: list[Any] = field(default_factory=list)
    source: str | None = None  # FROM clause reading models through those ids


def _sqlite_filters(db: Any, q: ModelQuery) -> list[_Filter] | None:
    """The filters of `q` as SQL on `models`; None when one of them can match nothing."""
    filters = [_Filter("status", "models.status = 'Published'", [])]
    if q.query:
        words = query_words(q.query)
        if words:
            match = "SELECT rowid FROM model_search_fts WHERE model_search_fts MATCH ?"
            expr = fts5_expression(words)
            filters.append(_Filter("query", f"models.id IN ({match})", [expr], match, [expr],
                                   "model_search_fts CROSS JOIN models ON models.id = model_search_fts.rowid "
                                   "AND model_search_fts MATCH ?"))
    if q.tag:
        row = db.execute("SELECT id FROM tags WHERE name = ?", (" ".join(q.tag.strip().lower().split()),)).fetchone()
        if row is None:
            return None
        filters.append(_Filter("tag", "EXISTS (SELECT 1 FROM model_tags WHERE model_tags.model_id = models.id "
                                      "AND model_tags.tag_id = ?)", [row[0]],
                               "SELECT model_id FROM model_tags WHERE tag_id = ?", [row[0]],
                               "model_tags CROSS JOIN models ON models.id = model_tags.model_id AND model_tags.tag_id = ?"))
    if q.username:
        owner = "SELECT id FROM users WHERE username_key = ?"
        filters.append(_Filter("username", f"models.owner_id IN ({owner})", [q.username.lower()],
                               f"SELECT id FROM models WHERE owner_id IN ({owner})", [q.username.lower()],
                               f"models INDEXED BY ix_models_owner_id WHERE models.owner_id IN ({owner})"))
    if q.types:
        marks = ",".join("?" * len(q.types))
        filters.append(_Filter("types", f"models.type IN ({marks})", list(q.types),
                               f"SELECT id FROM models WHERE type IN ({marks})", list(q.types),
                               f"models INDEXED BY ix_models_type WHERE models.type IN ({marks})"))
    if q.base_models:
        marks = ",".join("?" * len(q.base_models))
        filters.append(_Filter("base_models", "models.id IN (SELECT model_id FROM model_versions WHERE base_model "
                                              f"IN ({marks}) AND status = 'Published')", list(q.base_models)))
    if q.ids:
        marks = ",".join("?" * len(q.ids))
        filters.append(_Filter("ids", f"models.id IN ({marks})", list(q.ids),
                               f"SELECT id FROM models WHERE id IN ({marks})", list(q.ids),
                               f"models WHERE models.id IN ({marks})"))
    if q.hash:
        by_hash = ("SELECT model_versions.model_id FROM model_versions JOIN model_files ON model_files.version_id = "
                   "model_versions.id JOIN file_hashes ON file_hashes.file_id = model_files.id WHERE file_hashes.value = ?")
        filters.append(_Filter("hash", f"models.id IN ({by_hash})", [q.hash.lower()], by_hash, [q.hash.lower()],
                               f"models WHERE models.id IN ({by_hash})"))
    levels = q.browsing_level & (SAFE_LEVELS if q.nsfw is False else VISIBLE_LEVELS)
    filters.append(_Filter("levels", "(models.nsfw_level & ?) != 0", [levels]))
    for flag in ("allow_no_credit", "allow_derivatives", "allow_different_license"):
        value = getattr(q, flag)
        if value is not None:
            filters.append(_Filter(flag, f"models.{flag} = ?", [int(value)]))
    if q.allow_commercial_use:
        allowed = ["CAST(models.allow_commercial_use AS TEXT) LIKE ?" for _ in q.allow_commercial_use]
        params: list[Any] = [f'%"{use}"%' for use in q.allow_commercial_use]
        if "None" in q.allow_commercial_use:
            allowed.append("CAST(models.allow_commercial_use AS TEXT) NOT LIKE ?")
            params.append('%"%')
        filters.append(_Filter("commercial", "(" + " OR ".join(allowed) + ")", params))
    if q.period != Period.ALL_TIME:
        filters.append(_Filter("period", "models.published_at >= ?",
                               [_sqlite_time(utcnow() - timedelta(days=PERIOD_DAYS[q.period]))]))
    return filters


def _find_models_sqlite(db: Any, q: ModelQuery) -> ModelPage:
    key, index, descending = SQLITE_SORT_KEYS[q.sort]
    direction = "DESC" if descending else "ASC"
    offset = (q.page - 1) * q.limit if q.page is not None else 0
    filters = _sqlite_filters(db, q)
    if filters is None:
        return ModelPage(ids=[], next_cursor=None, total=0 if q.page is not None else None)
    after: list[str] = []
    after_params: list[Any] = []
    if q.cursor is not None:
        value, last_id = decode_cursor(q.cursor)
        if isinstance(value, datetime):
            value = _sqlite_time(value)
        after = [f"({key}, models.id) {'<' if descending else '>'} (?, ?)"]
        after_params = [value, last_id]
    order = f"ORDER BY {key} {direction}, models.id {direction} LIMIT {q.limit + 1} OFFSET {offset}"

    def run(source: str, skip: _Filter | None, budget: int | None = None) -> list[tuple[Any, ...]] | None:
        checks = [f.check for f in filters if f is not skip] + after
        params = [p for f in filters if f is not skip for p in f.params] + after_params
        if skip is not None:
            params = skip.ids_params + params
        where = " AND " if " WHERE " in f" {source} " else " WHERE "
        sql = f"SELECT models.id, {key} FROM {source}{where}{' AND '.join(checks)} {order}"
        if budget is None:
            return db.execute(sql, params).fetchall()
        steps = [0]

        def progress() -> int:
            steps[0] += PROGRESS_EVERY
            return steps[0] > budget

        db.set_progress_handler(progress, PROGRESS_EVERY)
        try:
            return db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "interrupted" not in str(exc):
                raise
            return None
        finally:
            db.set_progress_handler(None, 0)

    drivers = [f for f in filters if f.source is not None]
    sizes = {f.name: _sqlite_count(db, f.ids_sql, f.ids_params) for f in drivers}  # type: ignore[arg-type]
    rows = None
    if index is not None:
        published = max(1, _sqlite_count(db, "SELECT id FROM models WHERE status = 'Published'", []))
        selectivity = 1.0
        for f in drivers:
            selectivity *= max(sizes[f.name], 1) / published
        fts = sizes.get("query", 0)
        walk_cost = (q.limit + 1 + offset) / selectivity * WALK_ROW_COST + fts * FTS_MATCH_COST
        drive_cost = min(sizes.values(), default=published) * DRIVE_ROW_COST
        if not drivers or walk_cost <= drive_cost:
            # Give up on the walk when it costs several times the other plan's estimate.
            budget = None if not drivers else max(WALK_BUDGET_STEPS, int(drive_cost * STEPS_PER_DRIVEN_ROW))
            rows = run(f"models INDEXED BY {index}", None, budget)
    if rows is None:
        if drivers:
            driver = min(drivers, key=lambda f: sizes[f.name])
            rows = run(driver.source, driver)  # type: ignore[arg-type]
        else:
            rows = run("models", None)
    total = None
    if q.page is not None:
        checks = " AND ".join(f.check for f in filters)
        total = db.execute(f"SELECT count(*) FROM models WHERE {checks}",
                           [p for f in filters for p in f.params]).fetchone()[0]
    if q.sort in (ModelSort.NEWEST, ModelSort.OLDEST):
        rows = [(row[0], datetime.fromisoformat(row[1]).replace(tzinfo=UTC) if row[1] is not None else None)
                for row in rows]
    return _page(q, rows, total)


@dataclass
class ImageQuery:
    """The parameters of `GET /api/v1/images`, already parsed."""

    limit: int = 100
    page: int | None = None
    cursor: str | None = None
    model_id: int | None = None
    version_id: int | None = None
    username: str | None = None
    sort: str = "Newest"
    period: Period = Period.ALL_TIME
    levels: int = VISIBLE_LEVELS

    def check(self) -> None:
        if not 1 <= self.limit <= 200:
            raise InvalidInput("limit: must be from 1 to 200")
        if self.page is not None:
            if self.page < 1:
                raise InvalidInput("page: must be 1 or more")
            if self.page * self.limit > PAGE_ITEM_CAP:
                raise PageCapExceeded(f"page * limit may not exceed {PAGE_ITEM_CAP}; use the cursor from "
                                      "metadata.nextCursor to go further")


async def find_images(db: Database, q: ImageQuery) -> ModelPage:
    """Ids of images visible in public listings (their version published, or no version), in sort order."""
    from node.core.tables import Image

    q.check()
    # EXISTS, probed per image, rather than IN (every published version): SQLite then walks images in
    # the sort's order and stops at a page, instead of reading every image of every version first.
    published_version = sa.exists().where(
        col(ModelVersion.id) == col(Image.version_id), col(Model.id) == col(ModelVersion.model_id),
        ModelVersion.status == "Published", Model.status == "Published", sa.or_(
            col(Model.mode).is_(None), Model.mode != "TakenDown"))
    stmt = sa.select(col(Image.id)).where(published_version, col(Image.nsfw_level).op("&")(q.levels) != 0)
    if q.version_id is not None:
        stmt = stmt.where(Image.version_id == q.version_id)
    if q.model_id is not None:
        stmt = stmt.where(col(Image.version_id).in_(select(ModelVersion.id).where(ModelVersion.model_id == q.model_id)))
    if q.username:
        stmt = stmt.where(col(Image.owner_id).in_(select(User.id).where(User.username_key == q.username.lower())))
    if q.period != Period.ALL_TIME:
        stmt = stmt.where(col(Image.created_at) >= utcnow() - timedelta(days=PERIOD_DAYS[q.period]))
    reactions = (col(Image.like_count) + col(Image.heart_count) + col(Image.laugh_count) + col(Image.cry_count))
    key, descending = {"Most Reactions": (reactions, True), "Most Comments": (col(Image.comment_count), True),
                       "Oldest": (col(Image.id), False)}.get(q.sort, (col(Image.id), True))
    if q.cursor is not None:
        value, last_id = decode_cursor(q.cursor)
        cmp = (key < value) if descending else (key > value)
        tie = (col(Image.id) < last_id) if descending else (col(Image.id) > last_id)
        stmt = stmt.where(sa.or_(cmp, sa.and_(key == value, tie)))
    order = [key.desc(), col(Image.id).desc()] if descending else [key.asc(), col(Image.id).asc()]
    stmt = stmt.add_columns(key).order_by(*order).limit(q.limit + 1)
    if q.page is not None:
        stmt = stmt.offset((q.page - 1) * q.limit)
    async with db.read_session() as session:
        rows = (await session.exec(stmt)).all()
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    return ModelPage(ids=[r[0] for r in rows], next_cursor=encode_cursor(rows[-1][1], rows[-1][0]) if more and rows else None)


async def _names_with_counts(db: Database, stmt: Any, name: Any, match: Any, *, query: str | None, page: int,
                             limit: int) -> tuple[list[tuple[str, int]], bool]:
    """One page of (name, count) rows, largest count first, and whether another page follows."""
    count = sa.func.count(col(Model.id))
    if query:
        stmt = stmt.where(match.contains(query.lower(), autoescape=True))
    stmt = stmt.group_by(name).order_by(count.desc(), name).offset((page - 1) * limit).limit(limit + 1)
    async with db.session() as session:
        rows = [(n, c) for n, c in (await session.exec(stmt)).all()]
    return rows[:limit], len(rows) > limit


async def creators_with_models(db: Database, *, query: str | None, page: int,
                               limit: int) -> tuple[list[tuple[str, int]], bool]:
    """(username, published model count), most prolific first, and whether more follow; `query`
    matches part of the name."""
    stmt = (select(User.username, sa.func.count(col(Model.id)))
            .join(Model, col(Model.owner_id) == col(User.id)).where(Model.status == "Published"))
    return await _names_with_counts(db, stmt, col(User.username), col(User.username_key), query=query,
                                    page=page, limit=limit)


async def tags_with_models(db: Database, *, query: str | None, page: int,
                           limit: int) -> tuple[list[tuple[str, int]], bool]:
    """(tag, published model count), most used first, and whether more follow; `query` matches part
    of the tag."""
    stmt = (select(Tag.name, sa.func.count(col(Model.id)))
            .join(ModelTag, col(ModelTag.tag_id) == col(Tag.id))
            .join(Model, col(Model.id) == col(ModelTag.model_id)).where(Model.status == "Published"))
    return await _names_with_counts(db, stmt, col(Tag.name), col(Tag.name), query=query, page=page, limit=limit)
