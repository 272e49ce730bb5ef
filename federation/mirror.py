"""The mirrored index: followed nodes' models as their signed logs last described them, and their files
(by hash and by AIR), so a node can list, search and resolve what its peers publish."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from node.core.db import Database
from node.core.errors import InvalidInput
from node.core.tables import RemoteFile, RemoteModel

MAX_QUERY = 200
MAX_HASHES = 100


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def remote_model_json(row: RemoteModel) -> dict[str, Any]:
    return {"origin": {"id": row.origin, "name": row.origin_name, "url": row.origin_url}, "id": row.remote_id, "name": row.name,
            "type": row.type, "description": row.description, "creator": row.creator, "tags": row.tags,
            "nsfwLevel": row.nsfw_level, "mode": row.mode, "versions": row.versions, "logSeq": row.seq}


@dataclass
class RemoteQuery:
    """Filters of a search of the mirrored index (each optional; all given ones must match)."""

    query: str = ""
    origin: str | None = None
    types: Sequence[str] = ()
    tag: str | None = None
    creator: str | None = None
    base_models: Sequence[str] = ()
    levels: int | None = None  # a bit mask of content levels (1 PG, 2 PG-13, 4 R, 8 X, 16 XXX)


@dataclass
class RemotePage:
    rows: list[RemoteModel]
    next_offset: int | None
    total: int | None = None


class MirroredIndex:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _filtered(self, q: RemoteQuery) -> Any:
        if len(q.query) > MAX_QUERY:
            raise InvalidInput(f"query: at most {MAX_QUERY} characters")
        stmt = select(RemoteModel)
        for word in (w for w in q.query.lower().split() if w):
            pattern = _like(word)
            stmt = stmt.where(sa.or_(sa.func.lower(RemoteModel.name).like(pattern, escape="\\"),
                                     sa.func.lower(sa.func.coalesce(RemoteModel.creator, "")).like(pattern, escape="\\"),
                                     sa.func.lower(sa.cast(RemoteModel.tags, sa.Text)).like(pattern, escape="\\")))
        if q.origin:
            stmt = stmt.where(sa.or_(RemoteModel.origin == q.origin, RemoteModel.origin_name == q.origin))
        if q.types:
            stmt = stmt.where(sa.func.lower(RemoteModel.type).in_([t.lower() for t in q.types]))
        if q.tag:
            # Tags are stored as a JSON list of strings: a quoted match is an exact tag match.
            stmt = stmt.where(sa.func.lower(sa.cast(RemoteModel.tags, sa.Text))
                              .like(_like(f'"{q.tag.lower()}"'), escape="\\"))
        if q.creator:
            stmt = stmt.where(sa.func.lower(sa.func.coalesce(RemoteModel.creator, "")) == q.creator.lower())
        if q.base_models:
            stmt = stmt.where(sa.exists().where(RemoteFile.origin == RemoteModel.origin,
                                                RemoteFile.model_id == RemoteModel.remote_id,
                                                col(RemoteFile.base_model).in_(list(q.base_models))))
        if q.levels is not None:
            stmt = stmt.where(col(RemoteModel.nsfw_level).op("&")(q.levels) != 0)
        return stmt

    async def find(self, q: RemoteQuery, *, limit: int, offset: int = 0, count: bool = False) -> RemotePage:
        """Remote models matching `q`, most recently changed first: `limit` of them from `offset`."""
        stmt = self._filtered(q).order_by(col(RemoteModel.updated_at).desc(), col(RemoteModel.origin),
                                          col(RemoteModel.remote_id))
        async with self.db.read_session() as session:
            rows = list((await session.exec(stmt.offset(offset).limit(limit + 1))).all())
            total = None
            if count:
                total = (await session.exec(select(sa.func.count()).select_from(
                    self._filtered(q).subquery()))).one()
        more = len(rows) > limit
        return RemotePage(rows[:limit], offset + limit if more else None, total)

    async def search(self, *, query: str = "", origin: str | None = None, type: str | None = None,
                     limit: int = 20, after: int | None = None) -> dict[str, Any]:
        """A page of remote models, most recently changed first; `after` is the offset a previous
        page's `nextCursor` gave."""
        page = await self.find(RemoteQuery(query=query, origin=origin, types=[type] if type else []),
                               limit=limit, offset=after or 0)
        return {"items": [remote_model_json(r) for r in page.rows], "metadata": {"nextCursor": page.next_offset}}

    async def files_by_hash(self, hashes: Sequence[str]) -> list[RemoteFile]:
        """Remote files whose SHA-256 (full, lowercase or upper) or AutoV2 (its first 10 hex) is listed."""
        if len(hashes) > MAX_HASHES:
            raise InvalidInput(f"at most {MAX_HASHES} hashes per lookup")
        full = [h.lower() for h in hashes if len(h) == 64]
        short = [h.lower() for h in hashes if len(h) == 10]
        if not full and not short:
            return []
        conditions = []
        if full:
            conditions.append(col(RemoteFile.sha256).in_(full))
        for prefix in short:
            conditions.append(col(RemoteFile.sha256).like(prefix + "%"))
        async with self.db.read_session() as session:
            return list((await session.exec(select(RemoteFile).where(sa.or_(*conditions))
                                            .order_by(col(RemoteFile.origin), col(RemoteFile.file_id)))).all())

    async def resolve(self, source: str, model_id: int, version_id: int | None = None
                      ) -> tuple[RemoteModel, dict[str, Any]] | None:
        """The remote model and version (as its origin's log describes it) an AIR's source, id and
        version name: `source` is the origin's name (as AIRs spell it) or its node id; without a
        version, the model's newest."""
        async with self.db.read_session() as session:
            rows = (await session.exec(select(RemoteModel).where(
                sa.or_(RemoteModel.origin_name == source, RemoteModel.origin == source),
                RemoteModel.remote_id == model_id).order_by(col(RemoteModel.origin)))).all()
        for model in rows:
            versions = [v for v in model.versions if isinstance(v, dict)]
            if version_id is None:
                version = max(versions, key=lambda v: v.get("id") or 0, default=None)
            else:
                version = next((v for v in versions if v.get("id") == version_id), None)
            if version is not None:
                return model, version
        return None

    async def models(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], RemoteModel]:
        """Remote models by (origin, id)."""
        if not keys:
            return {}
        async with self.db.read_session() as session:
            rows = (await session.exec(select(RemoteModel).where(
                sa.tuple_(RemoteModel.origin, RemoteModel.remote_id).in_(list(keys))))).all()
        return {(r.origin, r.remote_id): r for r in rows}


__all__ = ["MirroredIndex", "RemotePage", "RemoteQuery", "remote_model_json"]
