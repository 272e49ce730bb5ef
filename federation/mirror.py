"""The mirrored index: followed nodes' models as their signed logs last described them."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from node.core.db import Database
from node.core.errors import InvalidInput
from node.core.tables import RemoteModel

MAX_QUERY = 200


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def remote_model_json(row: RemoteModel) -> dict[str, Any]:
    return {"origin": {"id": row.origin, "name": row.origin_name, "url": row.origin_url}, "id": row.remote_id, "name": row.name,
            "type": row.type, "description": row.description, "creator": row.creator, "tags": row.tags,
            "nsfwLevel": row.nsfw_level, "mode": row.mode, "versions": row.versions, "logSeq": row.seq}


class MirroredIndex:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def search(self, *, query: str = "", origin: str | None = None, type: str | None = None,
                     limit: int = 20, after: int | None = None) -> dict[str, Any]:
        """A page of remote models, most recently changed first; `after` is the offset a previous
        page's `nextCursor` gave."""
        if len(query) > MAX_QUERY:
            raise InvalidInput(f"query: at most {MAX_QUERY} characters")
        stmt = select(RemoteModel)
        words = [w for w in query.lower().split() if w]
        for word in words:
            pattern = _like(word)
            stmt = stmt.where(sa.or_(sa.func.lower(RemoteModel.name).like(pattern, escape="\\"),
                                     sa.func.lower(sa.func.coalesce(RemoteModel.creator, "")).like(pattern, escape="\\"),
                                     sa.func.lower(sa.cast(RemoteModel.tags, sa.Text)).like(pattern, escape="\\")))
        if origin:
            stmt = stmt.where(sa.or_(RemoteModel.origin == origin, RemoteModel.origin_name == origin))
        if type:
            stmt = stmt.where(sa.func.lower(RemoteModel.type) == type.lower())
        offset = after or 0
        stmt = stmt.order_by(col(RemoteModel.updated_at).desc(), col(RemoteModel.origin), col(RemoteModel.remote_id))
        async with self.db.read_session() as session:
            rows = (await session.exec(stmt.offset(offset).limit(limit + 1))).all()
        more = len(rows) > limit
        return {"items": [remote_model_json(r) for r in rows[:limit]],
                "metadata": {"nextCursor": offset + limit if more else None}}


__all__ = ["MirroredIndex", "remote_model_json"]
