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
import unicodedata
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.operators import custom_op
from sqlmodel import col, select

from node.core.db import Database
from node.core.errors import InvalidInput
from node.core.records import read
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
# A listing first looks for its page among this many published models, taken in the requested order
# from the sort's index, then among the next size, and only then sorts every match: common filters
# (a type, a popular tag or word) fill a page from the first window, and sorting all of their tens of
# thousands of matches cost 50-250 ms a request on 100,000 models (bench/catalog_queries.py).
SORT_WINDOWS = (400, 4000)
# On SQLite, a filter matching at most this many models drives the listing (node.core.search
# _sqlite_candidates); below CANDIDATE_SMALL the other filters are checked per candidate.
CANDIDATE_CAP = 3000
CANDIDATE_SMALL = 300


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
    from datetime import datetime

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


def _base_query(q: ModelQuery, dialect: str, *, windowed: bool = False, skip: frozenset[str] = frozenset()) -> Any:
    # sa.select, not sqlmodel's: rows keep every column (sqlmodel returns scalars for one column).
    # `skip` names filters (query, tag, types) that the caller has already applied another way.
    stmt = sa.select(col(Model.id))
    # Unary + keeps SQLite from walking an index led by status when the caller drives by id.
    stmt = stmt.where(_unindexed(col(Model.status)) == "Published" if "status" in skip else Model.status == "Published")
    if q.query and "query" not in skip:
        words = query_words(q.query)
        if words:
            if dialect == "sqlite":
                fts = sa.text("SELECT rowid FROM model_search_fts WHERE model_search_fts MATCH :expr") \
                    .bindparams(expr=fts5_expression(words)).columns(sa.column("rowid"))
                stmt = stmt.where(col(Model.id).in_(fts))
            else:
                match = sa.text("tsv @@ to_tsquery('simple', :expr)").bindparams(expr=tsquery_expression(words))
                stmt = stmt.where(col(Model.id).in_(select(ModelSearch.model_id).where(match)))
    if q.tag and "tag" not in skip:
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
    if q.types and "types" not in skip:
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
    candidates = _sqlite_candidates(conn, q) if dialect == "sqlite" else None
    if candidates is not None:
        ids, skip = candidates
        if not ids:
            rows = []
        else:
            small = len(ids) <= CANDIDATE_CAP
            stmt = _base_query(q, dialect, windowed=True, skip=skip | {"status"} if small else skip).where(col(Model.id).in_(
                sa.select(sa.column("value", sa.Integer)).select_from(sa.func.json_each(sa.bindparam("ids", json.dumps(sorted(ids)))))))
            if after is not None:
                stmt = stmt.where(after)
            # The same order, by expressions no index serves: candidates are read by id, then sorted.
            # (A large set of a dense combination is better found walking the sort's index.)
            by = [_unindexed(key), _unindexed(col(Model.id))] if small else [key, col(Model.id)]
            by = [b.desc() for b in by] if descending else [b.asc() for b in by]
            rows = conn.execute(stmt.add_columns(key).order_by(*by).limit(wanted).offset(offset)).all()
    for size in SORT_WINDOWS if rows is None else ():
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
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    next_cursor = encode_cursor(rows[-1][1], rows[-1][0]) if more and rows else None
    return ModelPage(ids=[row[0] for row in rows], next_cursor=next_cursor, total=total)


def _unindexed(expr: Any) -> Any:
    """`+expr`: the same value, but SQLite will not use an index for it."""
    return UnaryExpression(expr, operator=custom_op("+"), type_=expr.type)


def _sqlite_candidates(conn: Any, q: ModelQuery) -> tuple[set[int], frozenset[str]] | None:
    """On SQLite, a small superset of the models matching the query, tag and types filters, from the
    most selective of them: each filter's model ids are read (from the tag index, the type index or the
    FTS doclists) up to CANDIDATE_CAP; those that have no more are intersected. None when every filter
    matches more (the sort windows then find the page faster than the lists could be read)."""
    lists: list[tuple[str, Any, dict[str, Any]]] = []
    if q.tag:
        tag_name = " ".join(q.tag.strip().lower().split())
        lists.append(("tag", "SELECT model_id FROM model_tags WHERE tag_id = (SELECT id FROM tags WHERE name = :name) "
                             "LIMIT :cap", {"name": tag_name}))
    if q.types:
        types = {f"t{i}": t for i, t in enumerate(q.types)}
        lists.append(("types", "SELECT id FROM models WHERE type IN (%s) LIMIT :cap" %
                      ", ".join(":" + k for k in types), types))
    if q.query:
        words = query_words(q.query)
        if words:
            lists.append(("query", "SELECT rowid FROM model_search_fts WHERE model_search_fts MATCH :expr LIMIT :cap",
                          {"expr": fts5_expression(words)}))
    found: set[int] | None = None
    skip: set[str] = set()
    for name, sql, params in lists:
        ids = [r[0] for r in conn.execute(sa.text(sql), {**params, "cap": CANDIDATE_CAP + 1})]
        if len(ids) > CANDIDATE_CAP:
            continue
        found = set(ids) if found is None else found.intersection(ids)
        skip.add(name)
        if len(found) <= CANDIDATE_SMALL:
            break  # few enough to check the other filters one by one
    if found is None:
        if len(lists) < 2:
            return None  # one broad filter: the first sort window fills the page
        # Several broad filters, whose combination may be rare: the first (a tag's or the query's
        # models, usually fewer than a type's) drives, read whole; the others are checked per candidate.
        name, sql, params = lists[0]
        found = {r[0] for r in conn.execute(sa.text(sql), {**params, "cap": -1})}
        skip.add(name)
    return found, frozenset(skip)


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
