"""Civitai's REST API v1, field for field, so existing Civitai clients can use an Atrium node.

Atrium-only fields are added beside Civitai's (never instead of them), so clients that ignore
unknown fields keep working.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from node.api.auth import public
from node.api.bodies import int_param, read_json
from node.api.followed import (FOLLOWED_CURSOR, continue_with_followed, followed_page,
                               followed_versions_by_hash, remote_applies, wants_followed)
from node.api.keys import NODE
from node.core.catalog import version_air
from node.core.errors import InvalidInput, NotFound
from node.core.ingest import versions_by_hashes
from node.core.readcache import read_cache
from node.core.records import FileRecord, ModelRecord, VersionRecord, load_images, load_models, load_versions
from node.core.search import (SAFE_LEVELS, VISIBLE_LEVELS, ImageQuery, ModelQuery, creators_with_models,
                              find_images, find_models, tags_with_models)
from node.core.tables import Image, Model, ModelVersion
from node.api.links import base_url, tracker_urls
from node.core.torrents import magnet_link
from node.core.vocabulary import (BASE_MODELS, NSFW_LEVELS, CommercialUse, FileFormat, FileType, ImageSort,
                                  ModelMode, ModelSort, ModelStatus, ModelType, NsfwLevel, Period, ReactionKind,
                                  parse_enum)

routes = web.RouteTableDef()

MAX_HASHES_PER_LOOKUP = 100
MIB = 1024 * 1024


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def air_of(request: web.Request, version: ModelVersion, model: Model) -> str:
    return version_air(request.app[NODE].name, model, version)


def file_json(request: web.Request, record: FileRecord, version: ModelVersion) -> dict[str, Any]:
    f = record.file
    base = base_url(request)
    return {
        "id": f.id,
        "sizeKB": f.size / 1024,
        "name": f.name,
        "type": f.type,
        "pickleScanResult": f.pickle_scan_result,
        "pickleScanMessage": "No pickle: safetensors" if f.format == FileFormat.SAFETENSOR else None,
        "virusScanResult": f.virus_scan_result,
        "virusScanMessage": None,
        "scannedAt": iso(f.created_at),
        "metadata": {"format": f.format, "size": f.size_kind, "fp": f.fp},
        "hashes": record.hashes,
        "primary": f.primary,
        "downloadUrl": f"{base}/api/download/models/{version.id}?fileId={f.id}" if not f.primary
        else f"{base}/api/download/models/{version.id}",
        # Atrium's additions (Civitai clients ignore unknown fields): the file's torrent and magnet link,
        # once its version is published and the torrent made (docs/sharing.md).
        **({} if record.torrent is None else {
            "torrentUrl": f"{base}/api/node/v1/files/{f.id}/torrent",
            "magnet": magnet_link(f.name, f.size, *record.torrent, [f"{base}/api/node/v1/files/{f.id}/content"],
                                  tracker_urls(request)),
        }),
    }


def image_json(request: web.Request, image: Image, *, full: bool = False, username: str | None = None,
               base_model: str | None = None) -> dict[str, Any]:
    base = base_url(request)
    data: dict[str, Any] = {
        "id": image.id,
        "url": f"{base}/api/node/v1/images/{image.id}/file",
        "nsfwLevel": image.nsfw_level,
        "nsfw": bool(image.nsfw_level & NSFW_LEVELS),
        "width": image.width,
        "height": image.height,
        "hash": image.sha256,
        "type": "image",
        "meta": image.meta,
        "createdAt": iso(image.created_at),
        "thumbnailUrl": f"{base}/api/node/v1/images/{image.id}/thumbnail" if image.thumbnail_sha256 else None,
    }
    if full:
        data.update({
            "postId": None,
            "stats": {"likeCount": image.like_count, "heartCount": image.heart_count,
                      "laughCount": image.laugh_count, "cryCount": image.cry_count,
                      "dislikeCount": image.dislike_count, "commentCount": image.comment_count},
            "username": username,
            "baseModel": base_model,
            "modelVersionIds": [image.version_id] if image.version_id else [],
        })
    return data


def version_json(request: web.Request, record: VersionRecord, model: Model, *, with_model: bool = False,
                 primary_file_only: bool = False, index: int | None = None) -> dict[str, Any]:
    v = record.version
    rating = v.rating_sum / v.rating_count if v.rating_count else 0
    primary = next((f for f in record.files if f.file.primary), record.files[0] if record.files else None)
    # As on Civitai: an archived model keeps its page but lists no files (its downloads answer 410),
    # and a taken-down model also shows no images.
    files = [] if model.mode in (ModelMode.ARCHIVED, ModelMode.TAKEN_DOWN) else record.files
    if primary_file_only:
        files = [f for f in files if f is primary]
    data: dict[str, Any] = {
        "id": v.id,
        "modelId": v.model_id,
        "name": v.name,
        "createdAt": iso(v.created_at),
        "updatedAt": iso(v.updated_at),
        "status": v.status,
        "availability": "Public",
        "nsfwLevel": model.nsfw_level,
        "publishedAt": iso(v.published_at),
        "trainedWords": v.trained_words or [],
        "trainingStatus": None,
        "trainingDetails": None,
        "baseModel": v.base_model,
        "baseModelType": "Standard",
        "earlyAccessTimeFrame": 0,
        "description": v.description or None,
        "clipSkip": v.clip_skip,
        "stats": {"downloadCount": v.download_count, "ratingCount": v.rating_count, "rating": rating,
                  "thumbsUpCount": v.thumbs_up_count, "thumbsDownCount": v.thumbs_down_count},
        "files": [file_json(request, f, v) for f in files],
        "images": [] if model.mode == ModelMode.TAKEN_DOWN else [image_json(request, i) for i in record.images],
        "downloadUrl": f"{base_url(request)}/api/download/models/{v.id}" if primary and files else None,
        "air": air_of(request, v, model),
        # Atrium's addition: the version's signed manifest (docs/sharing.md).
        "manifestUrl": f"{base_url(request)}/api/node/v1/versions/{v.id}/manifest"
        if v.status == ModelStatus.PUBLISHED and files else None,
    }
    if index is not None:
        data["index"] = index
    if with_model:
        data["model"] = {"name": model.name, "type": model.type, "nsfw": bool(model.nsfw_level & NSFW_LEVELS),
                         "poi": False, "mode": model.mode}
    return data


def model_json(request: web.Request, record: ModelRecord, *, primary_file_only: bool = False) -> dict[str, Any]:
    m = record.model
    rating = m.rating_sum / m.rating_count if m.rating_count else 0
    return {
        "id": m.id,
        "name": m.name,
        "description": m.description,
        "type": m.type,
        "poi": False,
        "minor": False,
        "sfwOnly": False,
        "availability": "Public",
        "nsfw": bool(m.nsfw_level & NSFW_LEVELS),
        "nsfwLevel": m.nsfw_level,
        "allowNoCredit": m.allow_no_credit,
        "allowCommercialUse": m.allow_commercial_use,
        "allowDerivatives": m.allow_derivatives,
        "allowDifferentLicense": m.allow_different_license,
        "mode": m.mode,
        "stats": {"downloadCount": m.download_count, "favoriteCount": m.like_count,
                  "thumbsUpCount": m.like_count, "thumbsDownCount": m.dislike_count,
                  "commentCount": m.comment_count, "ratingCount": m.rating_count, "rating": rating,
                  "tippedAmountCount": 0},
        "creator": {"username": record.creator.username, "image": None},
        "tags": record.tags,
        "modelVersions": [version_json(request, v, m, primary_file_only=primary_file_only, index=i)
                          for i, v in enumerate(record.versions)],
        # Atrium extras
        "status": m.status,
        "createdAt": iso(m.created_at),
        "publishedAt": iso(m.published_at),
    }


# -- query parsing ---------------------------------------------------------------------------------


def q_int(request: web.Request, name: str, default: int | None = None) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(f"{name}: expected a whole number, got {text!r}") from None


def q_bool(request: web.Request, name: str) -> bool | None:
    text = request.query.get(name)
    if text is None or text == "":
        return None
    low = text.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise InvalidInput(f"{name}: expected true or false, got {text!r}")


def q_list(request: web.Request, name: str) -> list[str]:
    """A repeatable parameter (`types=A&types=B`), also accepting comma-separated values."""
    values: list[str] = []
    for item in request.query.getall(name, []):
        values.extend(v.strip() for v in item.split(",") if v.strip())
    return values


def q_period(request: web.Request) -> Period:
    return Period(parse_enum(Period, request.query.get("period") or Period.ALL_TIME, "period"))


def q_nsfw(request: web.Request) -> bool | None:
    text = request.query.get("nsfw")
    if text is None or text == "":
        return None
    low = text.lower()
    if low in ("true", "x", "mature"):
        return True
    if low in ("false", "none", "soft"):
        return False
    raise InvalidInput(f"nsfw: expected true, false, None, Soft, Mature or X; got {text!r}")


def model_query(request: web.Request) -> ModelQuery:
    ids = []
    for text in q_list(request, "ids"):
        if not text.isdigit():
            raise InvalidInput(f"ids: expected whole numbers, got {text!r}")
        ids.append(int(text))
    return ModelQuery(
        limit=q_int(request, "limit", 100) or 0,
        page=q_int(request, "page"),
        cursor=request.query.get("cursor") or None,
        query=request.query.get("query") or None,
        tag=request.query.get("tag") or None,
        username=request.query.get("username") or None,
        types=[parse_enum(ModelType, t, "types").value for t in q_list(request, "types")],
        base_models=q_list(request, "baseModels"),
        sort=ModelSort(parse_enum(ModelSort, request.query.get("sort") or ModelSort.HIGHEST_RATED, "sort")),
        period=q_period(request),
        nsfw=q_nsfw(request),
        ids=ids,
        allow_no_credit=q_bool(request, "allowNoCredit"),
        allow_derivatives=q_bool(request, "allowDerivatives"),
        allow_different_license=q_bool(request, "allowDifferentLicense"),
        allow_commercial_use=[parse_enum(CommercialUse, c, "allowCommercialUse").value
                              for c in q_list(request, "allowCommercialUse")],
    )


def q_offset(text: str) -> int:
    if not text.isdigit() or len(text) > 12:
        raise InvalidInput(f"cursor: not a cursor this node gave ({FOLLOWED_CURSOR}{text[:20]})")
    return int(text)


def page_metadata(request: web.Request, q: Any, next_cursor: str | None, total: int | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"pageSize": q.limit}
    if q.page is not None:
        meta["currentPage"] = q.page
        if total is not None:
            meta.update(totalItems=total, totalPages=-(-total // q.limit))
        # A next cursor means the query found more rows past this page.
        if next_cursor:
            meta["nextPage"] = str(request.url.update_query(page=q.page + 1))
    elif next_cursor:
        meta["nextCursor"] = next_cursor
        meta["nextPage"] = str(request.url.update_query(cursor=next_cursor))
    return meta


# -- routes ----------------------------------------------------------------------------------------


def dumps(data: Any) -> bytes:
    """JSON bytes of an answer: orjson (several times faster than json.dumps on a page of models), with
    json for what orjson refuses (integers past 64 bits in image metadata)."""
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        return json.dumps(data).encode()


def json_body(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json", charset="utf-8")


async def cached_json(request: web.Request, answer: Callable[[], Awaitable[Any]]) -> web.Response:
    """The JSON of `await answer()`, a pure function of the database and the request's URL, kept in the
    node's read cache (node.core.readcache) until the next commit to the database."""
    node = request.app[NODE]
    cache = read_cache(node.db, node.config.database.read_cache_mb * MIB)
    if not cache.enabled:
        return json_body(dumps(await answer()))
    # The URL as the client sent it names the answer; the base URL of links is in the key too, as a
    # configured public URL does not show in the request.
    key = (str(request.url), base_url(request))
    generation, body = cache.get(key)
    if body is None:
        body = dumps(await answer())
        cache.put(generation, key, body)
    return json_body(body)


@routes.get("/api/v1/models")
async def list_models(request: web.Request) -> web.Response:
    node = request.app[NODE]
    q = model_query(request)

    followed = wants_followed(request, q_bool(request, "followed")) and remote_applies(q)
    primary_only = q_bool(request, "primaryFileOnly") or False

    async def answer() -> dict[str, Any]:
        if followed and q.cursor is not None and q.cursor.startswith(FOLLOWED_CURSOR):
            offset = q_offset(q.cursor[len(FOLLOWED_CURSOR):])
            items, next_cursor = await followed_page(request, q, offset, primary_only)
            return {"items": items, "metadata": page_metadata(request, q, next_cursor, None)}
        page = await find_models(node.db, q)
        records = await load_models(node.db, page.ids, image_levels=q.browsing_level)
        items = [model_json(request, r, primary_file_only=primary_only) for r in records]
        next_cursor, total = page.next_cursor, page.total
        if followed:
            items, next_cursor, total = await continue_with_followed(request, q, items, next_cursor, total,
                                                                     primary_only)
        return {"items": items, "metadata": page_metadata(request, q, next_cursor, total)}

    if q.period != Period.ALL_TIME:
        # The answer changes as time passes, not only with writes: never cached.
        return json_body(dumps(await answer()))
    return await cached_json(request, answer)


@routes.get("/api/v1/models/{id}")
async def get_model(request: web.Request) -> web.Response:
    node = request.app[NODE]
    model_id = int_param(request, "id")

    async def answer() -> dict[str, Any]:
        records = await load_models(node.db, [model_id])
        if not records or records[0].model.status != ModelStatus.PUBLISHED:
            raise NotFound(f"no model {model_id}")
        return model_json(request, records[0])

    return await cached_json(request, answer)


async def _published_version(request: web.Request, version_id: int) -> dict[str, Any]:
    node = request.app[NODE]
    found = await load_versions(node.db, [version_id])
    if not found:
        raise NotFound(f"no model version {version_id}")
    record, model = found[0]
    if record.version.status != ModelStatus.PUBLISHED or model.status != ModelStatus.PUBLISHED:
        raise NotFound(f"no model version {version_id}")
    return version_json(request, record, model, with_model=True)


@routes.get("/api/v1/model-versions/{id}")
async def get_version(request: web.Request) -> web.Response:
    version_id = int_param(request, "id")
    return await cached_json(request, lambda: _published_version(request, version_id))


@routes.get("/api/v1/model-versions/by-hash/{hash}")
async def version_by_hash(request: web.Request) -> web.Response:
    node = request.app[NODE]
    text = request.match_info["hash"]

    followed = wants_followed(request, q_bool(request, "followed"))

    async def answer() -> dict[str, Any]:
        found = await versions_by_hashes(node.db, [text])
        if found:
            return await _published_version(request, found[0])
        if followed:
            remote = await followed_versions_by_hash(request, [text])
            if remote:
                return remote[0]
        raise NotFound(f"no model version has a file with hash {text!r}"
                       + (" here or on the nodes this node follows" if followed else ""))

    return await cached_json(request, answer)


@routes.post("/api/v1/model-versions/by-hash")
@public("a read-only lookup that takes its list of hashes as a body, as Civitai's does")
async def versions_by_hash(request: web.Request) -> web.Response:
    """Up to 100 SHA256 (or other) hashes in a JSON array; answers the versions found. Read-only."""
    hashes = await read_json(request)
    if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
        raise InvalidInput("send a JSON array of hashes")
    if len(hashes) > MAX_HASHES_PER_LOOKUP:
        raise InvalidInput(f"at most {MAX_HASHES_PER_LOOKUP} hashes per request")
    node = request.app[NODE]
    items = []
    for version_id in await versions_by_hashes(node.db, hashes):
        try:
            items.append(await _published_version(request, version_id))
        except NotFound:
            continue
    if wants_followed(request, q_bool(request, "followed")):
        known = {f["hashes"]["SHA256"].lower() for item in items for f in item["files"] if "SHA256" in f["hashes"]}
        missing = [h for h in hashes if not any(k.startswith(h.lower()) for k in known)]
        items.extend(await followed_versions_by_hash(request, missing))
    return web.json_response(items)


def paging(request: web.Request, default_limit: int = 20) -> tuple[int, int]:
    limit = q_int(request, "limit", default_limit) or 0
    page = q_int(request, "page", 1) or 0
    if not 1 <= limit <= 200:
        raise InvalidInput("limit: must be from 1 to 200")
    if page < 1:
        raise InvalidInput("page: must be 1 or more")
    return page, limit


@routes.get("/api/v1/images")
async def list_images(request: web.Request) -> web.Response:
    node = request.app[NODE]
    nsfw = q_nsfw(request)
    sort = parse_enum(ImageSort, request.query.get("sort") or "Newest", "sort").value
    q = ImageQuery(limit=q_int(request, "limit", 100) or 0, page=q_int(request, "page"),
                   cursor=request.query.get("cursor") or None, model_id=q_int(request, "modelId"),
                   version_id=q_int(request, "modelVersionId"), username=request.query.get("username") or None,
                   sort=sort, levels=SAFE_LEVELS if nsfw is False else VISIBLE_LEVELS,
                   period=q_period(request))
    page = await find_images(node.db, q)
    with_meta = q_bool(request, "withMeta")
    items = []
    for record in await load_images(node.db, page.ids):
        data = image_json(request, record.image, full=True, username=record.username, base_model=record.base_model)
        if with_meta is False:
            data["meta"] = None
        items.append(data)
    return web.json_response({"items": items, "metadata": page_metadata(request, q, page.next_cursor, None)})


def list_metadata(request: web.Request, page: int, limit: int, more: bool) -> dict[str, Any]:
    """Page metadata of creators and tags: nextPage only when another page has rows."""
    meta: dict[str, Any] = {"currentPage": page, "pageSize": limit}
    if more:
        meta["nextPage"] = str(request.url.update_query(page=page + 1))
    return meta


@routes.get("/api/v1/creators")
async def list_creators(request: web.Request) -> web.Response:
    page, limit = paging(request)
    db, query = request.app[NODE].db, request.query.get("query")
    rows, more = await creators_with_models(db, query=query, page=page, limit=limit)
    base = base_url(request)
    return web.json_response({
        "items": [{"username": name, "modelCount": count, "link": f"{base}/api/v1/models?{urlencode({'username': name})}",
                   "image": None} for name, count in rows],
        "metadata": list_metadata(request, page, limit, more)})


@routes.get("/api/v1/tags")
async def list_tags(request: web.Request) -> web.Response:
    page, limit = paging(request)
    db, query = request.app[NODE].db, request.query.get("query")
    rows, more = await tags_with_models(db, query=query, page=page, limit=limit)
    base = base_url(request)
    return web.json_response({
        "items": [{"name": name, "modelCount": count, "link": f"{base}/api/v1/models?{urlencode({'tag': name})}"}
                  for name, count in rows],
        "metadata": list_metadata(request, page, limit, more)})


@routes.get("/api/v1/enums")
async def enums(request: web.Request) -> web.Response:
    return web.json_response({
        "ModelType": [t.value for t in ModelType],
        "ModelFileType": [t.value for t in FileType],
        "ActiveBaseModel": list(BASE_MODELS),
        "BaseModel": list(BASE_MODELS),
        "BaseModelType": ["Standard", "Inpainting", "Refiner", "Pix2Pix"],
        "ModelSort": [s.value for s in ModelSort],
        "ImageSort": [s.value for s in ImageSort],
        "MetricTimeframe": [p.value for p in Period],
        "CommercialUse": [c.value for c in CommercialUse],
        "ModelStatus": [s.value for s in ModelStatus],
        "ModelModifier": [m.value for m in ModelMode],
        "ReviewReactions": [r.value for r in ReactionKind],
        "NsfwLevel": {level.name: int(level) for level in NsfwLevel},
        "FileFormat": [f.value for f in FileFormat],
    })
