"""Content labels from followed nodes: which ones count, and the level they give mirrored models.

A `label` entry (federation/log.py `journal_label`) says "node L's moderators put level N on model M of
origin O". A follower stores every label it receives (`content_labels`), and applies the ones by
labelers it trusts: itself and the node ids in `[federation] trusted_labelers`. A model's origin needs
no label to be believed about its own model: the level in the model's own entries is the origin's.

When labels apply to a mirrored model, its level is the highest of them (the strictest trusted view
wins, so every follower trusting the same labelers shows the same level); otherwise the origin's level.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from node.core.tables import ContentLabel, RemoteModel, utcnow
from node.core.vocabulary import NsfwLevel

LEVELS = frozenset(int(level) for level in NsfwLevel if level != NsfwLevel.BLOCKED)
# A catch-up batch may describe many thousands of models; bound the parameters of one statement.
KEYS_PER_QUERY = 500


def label_rows(labeler: str, fields: Iterable[dict[str, Any]]) -> dict[tuple[str, int], tuple[int, int]]:
    """(origin, model id) -> (level, seq) of the well-formed `label` entries of one log, newest kept."""
    found: dict[tuple[str, int], tuple[int, int]] = {}
    for f in fields:
        body = f.get("body")
        if f.get("kind") != "label" or not isinstance(body, dict):
            continue
        target, level = body.get("target"), body.get("level")
        if not isinstance(target, dict) or level not in LEVELS or isinstance(level, bool):
            continue
        origin, model_id = target.get("origin"), target.get("model")
        if isinstance(origin, str) and 0 < len(origin) <= 128 and isinstance(model_id, int) \
                and not isinstance(model_id, bool) and origin != labeler:
            found[(origin, model_id)] = (level, f["seq"])
    return found


async def store_labels(session: AsyncSession, labeler: str, fields: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """Keep the labels a batch of `labeler`'s entries carries; returns the models they are about."""
    rows = label_rows(labeler, fields)
    for (origin, model_id), (level, seq) in rows.items():
        label = await session.get(ContentLabel, (labeler, origin, model_id))
        if label is None:
            label = ContentLabel(labeler=labeler, origin=origin, model_id=model_id, level=level, seq=seq)
        label.level, label.seq, label.created_at = level, seq, utcnow()
        session.add(label)
    if rows:
        await session.flush()
    return list(rows)


async def apply_labels(session: AsyncSession, trusted: Iterable[str], models: Iterable[tuple[str, int]]) -> None:
    """Give each listed mirrored model the highest level its trusted labels set (untouched without one)."""
    labelers = list(trusted)
    if (await session.exec(select(ContentLabel.model_id).where(
            col(ContentLabel.labeler).in_(labelers)).limit(1))).first() is None:
        return  # the usual case, a node with no labels to apply: one probe per batch
    keys = list(dict.fromkeys(models))
    for start in range(0, len(keys), KEYS_PER_QUERY):
        rows = (await session.exec(
            select(ContentLabel.origin, ContentLabel.model_id, sa.func.max(ContentLabel.level))
            .where(col(ContentLabel.labeler).in_(labelers),
                   sa.tuple_(ContentLabel.origin, ContentLabel.model_id).in_(keys[start:start + KEYS_PER_QUERY]))
            .group_by(ContentLabel.origin, ContentLabel.model_id))).all()
        for origin, model_id, level in rows:
            await session.exec(sa.update(RemoteModel).where(  # type: ignore[call-overload]
                col(RemoteModel.origin) == origin, col(RemoteModel.remote_id) == model_id).values(nsfw_level=level))


__all__ = ["apply_labels", "label_rows", "store_labels"]
