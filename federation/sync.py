"""Pulling followed nodes' logs: one puller per followed node, a durable cursor per origin.

A puller asks its peer who it is (the node document), which logs it serves (its own and the ones it
mirrors: `GET /federation/v1/origins`), and then, per origin, for the entries after the cursor. Every
batch is checked before anything of it is applied (federation/verify.py): the peer's own log with its
signed checkpoint (one signature for the whole catch-up), relayed logs entry by entry against their
origin's key. Then it waits on the peer's log with a long-poll, so a change arrives as soon as the peer
commits it.

Applying is idempotent by (origin, seq) and happens in one transaction per batch: the entries are
stored as signed (so this node can relay them), the origin's head moves, and the mirrored index
(`remote_models`) takes the models' new state; deletes, unpublishes and takedowns remove them.

A fork, a bad signature or a changed node identity halts the peer (state `halted`, the evidence kept
for the admin: `atrium peers`); unreachable peers and HTTP errors are retried with a doubling pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
from collections.abc import Callable
from datetime import UTC
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import orjson
import sqlalchemy as sa
import yarl
from sqlmodel import col, select

from federation import merkle
from federation.httpsig import sign_request
from federation.labels import apply_labels, store_labels
from federation.log import FederationLog, SignedEntry
from federation.peers import Peers, is_blocked, normalize_peer_url
from federation.verify import Cursor, LogRejected, check_batch, parse_entry
from node import __version__
from node.core.config import FederationSection
from node.core.db import Database
from node.core.errors import InvalidInput
from node.core.keychain import ROTATION_KIND
from node.core.tables import LogEntry, LogHead, Peer, RemoteFile, RemoteModel, UTCDateTime, utcnow

log = logging.getLogger(__name__)

PAGE = 1000
REFRESH_SECONDS = 2.0
HALTING = ("tampered", "forged", "fork", "identity", "blocked")
REMOVING_KINDS = ("model.unpublished", "model.deleted", "model.takedown")
MAX_ANSWER_BYTES = 64 * 1024 * 1024


class PeerError(Exception):
    """A peer could not be synced this time (network, HTTP status, malformed answer): retry later."""


class Syncer:
    """Runs the pullers of every active followed node while the node serves."""

    def __init__(self, db: Database, own_log: FederationLog, peers: Peers, settings: FederationSection,
                 public_url: str | None = None) -> None:
        self.db = db
        self.own = own_log
        self.public_url = public_url  # where peers reach this node (sent when it asks to follow them)
        self._wakes: dict[int, asyncio.Event] = {}
        self._introduced: set[tuple[int, str]] = set()  # (peer, the key this node introduced itself with)
        self.peers = peers
        self.settings = settings
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._http: aiohttp.ClientSession | None = None
        self.applied = asyncio.Condition()  # notified after each applied batch (tests and the bench wait on it)
        # Called as callback(origin, model_ids) after a batch that touched these models is committed
        # (the mirroring policy drops copies of files that are gone); must not block.
        self.on_applied: list[Callable[[str, set[int]], None]] = []

    async def open(self) -> None:
        """Open the HTTP client the pullers share (run() does it; a bench or a test may call
        catch_up() directly between open() and close())."""
        if self._http is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.settings.poll_seconds + 15)
            self._http = aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": f"atrium-node/{__version__}"})

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def run(self) -> None:
        """Keep one puller per active peer until cancelled (peers added by the CLI are picked up)."""
        await self.open()
        try:
            while True:
                active = {p.id: p for p in await self.peers.active()}
                for peer_id, task in list(self._tasks.items()):
                    if peer_id not in active or task.done():
                        task.cancel()
                        del self._tasks[peer_id]
                for peer_id in active:
                    if peer_id not in self._tasks:
                        self._tasks[peer_id] = asyncio.create_task(self._pull(peer_id), name=f"atrium-peer-{peer_id}")  # type: ignore[arg-type]
                await asyncio.sleep(REFRESH_SECONDS)
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            self._tasks.clear()
            await self.close()

    async def _pull(self, peer_id: int) -> None:
        failures = 0
        while True:
            peer = await self._peer(peer_id)
            if peer is None or peer.state != "active":
                return
            try:
                await self.sync_once(peer)
                failures = 0
            except LogRejected as exc:
                if exc.kind in HALTING:
                    await self._halt(peer, exc)
                    return
                failures += 1
                await self._failed(peer, f"refused: {exc.detail}", exc.evidence)
            except PeerError as exc:
                failures += 1
                await self._failed(peer, str(exc))
            if failures:
                pause = min(self.settings.retry_max_seconds, 2 ** (failures - 1))
                wake = self._wakes.setdefault(peer_id, asyncio.Event())
                wake.clear()
                with contextlib.suppress(TimeoutError):  # a push from the peer ends the pause early
                    async with asyncio.timeout(pause * random.uniform(0.8, 1.2)):
                        await wake.wait()

    async def wake(self, node_id: str) -> bool:
        """A followed node pushed "pull now": end its puller's pause. False when it is not followed."""
        for peer in await self.peers.active():
            if peer.node_id == node_id:
                self._wakes.setdefault(peer.id, asyncio.Event()).set()  # type: ignore[arg-type]
                return True
        return False

    async def sync_once(self, peer: Peer) -> None:
        """Catch up on every log the peer serves, then wait once for its next entry."""
        document = await self._json(f"{peer.url}/.well-known/atrium-node")
        node_id, name = document.get("id"), document.get("name")
        if not isinstance(node_id, str) or not isinstance(name, str):
            raise PeerError(f"{peer.url} answered a node document without id and name")
        if peer.node_id is not None and peer.node_id != node_id:
            raise LogRejected("identity", f"{peer.url} now says it is {node_id}, not {peer.node_id}",
                              {"expected": peer.node_id, "answered": node_id})
        if is_blocked(self.settings, node_id, peer.url):
            raise LogRejected("blocked", f"{node_id} at {peer.url} is on federation.blocked")
        if peer.node_id is None or peer.name != name:
            await self._update(peer.id, node_id=node_id, name=name)  # type: ignore[arg-type]
        await self.own.refresh_key()  # sign with the key this node's log names (a rotation may have run)
        introduced = (peer.id, self.own.identity.key_id)  # after a rotation, introduce the new key again
        if introduced not in self._introduced:
            await self._introduce(peer.url)
            self._introduced.add(introduced)  # type: ignore[arg-type]
        origins = await self._json(f"{peer.url}/federation/v1/origins")
        if not isinstance(origins, list):
            raise PeerError(f"{peer.url}: /federation/v1/origins is not a list")
        first = origins[0].get("origin") if origins and isinstance(origins[0], dict) else None
        if first != node_id:  # a node serves its own log first: one that does not is not who it says
            raise LogRejected("identity", f"{peer.url} says it is {node_id} but serves the log of {first} as its own",
                              {"document": node_id, "log": first})
        for item in origins:
            origin = item.get("origin") if isinstance(item, dict) else None
            if not isinstance(origin, str) or origin == self.own.node_id or is_blocked(self.settings, origin):
                continue
            await self.catch_up(peer.url, origin, own=origin == node_id)
        await self._update(peer.id, last_synced_at=utcnow(), last_error=None, failures=0)  # type: ignore[arg-type]
        # Wait on the peer's own log; while news keeps coming, apply it and wait again at once. An answer
        # without news (timeout, or another log it serves changed) ends the round: the next one
        # refreshes the peer's document and its relayed logs.
        cursor = await self.cursor(node_id, leaves=False)
        while True:
            status, entries, head = await self._entries(peer.url, node_id, cursor.seq, wait=self.settings.poll_seconds)
            self.peers.heads[peer.id] = head  # type: ignore[index]
            if not entries:
                return
            fields = check_batch(cursor, await self._screen(node_id, cursor, entries))
            await self.apply(node_id, entries, fields)
            await self._update(peer.id, last_synced_at=utcnow())  # type: ignore[arg-type]

    async def catch_up(self, base: str, origin: str, *, own: bool) -> int:
        """Fetch and apply everything after the cursor; the peer's own log is checked against its
        signed checkpoint in one go, a relayed log page by page, entry by entry. Returns how many."""
        cursor = await self.cursor(origin, leaves=own)
        applied = 0
        if own:
            note = await self._bytes(f"{base}/federation/v1/checkpoint")
            size = _checkpoint_size(note)
            batch: list[SignedEntry] = []
            after = cursor.seq
            while after < size:
                status, entries, _head = await self._entries(base, origin, after, limit=min(PAGE, size - after))
                if not entries:
                    break
                batch.extend(entries)
                after = parse_entry(entries[-1])["seq"]
            if batch:
                batch = await self._screen(origin, cursor, batch)
                fields = check_batch(cursor, batch, note if after == size else None)
                await self.apply(origin, batch, fields)
                applied += len(batch)
            return applied
        while True:
            status, entries, _head = await self._entries(base, origin, cursor.seq)
            if not entries:
                return applied
            entries = await self._screen(origin, cursor, entries)
            fields = check_batch(cursor, entries)
            await self.apply(origin, entries, fields)
            applied += len(entries)

    async def cursor(self, origin: str, *, leaves: bool) -> Cursor:
        async with self.db.read_session() as session:
            head = await session.get(LogHead, origin)
            cursor = Cursor(origin, head.seq if head else 0, head.entry_hash if head else "0" * 64,
                            key=head.key_id if head else None, retired=dict(head.retired_keys or {}) if head else {})
            if leaves and cursor.seq:
                rows = (await session.exec(select(LogEntry.leaf_hash).where(LogEntry.origin == origin)
                                           .order_by(col(LogEntry.seq)))).all()
                cursor.leaves = [bytes.fromhex(h) for h in rows]
        return cursor

    async def _screen(self, origin: str, cursor: Cursor, entries: list[SignedEntry]) -> list[SignedEntry]:
        """An entry at or below the cursor is either one we hold (replayed) or another history (fork)."""
        for entry in entries:
            seq = parse_entry(entry)["seq"]
            if seq > cursor.seq:
                continue
            async with self.db.read_session() as session:
                stored = await session.get(LogEntry, (origin, seq))
            evidence = {"entry": entry.data.decode("utf-8", "replace")}
            if stored is not None and bytes(stored.data) != entry.data:
                evidence["stored"] = bytes(stored.data).decode("utf-8", "replace")
                raise LogRejected("fork", f"{origin} signed two different entries {seq}", evidence)
            raise LogRejected("replayed", f"entry {seq} again; already at {cursor.seq}", evidence)
        return entries

    async def apply(self, origin: str, entries: list[SignedEntry], fields: list[dict[str, Any]]) -> None:
        """Store checked entries, move the origin's head, and update the mirrored index: one transaction."""
        if not entries:
            return
        now = utcnow()
        rows = [{"origin": origin, "seq": f["seq"], "data": e.data, "sig": e.sig,
                 "entry_hash": hashlib.sha256(e.data).hexdigest(), "leaf_hash": merkle.leaf_hash(e.data).hex(),
                 "kind": f["kind"][:32], "created_at": now} for e, f in zip(entries, fields, strict=True)]
        latest: dict[int, tuple[str, dict[str, Any], int]] = {}
        for f in fields:
            model = (f.get("body") or {}).get("model") if isinstance(f.get("body"), dict) else None
            if isinstance(model, dict) and isinstance(model.get("id"), int):
                latest[model["id"]] = (f["kind"], model, f["seq"])
        origin_name = _latest_text(fields, "nodeName")
        origin_url = _latest_text(fields, "nodeUrl")
        if origin_url is not None:
            try:
                origin_url = normalize_peer_url(origin_url)
            except InvalidInput:
                origin_url = None
        async with self.db.session() as session:
            await bulk_insert(session, LogEntry.__table__, rows)  # type: ignore[attr-defined]
            head = await session.get(LogHead, origin)
            if head is None:
                head = LogHead(origin=origin, seq=0, entry_hash="")
            head.seq, head.entry_hash = rows[-1]["seq"], rows[-1]["entry_hash"]
            rotations = [f for f in fields if f["kind"] == ROTATION_KIND]  # checked by verify.check_entry
            if rotations:
                retired = dict(head.retired_keys or {})
                for f in rotations:
                    retired[f["body"]["previousKey"]] = f["seq"]
                head.key_id, head.retired_keys = rotations[-1]["body"]["newKey"], retired
                log.warning("%s rotated its key: it signs with %s from entry %d on", origin, head.key_id,
                            rotations[-1]["seq"] + 1)
            session.add(head)
            if latest:  # the models these entries describe are replaced (or removed) below
                await bulk_delete(session, RemoteModel.__table__, ("origin", "remote_id"),  # type: ignore[attr-defined]
                                  [(origin, remote_id) for remote_id in latest])
            present = [_remote_model(origin, origin_name, origin_url, remote_id, model, seq)
                       for remote_id, (kind, model, seq) in latest.items()
                       if kind not in REMOVING_KINDS and model.get("status") == "Published"]
            if present:
                await bulk_insert(session, RemoteModel.__table__, present)  # type: ignore[attr-defined]
            if latest:
                await bulk_delete(session, RemoteFile.__table__, ("origin", "model_id"),  # type: ignore[attr-defined]
                                  [(origin, remote_id) for remote_id in latest])
            files = [row for model in present for row in remote_file_rows(origin, model["remote_id"], model["versions"])]
            if files:
                await bulk_insert(session, RemoteFile.__table__, files)  # type: ignore[attr-defined]
            # Labels: those this batch carries, and trusted ones on the models it (re)describes.
            labelled = await store_labels(session, origin, fields)
            trusted = {self.own.node_id, *self.settings.trusted_labelers}
            await apply_labels(session, trusted, [(origin, m["remote_id"]) for m in present]
                               + (labelled if origin in trusted else []))
            await session.commit()
        log.info("applied %d entries of %s (now at %d)", len(rows), origin, rows[-1]["seq"])
        for callback in self.on_applied:
            try:
                callback(origin, set(latest))
            except Exception:  # a listener's bug must not undo or stop syncing
                log.exception("a listener of applied entries failed")
        self.own.notify_changed()  # our followers may be waiting for what we relay
        async with self.applied:
            self.applied.notify_all()

    # -- HTTP -------------------------------------------------------------------------------------

    async def _introduce(self, base: str) -> None:
        """Ask to be recorded as a follower (signed), so the peer pushes to us and, under an `approved`
        policy, lets us read once an admin agrees. Failing is not fatal: the long-poll still works."""
        if not self.public_url or self._http is None:
            return
        body = json.dumps({"url": self.public_url}).encode()
        path = urlsplit(base).path.rstrip("/") + "/federation/v1/followers"
        headers = {"Content-Type": "application/json", **sign_request(self.own.identity, "POST", path, "", body)}
        try:
            async with self._http.post(f"{base}/federation/v1/followers", data=body, headers=headers) as response:
                if response.status >= 300:
                    log.info("%s did not record this node as a follower: HTTP %d %s", base, response.status,
                             (await response.text())[:300])
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.info("could not introduce this node to %s: %s", base, exc)

    async def _get(self, url: str, **params: Any) -> tuple[int, bytes, Any]:
        """GET, signed with this node's key (RFC 9421) so peers with an `approved` policy know us."""
        assert self._http is not None
        query = urlencode(params) if params else ""
        headers = sign_request(self.own.identity, "GET", urlsplit(url).path, query)
        target = yarl.URL(f"{url}?{query}" if query else url, encoded=True)
        try:
            async with self._http.get(target, headers=headers) as response:
                chunks, size = [], 0
                async for chunk in response.content.iter_chunked(1024 * 1024):
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES:
                        raise PeerError(f"{url}: answer larger than {MAX_ANSWER_BYTES // (1024 * 1024)} MiB")
                    chunks.append(chunk)
                return response.status, b"".join(chunks), response.headers
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise PeerError(f"{url}: {type(exc).__name__}: {exc}") from None

    async def _json(self, url: str) -> Any:
        status, body, _ = await self._get(url)
        if status != 200:
            raise PeerError(f"{url}: HTTP {status}")
        try:
            return json.loads(body)
        except ValueError:
            raise PeerError(f"{url}: not JSON") from None

    async def _bytes(self, url: str) -> bytes:
        status, body, _ = await self._get(url)
        if status != 200:
            raise PeerError(f"{url}: HTTP {status}")
        return body

    async def _entries(self, base: str, origin: str, after: int, *, limit: int = PAGE,
                       wait: float = 0) -> tuple[int, list[SignedEntry], int]:
        params: dict[str, Any] = {"origin": origin, "after": after, "limit": limit}
        if wait:
            params["wait"] = wait
        status, body, headers = await self._get(f"{base}/federation/v1/log", **params)
        if status not in (200, 202):
            raise PeerError(f"{base}/federation/v1/log: HTTP {status}")
        try:
            head = int(headers.get("Atrium-Log-Head", "0"))
        except ValueError:
            raise PeerError(f"{base}: bad Atrium-Log-Head header") from None
        entries = [SignedEntry.from_line(line) for line in body.splitlines() if line.strip()] if status == 200 else []
        return status, entries, head

    # -- peer state -------------------------------------------------------------------------------

    async def _peer(self, peer_id: int) -> Peer | None:
        async with self.db.read_session() as session:
            return await session.get(Peer, peer_id)

    async def _update(self, peer_id: int, **values: Any) -> None:
        async with self.db.session() as session:
            peer = await session.get(Peer, peer_id)
            if peer is None:
                return
            for name, value in values.items():
                setattr(peer, name, value)
            session.add(peer)
            await session.commit()

    async def _failed(self, peer: Peer, message: str, evidence: dict[str, Any] | None = None) -> None:
        log.warning("peer %s: %s", peer.url, message)
        await self._update(peer.id, last_error=message[:2000], failures=peer.failures + 1,  # type: ignore[arg-type]
                           **({"evidence": evidence} if evidence else {}))

    async def _halt(self, peer: Peer, exc: LogRejected) -> None:
        log.error("peer %s halted: %s (evidence kept; `atrium peers` shows it, `atrium peers resume` restarts)",
                  peer.url, exc.detail)
        await self._update(peer.id, state="halted", last_error=exc.detail[:2000],  # type: ignore[arg-type]
                           evidence={"kind": exc.kind, **exc.evidence})

    async def wait_applied(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                async with self.applied:
                    await self.applied.wait()


async def bulk_insert(session: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    """Insert many rows inside the session's transaction through the driver's own executemany: a
    follower catching up on a long log spends its time checking entries, not building statements.
    Values are converted as the table's column types would (JSON text, UTC timestamps)."""
    columns = list(rows[0])
    conn = await session.connection()
    raw = (await conn.get_raw_connection()).driver_connection
    sqlite = conn.dialect.name == "sqlite"
    stamps: dict[Any, Any] = {}  # a batch shares its timestamps: convert each once

    def stamp(v: Any) -> Any:
        if v is None or not sqlite:
            return v
        if v not in stamps:
            stamps[v] = v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return stamps[v]

    def as_json(v: Any) -> Any:
        return None if v is None else orjson.dumps(v).decode()

    converters = [as_json if type(table.c[name].type) is sa.JSON else stamp
                  if type(table.c[name].type) is UTCDateTime else None for name in columns]
    marks = ", ".join("?" if sqlite else f"${i}" for i in range(1, len(columns) + 1))
    names = ", ".join(f'"{name}"' for name in columns)
    sql = f"INSERT INTO {table.name} ({names}) VALUES ({marks})"
    converted = [(i, c) for i, c in enumerate(converters) if c is not None]
    values = []
    for row in rows:
        cells = [row[c] for c in columns]
        for i, convert in converted:
            cells[i] = convert(cells[i])
        values.append(tuple(cells))
    await raw.executemany(sql, values)


async def bulk_delete(session: Any, table: Any, key: tuple[str, ...], values: list[tuple[Any, ...]]) -> None:
    """Delete rows by key through the driver's executemany (see bulk_insert)."""
    conn = await session.connection()
    raw = (await conn.get_raw_connection()).driver_connection
    sqlite = conn.dialect.name == "sqlite"
    where = " AND ".join(f'"{name}" = {"?" if sqlite else f"${i}"}' for i, name in enumerate(key, 1))
    await raw.executemany(f"DELETE FROM {table.name} WHERE {where}", values)


def _checkpoint_size(note: bytes) -> int:
    try:
        return int(note.split(b"\n", 2)[1])
    except (IndexError, ValueError):
        raise LogRejected("tampered", "not a checkpoint") from None


def _latest_text(fields: list[dict[str, Any]], key: str) -> str | None:
    """The newest string value of `body[key]` in a batch (the origin's name or URL as it now says)."""
    for f in reversed(fields):
        body = f.get("body")
        if isinstance(body, dict) and isinstance(body.get(key), str):
            return body[key]
    return None


def _remote_model(origin: str, origin_name: str | None, origin_url: str | None, remote_id: int,
                  model: dict[str, Any], seq: int) -> dict[str, Any]:
    """A row of the mirrored index from a model as an entry describes it (fields checked and clipped)."""
    def text(key: str, limit: int) -> str:
        value = model.get(key)
        return value[:limit] if isinstance(value, str) else ""

    versions = model.get("versions") if isinstance(model.get("versions"), list) else []
    air = next((v.get("air") for v in versions if isinstance(v, dict) and isinstance(v.get("air"), str)), "")
    name_from_air = air.split(":")[4] if air.count(":") >= 5 else origin[:16]
    level = model.get("nsfwLevel")
    return {"origin": origin, "remote_id": remote_id, "origin_name": (origin_name or name_from_air)[:64],
            "origin_url": origin_url,
            "name": text("name", 255) or f"model {remote_id}", "type": text("type", 32) or "Other",
            "description": text("description", 100_000),
            "nsfw_level": level if isinstance(level, int) and not isinstance(level, bool) else 1,
            "mode": text("mode", 16) or None, "creator": text("creator", 64) or None,
            "tags": [t for t in model.get("tags") or [] if isinstance(t, str)][:30],
            "versions": [v for v in versions if isinstance(v, dict)], "seq": seq, "updated_at": utcnow()}


def remote_file_rows(origin: str, model_id: int, versions: list[Any]) -> list[dict[str, Any]]:
    """Rows of `remote_files` for the files of a remote model's published versions (malformed ones skipped)."""
    rows = []
    for version in versions:
        if not isinstance(version, dict) or not isinstance(version.get("id"), int):
            continue
        for f in version.get("files") or []:
            if not (isinstance(f, dict) and isinstance(f.get("id"), int) and isinstance(f.get("sha256"), str)):
                continue
            rows.append({"origin": origin, "file_id": f["id"], "model_id": model_id, "version_id": version["id"],
                         "version_name": str(version.get("name") or "")[:255],
                         "base_model": str(version.get("baseModel") or "")[:64],
                         "air": str(version.get("air") or "")[:512], "name": str(f.get("name") or "")[:255],
                         "size": f["size"] if isinstance(f.get("size"), int) else 0,
                         "sha256": f["sha256"].lower()[:64], "primary": bool(f.get("primary"))})
    return rows


__all__ = ["PeerError", "Syncer", "remote_file_rows"]
