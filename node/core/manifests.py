"""Signed manifests: what a model version's files are, signed by the node that published them.

A manifest is an in-toto Statement v1 (subjects: the files with their SHA-256) whose predicate holds the
version's AIR and, per file, its size, every hash the catalog knows, the safetensors header digest and
the file's BitTorrent identifiers (v2 file root, v1 and v2 info-hashes, piece size). It travels in a
DSSE envelope signed with the origin node's Ed25519 key; the signature's key id is the signing key
(`z6Mk...`, the public key itself), so a manifest can be checked offline. Until the node rotates its
key that is the node id; after a rotation the predicate's `node` also names the signing key (`key`)
and carries the key chain (`keyChain`: the signed rotation entries from the node id's key to the
signing key, node/core/keychain.py), so `--key NODE_ID` still verifies offline. Web seeds and other
URLs stay out of it: they change from node to node, the bytes do not.

Verification order: the envelope's shape, then the signature over DSSE's PAE of the payload type and
the exact payload bytes, then the payload type, and only then is the payload parsed. Files are checked
by size first (cheap) and then by SHA-256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.core.errors import InvalidInput
from node.core.identity import NodeIdentity, canonical_json, public_key_from_node_id, verify
from node.core.keychain import KeyChainError, KeyPeriod, key_periods, rotation_from_json, rotation_json

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://atrium.dev/manifest/v1"
MAX_ENVELOPE_BYTES = 16 * 1024 * 1024
READ_CHUNK = 4 * 1024 * 1024
HEX64 = frozenset("0123456789abcdef")


class ManifestError(InvalidInput):
    """A manifest that is malformed, not signed by the expected key, or does not match the files."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def sign_envelope(identity: NodeIdentity, payload: bytes, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """A DSSE envelope (JSON bytes) over `payload`, signed by the node's current key."""
    signature = identity.sign(pae(payload_type, payload))
    envelope = {"payloadType": payload_type, "payload": base64.b64encode(payload).decode(),
                "signatures": [{"keyid": identity.key_id, "sig": base64.b64encode(signature).decode()}]}
    return canonical_json(envelope)


@dataclass(frozen=True)
class ManifestFile:
    """One file as the manifest describes it."""

    name: str
    size: int
    sha256: str
    hashes: dict[str, str] = field(default_factory=dict)  # Civitai hash kind -> hex, as published
    header_sha256: str | None = None  # sha256 of the safetensors header (length prefix and JSON)
    file_root: str | None = None  # BitTorrent v2 merkle root
    info_hash_v1: str | None = None
    info_hash_v2: str | None = None
    piece_size: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256, "hashes": self.hashes,
                "safetensorsHeaderSha256": self.header_sha256,
                "bittorrent": {"fileRoot": self.file_root, "infoHashV1": self.info_hash_v1,
                               "infoHashV2": self.info_hash_v2, "pieceSize": self.piece_size}}

    @classmethod
    def from_json(cls, value: Any) -> ManifestFile:
        if not isinstance(value, dict):
            raise ManifestError("manifest: a file entry is not an object")
        name, size, sha = value.get("name"), value.get("size"), value.get("sha256")
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ManifestError(f"manifest: bad file name {name!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"manifest: {name}: bad size {size!r}")
        if not _is_hex64(sha):
            raise ManifestError(f"manifest: {name}: bad sha256 {sha!r}")
        bt = value.get("bittorrent") or {}
        if not isinstance(bt, dict):
            raise ManifestError(f"manifest: {name}: bad bittorrent entry")
        hashes = value.get("hashes") or {}
        if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
            raise ManifestError(f"manifest: {name}: bad hashes")
        piece = bt.get("pieceSize")
        return cls(name=name, size=size, sha256=sha, hashes=dict(hashes),
                   header_sha256=_optional_str(value.get("safetensorsHeaderSha256")),
                   file_root=_optional_str(bt.get("fileRoot")), info_hash_v1=_optional_str(bt.get("infoHashV1")),
                   info_hash_v2=_optional_str(bt.get("infoHashV2")),
                   piece_size=piece if isinstance(piece, int) and not isinstance(piece, bool) else None)


@dataclass(frozen=True)
class Manifest:
    """A verified manifest: who signed it and what it says."""

    key_id: str  # the key that signed it
    statement: dict[str, Any]
    files: list[ManifestFile]
    envelope: bytes
    node_id: str = ""  # the origin node (equal to key_id until the node rotates its key)
    keys: list[KeyPeriod] = field(default_factory=list)  # the origin's keys up to key_id, from the chain

    @property
    def predicate(self) -> dict[str, Any]:
        return self.statement["predicate"]

    @property
    def air(self) -> str | None:
        return self.predicate.get("air")

    @property
    def origin(self) -> str | None:
        """The node id the predicate names as origin (its key chain leads to key_id in a valid manifest)."""
        return (self.predicate.get("node") or {}).get("id")

    def file(self, name: str) -> ManifestFile:
        for entry in self.files:
            if entry.name == name:
                return entry
        raise ManifestError(f"{name}: not in the manifest (it lists {', '.join(f.name for f in self.files)})")

    def by_sha256(self, sha256: str) -> ManifestFile | None:
        return next((f for f in self.files if f.sha256 == sha256.lower()), None)


def build_statement(*, node_id: str, node_name: str, air: str, model: dict[str, Any], version: dict[str, Any],
                    files: Sequence[ManifestFile]) -> dict[str, Any]:
    """The in-toto Statement for a version's files."""
    if not files:
        raise InvalidInput("a manifest needs at least one file")
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": f.name, "digest": {"sha256": f.sha256}} for f in files],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"node": {"id": node_id, "name": node_name}, "air": air, "model": model, "version": version,
                      "files": [f.as_json() for f in files]},
    }


def sign_manifest(identity: NodeIdentity, statement: dict[str, Any]) -> bytes:
    """The statement in a DSSE envelope signed by the node's current key; after a rotation the
    predicate's node also names that key and carries the chain of rotations leading to it."""
    if identity.rotated:
        node = {**statement["predicate"]["node"], "key": identity.key_id,
                "keyChain": [rotation_json(r) for r in identity.rotations]}
        statement = {**statement, "predicate": {**statement["predicate"], "node": node}}
    return sign_envelope(identity, canonical_json(statement))


def open_manifest(data: bytes, *, trusted_keys: Sequence[str] | None = None) -> Manifest:
    """Check a manifest envelope and return what it says.

    With `trusted_keys` (node ids), the manifest must come from one of those nodes: signed by the node
    id's key, or by a later key of that node that the manifest's key chain leads to. Without, the
    origin it names is used: that proves the manifest is intact and who signed it, not that the
    signer is a node you trust (the caller reports `node_id`).
    """
    if len(data) > MAX_ENVELOPE_BYTES:
        raise ManifestError(f"manifest: larger than {MAX_ENVELOPE_BYTES} bytes")
    try:
        envelope = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise ManifestError("manifest: not JSON (expected a DSSE envelope)") from None
    if not isinstance(envelope, dict):
        raise ManifestError("manifest: not a DSSE envelope (expected a JSON object)")
    payload_type, payload_b64, signatures = (envelope.get("payloadType"), envelope.get("payload"),
                                             envelope.get("signatures"))
    if not isinstance(payload_type, str) or not isinstance(payload_b64, str) or not isinstance(signatures, list) \
            or not signatures:
        raise ManifestError("manifest: not a DSSE envelope (needs payloadType, payload and signatures)")
    try:
        payload = base64.b64decode(payload_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ManifestError("manifest: the payload is not base64") from None
    message = pae(payload_type, payload)
    signer = None
    for entry in signatures:
        if not isinstance(entry, dict) or not isinstance(entry.get("keyid"), str) or not isinstance(entry.get("sig"), str):
            raise ManifestError("manifest: a signature entry needs keyid and sig")
        key_id = entry["keyid"]
        try:
            public_key_from_node_id(key_id)
            sig = base64.b64decode(entry["sig"], validate=True)
        except (InvalidInput, binascii.Error, ValueError):
            continue
        if verify(key_id, message, sig):
            signer = key_id
            break
    if signer is None:
        raise ManifestError("manifest: the signature does not verify: the manifest was altered or its "
                            "payload type changed")
    if payload_type != PAYLOAD_TYPE:
        raise ManifestError(f"manifest: payload type {payload_type!r} is not an in-toto statement ({PAYLOAD_TYPE})")
    try:
        statement = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise ManifestError("manifest: the signed payload is not JSON") from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise ManifestError(f"manifest: the payload is not an in-toto Statement v1 ({STATEMENT_TYPE})")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise ManifestError(f"manifest: predicate type {statement.get('predicateType')!r} is not {PREDICATE_TYPE}")
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict) or not isinstance(predicate.get("files"), list):
        raise ManifestError("manifest: the predicate lists no files")
    files = [ManifestFile.from_json(v) for v in predicate["files"]]
    if len({f.name for f in files}) != len(files):
        raise ManifestError("manifest: two files share a name")
    subjects = statement.get("subject")
    listed = {(s.get("name"), (s.get("digest") or {}).get("sha256")) for s in subjects or [] if isinstance(s, dict)}
    if listed != {(f.name, f.sha256) for f in files}:
        raise ManifestError("manifest: the subjects and the predicate's files disagree")
    node = predicate.get("node") if isinstance(predicate.get("node"), dict) else {}
    origin = node.get("id")
    chain = node.get("keyChain") or []
    if not isinstance(origin, str) or not isinstance(chain, list):
        raise ManifestError("manifest: the predicate names no origin node")
    try:
        keys = key_periods(origin, [rotation_from_json(r) for r in chain])
    except KeyChainError as exc:
        raise ManifestError(f"manifest: its key chain does not lead from {origin[:80]} to its key: {exc.detail}") from None
    if keys[-1].key != signer:
        raise ManifestError(f"manifest: names {origin!r} as origin but is signed by {signer}")
    if trusted_keys is not None and origin not in trusted_keys:
        by = signer if signer == origin else f"{signer}, a key of {origin}"
        raise ManifestError(f"manifest: not signed by {', '.join(trusted_keys)} (signed by {by})")
    return Manifest(key_id=signer, statement=statement, files=files, envelope=data, node_id=origin, keys=keys)


# -- checking files against a manifest ---------------------------------------------------------------


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, read in large chunks into one reused buffer."""
    digest = hashlib.sha256()
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


def check_file(path: Path, expected: ManifestFile) -> None:
    """Raise ManifestError naming the file unless `path` has the manifest's size and SHA-256."""
    label = expected.name if path.name == expected.name else f"{path.name} ({expected.name} in the manifest)"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ManifestError(f"{label}: missing") from None
    if not path.is_file():
        raise ManifestError(f"{label}: not a regular file")
    if size != expected.size:
        raise ManifestError(f"{label}: {size} bytes, the manifest says {expected.size}")
    actual = sha256_of(path)
    if actual != expected.sha256:
        raise ManifestError(f"{label}: SHA-256 {actual} does not match the manifest's {expected.sha256}")


def files_to_check(path: Path, manifest: Manifest) -> list[tuple[Path, ManifestFile]]:
    """Pair files on disk with manifest entries: a directory holds the files under their names; a single
    file is checked as the manifest entry of the same name, or as its only entry."""
    if path.is_dir():
        return [(path / f.name, f) for f in manifest.files]
    if not path.exists():
        raise ManifestError(f"{path.name}: missing")
    named = [f for f in manifest.files if f.name == path.name]
    if named:
        return [(path, named[0])]
    if len(manifest.files) == 1:
        return [(path, manifest.files[0])]
    raise ManifestError(f"{path.name}: not in the manifest (it lists {', '.join(f.name for f in manifest.files)})")


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= HEX64


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


__all__ = ["Manifest", "ManifestError", "ManifestFile", "PAYLOAD_TYPE", "PREDICATE_TYPE", "STATEMENT_TYPE",
           "build_statement", "check_file", "files_to_check", "open_manifest", "pae", "sha256_of",
           "sign_envelope", "sign_manifest"]
