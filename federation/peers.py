"""The nodes this node follows: adding, removing, listing and resuming them (no HTTP here)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from sqlmodel import col, select

from node.core.db import Database
from node.core.config import FederationSection
from node.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from node.core.tables import LogHead, Peer

PEER_STATES = ("active", "halted")


def normalize_peer_url(url: str) -> str:
    """`https://node.example/` -> `https://node.example`; refuses what is not an http(s) base URL."""
    text = (url or "").strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"not a node URL: {text[:200]!r} (expected http(s)://host[:port])")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise InvalidInput(f"a node URL has no query, fragment or credentials: {text[:200]!r}")
    if len(text) > 512:
        raise InvalidInput("a node URL is at most 512 characters")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def is_blocked(settings: FederationSection, node_id: str | None = None, url: str | None = None) -> bool:
    """True when the node id or the URL's domain (or a parent domain) is on `federation.blocked`."""
    blocked = {b.strip().lower() for b in settings.blocked if b.strip()}
    if node_id is not None and node_id.lower() in blocked:
        return True
    host = (urlsplit(url).hostname or "").lower() if url else ""
    while host:
        if host in blocked:
            return True
        host = host.partition(".")[2]
    return False


@dataclass(frozen=True)
class PeerStatus:
    """A followed node as `atrium peers` and the admin API show it."""

    id: int
    url: str
    node_id: str | None
    name: str | None
    state: str
    synced_seq: int  # the last entry of its own log applied here
    head_seq: int | None  # its head when last seen (None before the first contact)
    last_error: str | None
    evidence: dict | None
    last_synced_at: datetime | None

    @property
    def lag(self) -> int | None:
        return None if self.head_seq is None else max(0, self.head_seq - self.synced_seq)

    def as_json(self) -> dict:
        return {"id": self.id, "url": self.url, "nodeId": self.node_id, "name": self.name, "state": self.state,
                "syncedSeq": self.synced_seq, "headSeq": self.head_seq, "lag": self.lag,
                "lastError": self.last_error, "evidence": self.evidence,
                "lastSyncedAt": self.last_synced_at.isoformat().replace("+00:00", "Z") if self.last_synced_at else None}


class Peers:
    """Followed nodes, stored in the database (shared by `atrium serve` and the CLI)."""

    def __init__(self, db: Database, settings: FederationSection | None = None) -> None:
        self.db = db
        self.settings = settings
        self.heads: dict[int, int] = {}  # peer id -> its log head when last seen (kept by the syncer)

    async def follow(self, url: str) -> Peer:
        url = normalize_peer_url(url)
        if self.settings is not None:
            if is_blocked(self.settings, url=url):
                raise Forbidden(f"{url} is on federation.blocked")
        async with self.db.session() as session:
            if (await session.exec(select(Peer).where(Peer.url == url))).first() is not None:
                raise Conflict(f"already following {url}")
            peer = Peer(url=url)
            session.add(peer)
            await session.commit()
            await session.refresh(peer)
        return peer

    async def find(self, url_or_id: str | int) -> Peer:
        async with self.db.read_session() as session:
            if isinstance(url_or_id, int) or str(url_or_id).isdigit():
                peer = await session.get(Peer, int(url_or_id))
            else:
                peer = (await session.exec(select(Peer).where(Peer.url == normalize_peer_url(str(url_or_id))))).first()
        if peer is None:
            raise NotFound(f"not following {url_or_id}")
        return peer

    async def unfollow(self, url_or_id: str | int) -> Peer:
        """Stop following. What was mirrored stays (it is still signed by its origin) until removed."""
        peer = await self.find(url_or_id)
        async with self.db.session() as session:
            row = await session.get(Peer, peer.id)
            if row is not None:
                await session.delete(row)
                await session.commit()
        return peer

    async def resume(self, url_or_id: str | int) -> Peer:
        """Let a halted peer sync again (after the admin has looked at the evidence)."""
        peer = await self.find(url_or_id)
        async with self.db.session() as session:
            row = await session.get(Peer, peer.id)
            assert row is not None
            row.state, row.last_error, row.evidence, row.failures = "active", None, None, 0
            session.add(row)
            await session.commit()
            await session.refresh(row)
        return row

    async def active(self) -> list[Peer]:
        async with self.db.read_session() as session:
            return list((await session.exec(select(Peer).where(Peer.state == "active").order_by(col(Peer.id)))).all())

    async def statuses(self) -> list[PeerStatus]:
        async with self.db.read_session() as session:
            peers = (await session.exec(select(Peer).order_by(col(Peer.id)))).all()
            heads = {h.origin: h.seq for h in (await session.exec(select(LogHead))).all()}
        return [PeerStatus(id=p.id, url=p.url, node_id=p.node_id, name=p.name, state=p.state,  # type: ignore[arg-type]
                           synced_seq=heads.get(p.node_id or "", 0), head_seq=self.heads.get(p.id),  # type: ignore[arg-type]
                           last_error=p.last_error, evidence=p.evidence, last_synced_at=p.last_synced_at)
                for p in peers]


__all__ = ["PEER_STATES", "PeerStatus", "Peers", "is_blocked", "normalize_peer_url"]
