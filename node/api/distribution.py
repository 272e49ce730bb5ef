"""Sharing files: a version's signed manifest, each file's `.torrent` and magnet link."""

from __future__ import annotations

from aiohttp import web

from node.api.auth import optional_user
from node.api.bodies import int_param
from node.api.files import GONE_MESSAGE, content_disposition, visible_file
from node.api.keys import NODE
from node.api.links import base_url, tracker_urls
from node.core.errors import Forbidden
from node.core.vocabulary import ModelMode
from node.core.torrents import TorrentMeta

routes = web.RouteTableDef()


def web_seed_url(request: web.Request, version_id: int, file_id: int) -> str:
    """This node's URL of one file's bytes: the torrent's web seed (BEP 19). It has no query string:
    libtorrent refuses web seeds on the local host whose URL has one (SSRF mitigation), and a user's
    own node is often on the local host."""
    return f"{base_url(request)}/api/node/v1/files/{file_id}/content"


@routes.get("/api/node/v1/versions/{id}/manifest")
async def version_manifest(request: web.Request) -> web.Response:
    """The DSSE envelope exactly as signed (made at publish; made now if a version lacks one)."""
    node = request.app[NODE]
    version_id = int_param(request, "id")
    await node.catalog.visible_version(await optional_user(request), version_id)
    envelope = await node.distribution.manifest(version_id)
    return web.Response(body=envelope, content_type="application/json",
                        headers={"Cache-Control": "public, max-age=300"})


async def _file_torrent(request: web.Request) -> tuple[int, int, TorrentMeta]:
    file_id, version_id, _model = await visible_file(request)
    return version_id, file_id, await request.app[NODE].distribution.torrent(file_id)


@routes.get("/api/node/v1/files/{id}/torrent")
async def file_torrent(request: web.Request) -> web.Response:
    """The file's `.torrent` (hybrid v1 + v2) with this node's download URL as web seed."""
    version_id, file_id, meta = await _file_torrent(request)
    body = meta.with_web_seeds([web_seed_url(request, version_id, file_id)], tracker_urls(request))
    return web.Response(body=body, content_type="application/x-bittorrent",
                        headers={"Content-Disposition": content_disposition(f"{meta.name}.torrent"),
                                 "Cache-Control": "public, max-age=300"})


@routes.get("/api/node/v1/files/{id}/content")
async def file_content(request: web.Request) -> web.StreamResponse:
    """A published file's bytes, with HTTP Range (206): the web seed of its torrent. Unlike
    /api/download/models/{versionId}, it does not count downloads: a web seed is asked for pieces,
    often by many clients at once, and a piece is not a download."""
    node = request.app[NODE]
    file_id, _version_id, model = await visible_file(request)
    if model.mode == ModelMode.TAKEN_DOWN:
        raise Forbidden("this model was taken down by the node's moderators")
    if model.mode == ModelMode.ARCHIVED:
        raise web.HTTPGone(text=GONE_MESSAGE)
    shared = await node.distribution.shared_file(file_id)
    return web.FileResponse(node.blobs.open_path(shared.sha256), headers={
        "Content-Type": "application/octet-stream",
        "Content-Disposition": content_disposition(shared.torrent.name),
        "Cache-Control": "public, max-age=86400",
    })


@routes.get("/api/node/v1/files/{id}/magnet")
async def file_magnet(request: web.Request) -> web.Response:
    """The file's magnet link and BitTorrent identifiers."""
    version_id, file_id, meta = await _file_torrent(request)
    return web.json_response({"fileId": file_id,
                              "magnet": meta.magnet([web_seed_url(request, version_id, file_id)],
                                                    tracker_urls(request)),
                              "infoHashV1": meta.info_hash_v1, "infoHashV2": meta.info_hash_v2,
                              "fileRoot": meta.file_root, "pieceSize": meta.piece_size})
