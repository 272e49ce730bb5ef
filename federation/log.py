"""The node's signed, append-only federation log.

An entry is the canonical JSON `{"body", "kind", "node", "prev", "seq", "ts"}`: `node` is the signing
node's id, `seq` counts from 1, `prev` is the SHA-256 (hex) of the previous entry's stored bytes (64
zeros for the first). The node signs those exact bytes with its Ed25519 key (after a key rotation, the
key a `node.key_rotated` entry introduced: node/core/keychain.py); they are stored and served as they
were signed, never re-serialised. Catalog changes append their entry inside the change's own
transaction (node.core.catalog's journals), so a change and its entry commit together.

Over the entries sits an RFC 6962 Merkle tree (federation/merkle.py); a checkpoint is a C2SP signed note
`<origin>\\n<size>\\n<base64 root>\\n` that lets a follower check a whole batch of entries with one
signature and the hash chain.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import event
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from federation import merkle
from node.core.catalog import version_air
from node.core.db import Database
from node.core.errors import Conflict, InvalidInput
from node.core.identity import NodeIdentity, Rotation, canonical_json
from node.core.keychain import ROTATION_KIND, complete_rotation, logged_rotations, refresh_identity, rotation_body
from node.core.tables import (LogEntry, LogHead, Model, ModelFile, ModelTag, ModelVersion, Tag, User,
                              utcnow)
from node.core.vocabulary import ModelStatus

GENESIS = "0" * 64
MAX_PAGE = 1000
CROSS_PROCESS_POLL = 0.5  # seconds between head checks while a long-poll waits


# The same canonical JSON as manifests: sorted keys, no spaces, UTF-8.
canonical = canonical_json


@dataclass(frozen=True)
class SignedEntry:
    """An entry as it travels: the signed bytes and the signature."""

    data: bytes
    sig: bytes

    def line(self) -> bytes:
        """One NDJSON line: the entry's bytes as a JSON string (exact after UTF-8 decoding) and the
        signature in base64."""
        return orjson.dumps({"entry": self.data.decode(), "sig": base64.b64encode(self.sig).decode()}) + b"\n"

    @classmethod
    def from_line(cls, line: bytes | str) -> SignedEntry:
        try:
            value = orjson.loads(line)
            return cls(value["entry"].encode(), base64.b64decode(value["sig"], validate=True))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InvalidInput("a log line must be {\"entry\": <string>, \"sig\": <base64>}") from None

    @cached_property
    def fields(self) -> Any:
        """The entry parsed (once); ValueError when the bytes are not JSON."""
        return orjson.loads(self.data)


def checkpoint_origin(node_id: str) -> str:
    return f"atrium/{node_id}"


def note_key_id(name: str, public_key: bytes) -> bytes:
    """C2SP signed-note key id of an Ed25519 key: the first 4 bytes of SHA-256(name \\n 0x01 key)."""
    return hashlib.sha256(name.encode() + b"\n\x01" + public_key).digest()[:4]


def checkpoint_body(node_id: str, size: int, root: bytes) -> bytes:
    return f"{checkpoint_origin(node_id)}\n{size}\n{base64.b64encode(root).decode()}\n".encode()


def sign_checkpoint(identity: NodeIdentity, size: int, root: bytes) -> bytes:
    origin = checkpoint_origin(identity.node_id)
    body = checkpoint_body(identity.node_id, size, root)
    sig = identity.sign(body)
    key = note_key_id(origin, identity.public_key_bytes)
    return body + f"\n\u2014 {origin} {base64.b64encode(key + sig).decode()}\n".encode()


async def model_snapshot(session: AsyncSession, node_name: str, model: Model) -> dict[str, Any]:
    """What followers learn of a model: enough to list, search and find its files and manifests."""
    owner = await session.get(User, model.owner_id)
    tags = (await session.exec(select(Tag.name).join(ModelTag, col(ModelTag.tag_id) == Tag.id)
                               .where(ModelTag.model_id == model.id).order_by(Tag.name))).all()
    versions = (await session.exec(select(ModelVersion).where(
        ModelVersion.model_id == model.id, ModelVersion.status == ModelStatus.PUBLISHED.value)
        .order_by(col(ModelVersion.id)))).all()
    files = (await session.exec(select(ModelFile).where(col(ModelFile.version_id).in_([v.id for v in versions]))
                                .order_by(col(ModelFile.id)))).all()
    by_version: dict[int, list[dict[str, Any]]] = {}
    for f in files:
        by_version.setdefault(f.version_id, []).append(
            {"id": f.id, "name": f.name, "size": f.size, "type": f.type, "format": f.format,
             "primary": f.primary, "sha256": f.sha256})
    return {
        "id": model.id, "name": model.name, "type": model.type, "description": model.description,
        "nsfwLevel": model.nsfw_level, "status": model.status, "mode": model.mode,
        "creator": owner.username if owner else None, "tags": list(tags),
        "versions": [{"id": v.id, "name": v.name, "baseModel": v.base_model, "trainedWords": v.trained_words,
                      "air": version_air(node_name, model, v),
                      "publishedAt": v.published_at.isoformat().replace("+00:00", "Z") if v.published_at else None,
                      "files": by_version.get(v.id, [])} for v in versions],  # type: ignore[arg-type]
    }


class FederationLog:
    """This node's log: append (inside catalog transactions), read, checkpoint, prove."""

    def __init__(self, db: Database, identity: NodeIdentity, node_name: str, node_url: str | None = None,
                 key_path: Path | None = None) -> None:
        self.db = db
        self.identity = identity
        self.key_path = key_path  # where the key lives: a rotation by another process is adopted from there
        self.node_name = node_name
        self.node_url = node_url  # where followers fetch files, manifests and torrents (node.public_url)
        self.changed = asyncio.Condition()
        self._leaves: list[bytes] = []  # leaf hashes of this node's entries, seq order, loaded lazily
        self.on_append: list[Callable[[int], None]] = []  # called with the new head after each commit
        self.closing = False

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    async def journal(self, session: AsyncSession, kind: str, model: Model) -> None:
        """A catalog journal (node.core.catalog): append the change with the model as it now is."""
        await self.append(session, kind, {"model": await model_snapshot(session, self.node_name, model),
                                          "nodeName": self.node_name, "nodeUrl": self.node_url})

    async def journal_label(self, session: AsyncSession, origin: str, model_id: int, level: int) -> None:
        """A moderator relabelled a model (this node's or a followed node's): append a `label` entry.
        The body has no `model` key, so followers never take it for a model's own description."""
        await self.append(session, "label", {"target": {"origin": origin, "model": model_id}, "level": level,
                                             "nodeName": self.node_name, "nodeUrl": self.node_url})

    async def append(self, session: AsyncSession, kind: str, body: dict[str, Any]) -> LogEntry:
        """Sign and add the next entry inside `session`'s transaction (the caller commits)."""
        head = await self._locked_head(session)
        return await self._write(session, head, kind, body)

    async def rotate(self, session: AsyncSession, new_key: Ed25519PrivateKey) -> tuple[LogEntry, list[Rotation]]:
        """Append the `node.key_rotated` entry that hands signing over to `new_key` (signed by the
        current key, with the new key's proof of possession) inside `session`'s transaction; returns it
        and the whole key chain. The caller commits, then switches the key files (keychain.finish_rotation)."""
        head = await self._locked_head(session)
        seq = head.seq + 1 if head else 1
        old = self.identity.key_id
        entry = await self._write(session, head, ROTATION_KIND, rotation_body(self.node_id, old, new_key, seq))
        head = await session.get(LogHead, self.node_id)
        assert head is not None
        head.key_id = orjson.loads(entry.data)["body"]["newKey"]
        head.retired_keys = {**(head.retired_keys or {}), old: seq}
        session.add(head)
        await session.flush()
        return entry, await logged_rotations(session, self.node_id)

    async def _locked_head(self, session: AsyncSession) -> LogHead | None:
        """The log's head, locked; first adopting a key rotation another process committed, so that no
        entry is ever signed by a key the log has retired."""
        head = (await session.exec(select(LogHead).where(LogHead.origin == self.node_id)
                                   .with_for_update())).first()
        if head is not None and (head.key_id or self.node_id) != self.identity.key_id:
            await self._adopt_key(session)
        return head

    async def _adopt_key(self, session: AsyncSession) -> None:
        if self.key_path is None:
            raise Conflict(f"the log of {self.node_id} is signed by another key now; restart to load it")
        await complete_rotation(self.key_path, self.identity, session)

    async def refresh_key(self) -> None:
        """Adopt a rotation committed by another process (`atrium keys rotate` while serving)."""
        if self.key_path is not None:
            await refresh_identity(self.db, self.identity, self.key_path)

    async def _write(self, session: AsyncSession, head: LogHead | None, kind: str, body: dict[str, Any]) -> LogEntry:
        seq, prev = (head.seq, head.entry_hash) if head else (0, GENESIS)
        data = canonical({"body": body, "kind": kind, "node": self.node_id, "prev": prev, "seq": seq + 1,
                          "ts": utcnow().isoformat().replace("+00:00", "Z")})
        entry = LogEntry(origin=self.node_id, seq=seq + 1, data=data, sig=self.identity.sign(data),
                         entry_hash=hashlib.sha256(data).hexdigest(), leaf_hash=merkle.leaf_hash(data).hex(),
                         kind=kind)
        if head is None:
            head = LogHead(origin=self.node_id, seq=entry.seq, entry_hash=entry.entry_hash)
        else:
            head.seq, head.entry_hash = entry.seq, entry.entry_hash
        session.add(entry)
        session.add(head)
        await session.flush()
        event.listen(session.sync_session, "after_commit", lambda _s: self._committed(entry.seq), once=True)
        return entry

    def _committed(self, seq: int) -> None:
        self.notify_changed()
        for hook in self.on_append:
            hook(seq)

    def shutdown(self) -> None:
        """The server is stopping: long-polls answer now instead of holding the shutdown up."""
        self.closing = True
        self.notify_changed()

    def notify_changed(self) -> None:
        """Wake long-polls: this node's log, or a log it mirrors, has new entries."""
        async def wake() -> None:
            async with self.changed:
                self.changed.notify_all()

        asyncio.ensure_future(wake())

    async def head(self, origin: str | None = None) -> tuple[int, str]:
        async with self.db.read_session() as session:
            row = await session.get(LogHead, origin or self.node_id)
        return (row.seq, row.entry_hash) if row else (0, GENESIS)

    async def origins(self) -> list[tuple[str, int]]:
        """Every log this node serves: its own first, then the ones it mirrors, with their heads."""
        async with self.db.read_session() as session:
            rows = (await session.exec(select(LogHead).order_by(col(LogHead.origin)))).all()
        heads = {row.origin: row.seq for row in rows}
        return [(self.node_id, heads.pop(self.node_id, 0))] + sorted(heads.items())

    async def entries(self, after: int, limit: int = MAX_PAGE, *, origin: str | None = None) -> list[SignedEntry]:
        """Entries with seq > after, oldest first (this node's own log unless `origin` names a mirrored one)."""
        if after < 0 or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"after must be >= 0 and limit from 1 to {MAX_PAGE}")
        async with self.db.read_session() as session:
            rows = (await session.exec(select(LogEntry.data, LogEntry.sig).where(
                LogEntry.origin == (origin or self.node_id), col(LogEntry.seq) > after)
                .order_by(col(LogEntry.seq)).limit(limit))).all()
        return [SignedEntry(bytes(data), bytes(sig)) for data, sig in rows]

    async def wait_for_change(self, origin: str, after: int, timeout: float) -> bool:
        """Wait until `origin`'s log holds an entry after `after`, or any log this node serves changes
        (a follower then catches up on all of them), or `timeout` seconds pass. True when `origin`
        has news. Appends by this process wake it at once; those of other processes sharing the
        database (several `atrium serve` behind a proxy) are seen within CROSS_PROCESS_POLL seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if (await self.head(origin))[0] > after:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0 or self.closing:
                return False
            try:
                async with asyncio.timeout(min(remaining, CROSS_PROCESS_POLL)):
                    async with self.changed:
                        await self.changed.wait()
                return (await self.head(origin))[0] > after
            except TimeoutError:
                continue

    async def leaves(self, size: int | None = None) -> list[bytes]:
        """Leaf hashes of the first `size` entries (all by default), cached and extended as it grows."""
        head, _ = await self.head()
        size = head if size is None else size
        if not 0 <= size <= head:
            raise InvalidInput(f"the log has {head} entries, not {size}")
        if len(self._leaves) < size:
            async with self.db.read_session() as session:
                rows = (await session.exec(select(LogEntry.leaf_hash).where(
                    LogEntry.origin == self.node_id, col(LogEntry.seq) > len(self._leaves))
                    .order_by(col(LogEntry.seq)))).all()
            self._leaves.extend(bytes.fromhex(h) for h in rows)
        return self._leaves[:size]

    async def checkpoint(self) -> bytes:
        """A signed note over the current size and Merkle root (signed by the key current at that size)."""
        leaves = await self.leaves()
        # After reading the size: a rotation at or below it is then seen and adopted before signing.
        await self.refresh_key()
        root = await asyncio.to_thread(merkle.root, leaves)
        return sign_checkpoint(self.identity, len(leaves), root)

    async def inclusion(self, seq: int, size: int) -> list[bytes]:
        leaves = await self.leaves(size)
        if not 1 <= seq <= size:
            raise InvalidInput(f"entry {seq} is not in the first {size}")
        return await asyncio.to_thread(merkle.inclusion_proof, leaves, seq - 1)

    async def consistency(self, old: int, new: int) -> list[bytes]:
        leaves = await self.leaves(new)
        if not 1 <= old <= new:
            raise InvalidInput(f"no consistency proof from {old} to {new}")
        return await asyncio.to_thread(merkle.consistency_proof, leaves, old)


def b64(values: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(v).decode() for v in values]


__all__ = ["FederationLog", "GENESIS", "SignedEntry", "b64", "canonical", "checkpoint_body", "checkpoint_origin",
           "model_snapshot", "note_key_id", "sign_checkpoint"]
