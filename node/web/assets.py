"""Static assets (CSS, JavaScript) served under content-hash names, so browsers may keep them for a year:
a changed file gets a new name, and pages link to the new name at once."""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/static/"
FINGERPRINT_LENGTH = 12
LONG_CACHE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    name: str          # the file's own name, as templates ask for it: "site.css"
    served_as: str     # its fingerprinted name: "site.3f2a9c0d1e4b.css"
    body: bytes
    content_type: str

    @property
    def url(self) -> str:
        return STATIC_PREFIX + self.served_as


class Assets:
    """Every file of a static directory, read once at start (they are small) and served from memory."""

    def __init__(self, directory: Path = STATIC_DIR) -> None:
        self.by_name: dict[str, Asset] = {}
        self.by_served_name: dict[str, Asset] = {}
        for path in sorted(directory.iterdir()):
            if not path.is_file():
                continue
            body = path.read_bytes()
            digest = hashlib.sha256(body).hexdigest()[:FINGERPRINT_LENGTH]
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            asset = Asset(name=path.name, served_as=f"{path.stem}.{digest}{path.suffix}", body=body,
                          content_type=content_type)
            self.by_name[asset.name] = asset
            self.by_served_name[asset.served_as] = asset

    def url(self, name: str) -> str:
        """The fingerprinted URL of an asset (KeyError for a name with no file: a template bug)."""
        return self.by_name[name].url

    async def handler(self, request: web.Request) -> web.Response:
        asset = self.by_served_name.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound(text=f"no static file {request.match_info['name']!r} (names carry the "
                                        "hash of their content; reload the page for current ones)")
        charset = "utf-8" if asset.content_type.startswith("text/") or asset.content_type.endswith("javascript") \
            else None
        return web.Response(body=asset.body, content_type=asset.content_type, charset=charset,
                            headers={"Cache-Control": LONG_CACHE})
