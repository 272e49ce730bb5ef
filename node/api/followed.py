"""Followed nodes' models in the Civitai-compatible API: `followed=true` on `GET /api/v1/models` (or
`[federation] api_includes_followed`) continues a listing with the mirrored index once this node's own
matches run out, and by-hash lookups and AIRs fall back to it.

Remote items are Civitai model objects whose links (downloads, manifests) point at their origin, with
Atrium's `origin` field saying where they come from. Their `stats` are left out: the origin's counts are
not part of its signed log, and zeros would be a lie.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from federation.mirror import RemoteQuery
from node.api.keys import NODE
from node.core.search import SAFE_LEVELS, VISIBLE_LEVELS, ModelQuery
from node.core.tables import RemoteModel
from node.core.vocabulary import NSFW_LEVELS, Period

FOLLOWED_CURSOR = "followed:"


def wants_followed(request: web.Request, flag: bool | None) -> bool:
    """Whether this listing includes followed nodes' models: the `followed` flag, else the node setting."""
    if flag is None:
        flag = request.app[NODE].config.federation.api_includes_followed
    return flag and request.app[NODE].federation is not None


def remote_applies(q: ModelQuery) -> bool:
    """False when the query filters on what a remote model does not carry (licence flags, period, ids,
    hashes, favourites), so no remote model can be shown to match."""
    return not (q.ids or q.hash or q.allow_no_credit is not None or q.allow_derivatives is not None
                or q.allow_different_license is not None or q.allow_commercial_use
                or q.period != Period.ALL_TIME)


def remote_query(q: ModelQuery) -> RemoteQuery:
    return RemoteQuery(query=q.query or "", types=q.types, tag=q.tag, creator=q.username,
                       base_models=q.base_models,
                       levels=q.browsing_level & (SAFE_LEVELS if q.nsfw is False else VISIBLE_LEVELS))


def origin_json(row: RemoteModel) -> dict[str, Any]:
    return {"id": row.origin, "name": row.origin_name, "url": row.origin_url}


def remote_version_json(row: RemoteModel, version: dict[str, Any], *, index: int | None = None,
                        primary_file_only: bool = False, with_model: bool = False) -> dict[str, Any]:
    base = row.origin_url
    files = [f for f in version.get("files") or [] if isinstance(f, dict)]
    primary = next((f for f in files if f.get("primary")), files[0] if files else None)
    if primary_file_only:
        files = [f for f in files if f is primary]
    vid = version.get("id")

    def file_json(f: dict[str, Any]) -> dict[str, Any]:
        sha = str(f.get("sha256") or "").upper()
        url = None
        if base:
            url = f"{base}/api/download/models/{vid}" + ("" if f is primary else f"?fileId={f.get('id')}")
        return {"id": f.get("id"), "sizeKB": (f.get("size") or 0) / 1024, "name": f.get("name"),
                "type": f.get("type"), "metadata": {"format": f.get("format")},
                "hashes": {"SHA256": sha, "AutoV2": sha[:10]}, "primary": f is primary, "downloadUrl": url}

    data: dict[str, Any] = {
        "id": vid, "modelId": row.remote_id, "name": version.get("name"), "status": "Published",
        "nsfwLevel": row.nsfw_level, "publishedAt": version.get("publishedAt"),
        "trainedWords": version.get("trainedWords") or [], "baseModel": version.get("baseModel"),
        "files": [file_json(f) for f in files], "images": [],
        "downloadUrl": f"{base}/api/download/models/{vid}" if base and primary else None,
        "air": version.get("air"),
        "manifestUrl": f"{base}/api/node/v1/versions/{vid}/manifest" if base and files else None,
        "origin": origin_json(row),
    }
    if index is not None:
        data["index"] = index
    if with_model:
        data["model"] = {"name": row.name, "type": row.type, "nsfw": bool(row.nsfw_level & NSFW_LEVELS),
                         "poi": False, "mode": row.mode}
    return data


def remote_model_civitai_json(row: RemoteModel, *, primary_file_only: bool = False) -> dict[str, Any]:
    """A followed node's model as a Civitai model object (links at its origin; no stats: see above)."""
    return {
        "id": row.remote_id, "name": row.name, "description": row.description, "type": row.type,
        "poi": False, "minor": False, "nsfw": bool(row.nsfw_level & NSFW_LEVELS), "nsfwLevel": row.nsfw_level,
        "mode": row.mode, "creator": {"username": row.creator, "image": None}, "tags": row.tags,
        "modelVersions": [remote_version_json(row, v, index=i, primary_file_only=primary_file_only)
                          for i, v in enumerate(row.versions)],
        "origin": origin_json(row), "remote": True,
    }


async def continue_with_followed(request: web.Request, q: ModelQuery, items: list[dict[str, Any]],
                                 next_cursor: str | None, total: int | None,
                                 primary_file_only: bool) -> tuple[list[dict[str, Any]], str | None, int | None]:
    """Fill a page of local models with followed ones once the local matches have run out.

    Cursor pages: the local cursors as usual, then `followed:<offset>`. Numbered pages: followed models
    come after the `total` local ones, and the total counts both."""
    mirror = request.app[NODE].federation.mirror
    rq = remote_query(q)
    if q.page is not None:
        local_total = total or 0
        start = (q.page - 1) * q.limit
        offset = max(0, start - local_total)
        want = q.limit - len(items)
        page = await mirror.find(rq, limit=max(want, 1), offset=offset, count=True)
        rows = page.rows[:want] if want > 0 else []
        grand = local_total + (page.total or 0)
        # page_metadata reads a next cursor as "there is a next page".
        more = start + q.limit < grand
        return ([*items, *(remote_model_civitai_json(r, primary_file_only=primary_file_only) for r in rows)],
                "more" if more else None, grand)
    if next_cursor is not None:
        return items, next_cursor, total
    want = q.limit - len(items)
    page = await mirror.find(rq, limit=max(want, 1), offset=0)
    if want == 0:
        return items, (FOLLOWED_CURSOR + "0") if page.rows else None, total
    rows = page.rows
    cursor = FOLLOWED_CURSOR + str(page.next_offset) if page.next_offset is not None else None
    return [*items, *(remote_model_civitai_json(r, primary_file_only=primary_file_only) for r in rows)], cursor, total


async def followed_page(request: web.Request, q: ModelQuery, offset: int,
                        primary_file_only: bool) -> tuple[list[dict[str, Any]], str | None]:
    """A page that lies wholly among followed models (a `followed:<offset>` cursor)."""
    page = await request.app[NODE].federation.mirror.find(remote_query(q), limit=q.limit, offset=offset)
    cursor = FOLLOWED_CURSOR + str(page.next_offset) if page.next_offset is not None else None
    return [remote_model_civitai_json(r, primary_file_only=primary_file_only) for r in page.rows], cursor


async def followed_versions_by_hash(request: web.Request, hashes: list[str]) -> list[dict[str, Any]]:
    """Versions on followed nodes with a file of one of these hashes (SHA-256 or AutoV2), one each."""
    mirror = request.app[NODE].federation.mirror
    files = await mirror.files_by_hash(hashes)
    models = await mirror.models(sorted({(f.origin, f.model_id) for f in files}))
    out, seen = [], set()
    for f in files:
        row = models.get((f.origin, f.model_id))
        if row is None or (f.origin, f.version_id) in seen:
            continue
        version = next((v for v in row.versions if isinstance(v, dict) and v.get("id") == f.version_id), None)
        if version is None:
            continue
        seen.add((f.origin, f.version_id))
        out.append(remote_version_json(row, version, with_model=True))
    return out


__all__ = ["FOLLOWED_CURSOR", "followed_versions_by_hash", "continue_with_followed", "followed_page", "remote_applies",
           "remote_model_civitai_json", "remote_version_json", "wants_followed"]
