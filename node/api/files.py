"""Bytes in and out: resumable model-file uploads, image uploads, downloads and AIR resolution."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from aiohttp import web
from pydantic import Field

from node.api.auth import current_user, optional_user, requires
from node.api.bodies import Body, int_param, read_body
from node.api.civitai import file_json, image_json, version_json
from node.api.followed import remote_version_json
from node.api.keys import NODE
from node.core.air import Air
from node.core.errors import Forbidden, InvalidInput, NotFound, TooLarge, Unauthenticated
from node.core.ingest import check_filename
from node.core.records import FileRecord, load_versions
from node.core.tables import Image, Model, Role
from node.core.vocabulary import ModelMode, ModelStatus, NsfwLevel

routes = web.RouteTableDef()

UPLOAD_OFFSET = "Upload-Offset"
# Pieces are read off the socket in this size; the ingest batches them further before writing.
READ_CHUNK = 256 * 1024
GONE_MESSAGE = "this model is archived: its files are no longer available for download"


class UploadBody(Body):
    filename: str = Field(max_length=255)
    size: int
    type: str = Field(default="Model", max_length=32)


def upload_json(upload: Any, request: web.Request) -> dict[str, Any]:
    return {"id": upload.id, "filename": upload.filename, "size": upload.size, "offset": upload.received,
            "type": upload.file_type, "versionId": upload.version_id,
            "url": f"/api/node/v1/uploads/{upload.id}"}


@routes.post("/api/node/v1/versions/{id}/uploads")
@requires(Role.MEMBER)
async def start_upload(request: web.Request) -> web.Response:
    """Open a resumable upload; send the bytes with PATCH to its url."""
    body = await read_body(request, UploadBody)
    upload = await request.app[NODE].ingest.start(current_user(request), int_param(request, "id"),
                                                  filename=body.filename, size=body.size, file_type=body.type)
    return web.json_response(upload_json(upload, request), status=201,
                             headers={"Location": f"/api/node/v1/uploads/{upload.id}", UPLOAD_OFFSET: "0"})


@routes.get("/api/node/v1/uploads/{upload}")
@requires(Role.MEMBER)
async def upload_status(request: web.Request) -> web.Response:
    upload = await request.app[NODE].ingest.status(current_user(request), request.match_info["upload"])
    return web.json_response(upload_json(upload, request), headers={UPLOAD_OFFSET: str(upload.received)})


async def _pieces(request: web.Request) -> AsyncIterator[bytes]:
    async for piece in request.content.iter_chunked(READ_CHUNK):
        yield piece


@routes.patch("/api/node/v1/uploads/{upload}")
@requires(Role.MEMBER)
async def append_upload(request: web.Request) -> web.Response:
    """The next bytes of an upload, starting at the `Upload-Offset` header (the upload's current offset)."""
    text = request.headers.get(UPLOAD_OFFSET)
    if text is None or not text.isdigit():
        raise InvalidInput(f"send the {UPLOAD_OFFSET} header: the byte offset these bytes start at")
    node = request.app[NODE]
    progress = await node.ingest.append(current_user(request), request.match_info["upload"], int(text),
                                        _pieces(request))
    headers = {UPLOAD_OFFSET: str(progress.upload.received)}
    if progress.file is None:
        return web.json_response(upload_json(progress.upload, request), headers=headers)
    found = await load_versions(node.db, [progress.file.version_id])
    record, model = found[0]
    if record.version.status == ModelStatus.PUBLISHED and model.status == ModelStatus.PUBLISHED:
        node.distribution.schedule_version(record.version.id)  # a file added to a published version
    file_record = next(f for f in record.files if f.file.id == progress.file.id)
    return web.json_response({"upload": upload_json(progress.upload, request),
                              "file": file_json(request, file_record, record.version)}, status=201, headers=headers)


@routes.delete("/api/node/v1/uploads/{upload}")
@requires(Role.MEMBER)
async def cancel_upload(request: web.Request) -> web.Response:
    await request.app[NODE].ingest.cancel(current_user(request), request.match_info["upload"])
    return web.json_response({"id": request.match_info["upload"], "cancelled": True})


async def _read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"the image is {request.content_length:,} bytes; this node accepts at most {limit:,}")
    data = bytearray()
    async for piece in request.content.iter_chunked(READ_CHUNK):
        data += piece
        if len(data) > limit:
            raise TooLarge(f"the image is larger than the {limit:,} bytes this node accepts")
    if not data:
        raise InvalidInput("the request body is empty: send the image's bytes")
    return bytes(data)


def _nsfw_level(request: web.Request) -> int:
    text = request.query.get("nsfw_level", "1")
    if not text.isdigit():
        raise InvalidInput("nsfw_level: one of 1, 2, 4, 8, 16 (PG, PG-13, R, X, XXX)")
    return int(text)


@routes.post("/api/node/v1/versions/{id}/images")
@requires(Role.MEMBER)
async def add_version_image(request: web.Request) -> web.Response:
    """An example image of a version: the body is the PNG, JPEG or WebP file."""
    node = request.app[NODE]
    data = await _read_limited(request, node.config.storage.max_image_bytes)
    image = await node.ingest.add_image(current_user(request), data, version_id=int_param(request, "id"),
                                        nsfw_level=_nsfw_level(request))
    return web.json_response(image_json(request, image, full=True, username=current_user(request).username),
                             status=201)


@routes.post("/api/node/v1/images")
@requires(Role.MEMBER)
async def add_image(request: web.Request) -> web.Response:
    """An image of the caller's own, not attached to a version."""
    node = request.app[NODE]
    data = await _read_limited(request, node.config.storage.max_image_bytes)
    image = await node.ingest.add_image(current_user(request), data, nsfw_level=_nsfw_level(request))
    return web.json_response(image_json(request, image, full=True, username=current_user(request).username),
                             status=201)


async def _visible_image(request: web.Request) -> Image:
    node = request.app[NODE]
    image_id = int_param(request, "id")
    async with node.db.session() as session:
        image = await session.get(Image, image_id)
    if image is None or image.nsfw_level & NsfwLevel.BLOCKED:
        raise NotFound(f"no image {image_id}")
    if image.version_id is not None:
        user = await optional_user(request)
        try:
            _version, model = await node.catalog.visible_version(user, image.version_id)
        except NotFound:
            raise NotFound(f"no image {image_id}") from None
        if model.mode == ModelMode.TAKEN_DOWN and not (user and Role(user.role).includes(Role.MODERATOR)):
            raise NotFound(f"no image {image_id}")
    return image


@routes.get("/api/node/v1/images/{id}/file")
async def image_file(request: web.Request) -> web.StreamResponse:
    image = await _visible_image(request)
    path = request.app[NODE].blobs.open_path(image.sha256)
    return web.FileResponse(path, headers={"Content-Type": image.mime, "Cache-Control": "public, max-age=31536000, immutable"})


@routes.get("/api/node/v1/images/{id}/thumbnail")
async def image_thumbnail(request: web.Request) -> web.StreamResponse:
    image = await _visible_image(request)
    if image.thumbnail_sha256 is None:
        raise NotFound(f"image {image.id} has no thumbnail")
    path = request.app[NODE].blobs.open_path(image.thumbnail_sha256)
    return web.FileResponse(path, headers={"Content-Type": "image/webp",
                                           "Cache-Control": "public, max-age=31536000, immutable"})


def choose_file(files: list[FileRecord], request: web.Request) -> FileRecord:
    """The file Civitai's download parameters select (fileId, type, format, size, fp); the primary by default."""
    q = request.query
    candidates = files
    if q.get("fileId"):
        if not q["fileId"].isdigit():
            raise InvalidInput("fileId: expected a whole number")
        candidates = [f for f in candidates if f.file.id == int(q["fileId"])]
    for param, attr in (("type", "type"), ("format", "format"), ("size", "size_kind"), ("fp", "fp")):
        if q.get(param):
            candidates = [f for f in candidates if (getattr(f.file, attr) or "").lower() == q[param].lower()]
    if not candidates:
        raise NotFound("no file of this version matches " +
                       ", ".join(f"{k}={v}" for k, v in q.items() if k in ("fileId", "type", "format", "size", "fp")))
    return next((f for f in candidates if f.file.primary), candidates[0])


def content_disposition(name: str) -> str:
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "'").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


async def visible_file(request: web.Request) -> tuple[int, int, Model]:
    """(file id, version id, model) of the `{id}` file, when the caller may see its version."""
    node = request.app[NODE]
    file_id = int_param(request, "id")
    version_id = await node.distribution.version_of_file(file_id)
    if version_id is None:
        raise NotFound(f"no file {file_id}")
    _version, model = await node.catalog.visible_version(await optional_user(request), version_id)
    return file_id, version_id, model


@routes.get("/api/download/models/{id}")
async def download(request: web.Request) -> web.StreamResponse:
    """A version's file, with HTTP Range; errors are never 2xx, so clients never save an error as a model."""
    node = request.app[NODE]
    version_id = int_param(request, "id")
    try:
        user = await optional_user(request)
    except Unauthenticated:
        raise
    found = await load_versions(node.db, [version_id])
    if not found:
        raise NotFound(f"no model version {version_id}")
    record, model = found[0]
    published = record.version.status == ModelStatus.PUBLISHED and model.status == ModelStatus.PUBLISHED
    may_edit = user is not None and (model.owner_id == user.id or Role(user.role).includes(Role.MODERATOR))
    if model.status == ModelStatus.DELETED or not (published or may_edit):
        raise NotFound(f"no model version {version_id}")
    if model.mode == ModelMode.TAKEN_DOWN and not may_edit:
        raise Forbidden("this model was taken down by the node's moderators")
    if model.mode == ModelMode.ARCHIVED and not may_edit:
        raise web.HTTPGone(text=GONE_MESSAGE)
    chosen = choose_file(record.files, request)
    path = node.blobs.open_path(chosen.file.sha256)
    if not request.http_range.start:  # a whole download or its first piece, not a resumption
        await node.catalog.count_download(version_id)
    digest = base64.b64encode(bytes.fromhex(chosen.file.sha256)).decode()
    return web.FileResponse(path, headers={
        "Content-Type": "application/octet-stream",
        "Content-Disposition": content_disposition(chosen.file.name),
        "Repr-Digest": f"sha-256=:{digest}:",
        "Cache-Control": "public, max-age=86400",
    })


@routes.get("/api/node/v1/air/{air}")
async def resolve_air(request: web.Request) -> web.Response:
    """The model version an AIR names (on this node)."""
    node = request.app[NODE]
    air = Air.parse(request.match_info["air"])
    if not air.id.isdigit() or (air.version is not None and not air.version.isdigit()):
        raise NotFound(f"no resource {air} on this node or the nodes it follows")
    if air.source != node.name:
        return await _resolve_followed(request, air)
    user = await optional_user(request)
    if air.version is None:
        model = await node.catalog.visible_model(user, int(air.id))
        found = await load_versions(node.db, [v for v in await node.catalog.version_ids(model.id)][:1])
    else:
        version, model = await node.catalog.visible_version(user, int(air.version))
        if model.id != int(air.id):
            raise NotFound(f"model {air.id} has no version {air.version}")
        found = await load_versions(node.db, [version.id])  # type: ignore[list-item]
    if not found:
        raise NotFound(f"no published version of model {air.id}")
    record, model = found[0]
    return web.json_response(version_json(request, record, model, with_model=True))


async def _resolve_followed(request: web.Request, air: Air) -> web.Response:
    """An AIR whose source is another node: the version as that node's signed log describes it, when this
    node follows it (docs/federation.md)."""
    node = request.app[NODE]
    found = None
    if node.federation is not None:
        found = await node.federation.mirror.resolve(air.source, int(air.id),
                                                     int(air.version) if air.version is not None else None)
    if found is None:
        raise NotFound(f"{air} names a resource on {air.source!r}, which this node ({node.name!r}) does not "
                       "follow or whose log does not list it")
    model, version = found
    return web.json_response(remote_version_json(model, version, with_model=True))


__all__ = ["routes", "check_filename"]
