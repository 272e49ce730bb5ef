"""Where a file comes from: a node's API, read into a manifest checked against the node's own key and
the `.torrent` of each file. `atrium pull` and a node mirroring another node's file both start here.

The manifest is trusted only when it is signed by the node id the node publishes about itself at
`/.well-known/atrium-node` (or by the id the caller pins), so a node that hands out another key's
manifest, or a manifest altered on the way, is refused before a byte is downloaded. After a key
rotation the manifest is signed by the node's current key and carries the key chain from the node id
to it; a manifest signed by a key the node document lists as retired is refused (the node re-signs its
manifests when it rotates, so only an old copy, or someone holding a retired key, offers one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from node.client import NodeClient
from node.core.errors import InvalidInput
from node.core.keychain import KeyChainError, KeyPeriod, key_periods, rotation_from_json
from node.core.manifests import Manifest, ManifestError, ManifestFile, open_manifest

NODE_DOCUMENT = "/.well-known/atrium-node"
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
# Hashes Civitai's by-hash lookup accepts besides SHA256: AutoV1/AutoV2/AutoV3 (8-12 hex), CRC32, BLAKE3.
OTHER_HASH = re.compile(r"^[0-9a-fA-F]{8,12}$|^[0-9a-fA-F]{64}$")
# Paths of a version in a URL: Civitai-style pages and API routes (a node answers all of them).
VERSION_PATHS = (
    re.compile(r"^/api/download/models/(\d+)/?$"),
    re.compile(r"^/api/v1/model-versions/(\d+)/?$"),
    re.compile(r"^/api/node/v1/versions/(\d+)(?:/manifest)?/?$"),
)
MODEL_PATHS = (re.compile(r"^/api/v1/models/(\d+)/?$"), re.compile(r"^/models/(\d+)(?:/[^/]*)?/?$"))


@dataclass(frozen=True)
class Wanted:
    """A resolved pull target: the version (as the node describes it), which of its files, and the node."""

    node_url: str
    version: dict[str, Any]
    file_ids: list[int] | None  # None: every file of the version

    @property
    def version_id(self) -> int:
        return int(self.version["id"])

    @property
    def model_type(self) -> str:
        return str((self.version.get("model") or {}).get("type") or "")

    def files(self) -> list[dict[str, Any]]:
        """The version's file objects that are wanted."""
        files = list(self.version.get("files") or [])
        if self.file_ids is not None:
            files = [f for f in files if int(f["id"]) in self.file_ids]
        return files


def split_target(target: str, default_node: str | None) -> tuple[str, str]:
    """(node URL, what to ask it) for an AIR, a hash or a URL. A URL names its own node."""
    if target.startswith(("http://", "https://")):
        parts = urlsplit(target)
        if not parts.hostname:
            raise InvalidInput(f"not a URL of a node: {target!r}")
        return f"{parts.scheme}://{parts.netloc}", target
    if default_node is None:
        raise InvalidInput(f"{target!r} does not name a node: give --node URL or set ATRIUM_NODE")
    return default_node.rstrip("/"), target


async def resolve(client: NodeClient, target: str) -> Wanted:
    """The version (and files) an AIR, a file hash, or a URL of a version, model or download names."""
    if target.startswith("urn:air:"):
        version = await client.resolve_air(target)
        return Wanted(client.base_url, await _with_model(client, version), None)
    if target.startswith(("http://", "https://")):
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        for pattern in VERSION_PATHS:
            found = pattern.match(parts.path)
            if found:
                version = await client.get(f"/api/v1/model-versions/{found.group(1)}")
                file_ids = [int(query["fileId"][0])] if "fileId" in query and query["fileId"][0].isdigit() else None
                wanted = Wanted(client.base_url, await _with_model(client, version), file_ids)
                if file_ids and not wanted.files():
                    raise InvalidInput(f"version {version['id']} has no file {file_ids[0]}")
                return wanted
        for pattern in MODEL_PATHS:
            found = pattern.match(parts.path)
            if found:
                chosen = query.get("modelVersionId", [None])[0]
                model = await client.get(f"/api/v1/models/{found.group(1)}")
                versions = model.get("modelVersions") or []
                if chosen is not None:
                    versions = [v for v in versions if str(v.get("id")) == chosen]
                if not versions:
                    raise InvalidInput(f"model {found.group(1)} has no published version"
                                       + (f" {chosen}" if chosen else ""))
                version = await client.get(f"/api/v1/model-versions/{versions[0]['id']}")
                return Wanted(client.base_url, await _with_model(client, version), None)
        raise InvalidInput(f"{target}: not a URL of a model, a version or a download on a node "
                           "(e.g. .../api/download/models/12 or .../models/3?modelVersionId=12)")
    if OTHER_HASH.match(target):
        version = await client.get(f"/api/v1/model-versions/by-hash/{target}")
        matching = [int(f["id"]) for f in version.get("files") or []
                    if any(str(v).lower() == target.lower() for v in (f.get("hashes") or {}).values())]
        return Wanted(client.base_url, await _with_model(client, version), matching or None)
    raise InvalidInput(f"{target!r} is not an AIR (urn:air:...), a file hash (SHA256, AutoV2, ...) or a URL")


async def _with_model(client: NodeClient, version: dict[str, Any]) -> dict[str, Any]:
    if isinstance(version.get("model"), dict) and version["model"].get("type"):
        return version
    model = await client.get(f"/api/v1/models/{version['modelId']}")
    return {**version, "model": {"name": model.get("name"), "type": model.get("type")}}


async def node_document(client: NodeClient) -> tuple[str, dict[str, Any]]:
    """(node id, document) as the node states them at /.well-known/atrium-node."""
    document = await client.get(NODE_DOCUMENT)
    node_id = document.get("id") if isinstance(document, dict) else None
    if not isinstance(node_id, str) or not node_id:
        raise ManifestError(f"{client.base_url}{NODE_DOCUMENT} names no node id")
    return node_id, document


async def node_id_of(client: NodeClient) -> str:
    """The node id (z6Mk...) the node states in its node document."""
    return (await node_document(client))[0]


def document_keys(node_id: str, document: dict[str, Any]) -> list[KeyPeriod]:
    """The node's keys as the rotation entries in its node document prove them (the current key last);
    ManifestError when that chain does not hold."""
    keys = document.get("keys")
    if not isinstance(keys, list):
        keys = []
    rotations = [k.get("rotation") for k in keys if isinstance(k, dict) and k.get("rotation") is not None]
    try:
        return key_periods(node_id, [rotation_from_json(r) for r in rotations])
    except KeyChainError as exc:
        raise ManifestError(f"the node document's key chain does not hold: {exc.detail}") from None


def retired_keys(node_id: str, document: dict[str, Any]) -> dict[str, int]:
    """Keys the node document proves the node retired: key -> the seq of the rotation that retired it."""
    return {p.key: p.until_seq for p in document_keys(node_id, document) if p.until_seq is not None}


async def verified_manifest(client: NodeClient, version_id: int, key: str | None = None) -> Manifest:
    """The version's manifest, which must come from `key` (a node id) or else from the node's own id,
    signed by that node's current key."""
    stated, document = await node_document(client)
    if key is not None and stated != key:
        raise ManifestError(f"{client.base_url} is node {stated}, not the pinned {key}")
    envelope = await client.get_bytes(f"/api/node/v1/versions/{version_id}/manifest", limit=16 * 1024 * 1024)
    manifest = open_manifest(envelope, trusted_keys=[key or stated])
    retired = retired_keys(stated, document)
    if manifest.key_id in retired:
        raise ManifestError(f"manifest: signed by {manifest.key_id}, a key {stated} retired at log entry "
                            f"{retired[manifest.key_id]}; the node signs with another key now")
    return manifest


def signer_text(manifest: Manifest) -> str:
    """Who signed a manifest, for people: the node id, and the key when it is a later one."""
    if manifest.key_id == manifest.node_id or not manifest.node_id:
        return manifest.key_id
    return f"{manifest.node_id} (with its key {manifest.key_id}, rotation entry {manifest.keys[-1].from_seq - 1})"


def manifest_entry(manifest: Manifest, file: dict[str, Any]) -> ManifestFile:
    """The manifest's entry for a file object of the node's API (matched by name and SHA256)."""
    entry = manifest.file(str(file["name"]))
    sha256 = str((file.get("hashes") or {}).get("SHA256") or "").lower()
    if sha256 and sha256 != entry.sha256:
        raise ManifestError(f"{entry.name}: the node lists SHA256 {sha256}, its signed manifest {entry.sha256}")
    return entry


async def torrent_of(client: NodeClient, file_id: int) -> bytes:
    return await client.get_bytes(f"/api/node/v1/files/{file_id}/torrent", limit=16 * 1024 * 1024)


__all__ = ["Wanted", "document_keys", "manifest_entry", "node_document", "node_id_of", "resolve", "retired_keys", "signer_text", "split_target",
           "torrent_of", "verified_manifest"]
