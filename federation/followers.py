"""Nodes that follow this one, the policy that admits them, and the pushes that tell them to pull.

A follower introduces itself with a signed `POST /federation/v1/followers` naming its URL; this node
checks that the URL really serves that node id, then records it as `approved` (policy `anyone`) or
`pending` (policy `approved`, until an admin approves). After each new entry of its log the node
POSTs `{"origin", "head"}` to every approved follower's `/federation/v1/inbox`, signed (RFC 9421), so
followers that are not waiting on a long-poll pull at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from urllib.parse import urlsplit

import aiohttp
from sqlmodel import col, select

from federation.httpsig import sign_request
from federation.log import FederationLog
from federation.peers import is_blocked, normalize_peer_url
from node import __version__
from node.core.config import FederationSection
from node.core.db import Database
from node.core.errors import Forbidden, InvalidInput, NotFound
from node.core.identity import NodeIdentity
from node.core.tables import Follower, LogHead, utcnow

log = logging.getLogger(__name__)

FOLLOWER_STATES = ("approved", "pending", "blocked")
PUSH_TIMEOUT = 10.0


class Followers:
    """Who follows this node, and pushing to them."""

    def __init__(self, db: Database, identity: NodeIdentity, settings: FederationSection,
                 log: FederationLog | None = None) -> None:
        self.db = db
        self.identity = identity
        self.settings = settings
        self.log = log  # blocking a follower, and lifting a block, are entries of this node's log
        self._pushing: dict[int, asyncio.Task[None]] = {}
        self._again: set[int] = set()
        self._http: aiohttp.ClientSession | None = None
        self.latest = 0  # the newest head to announce

    async def register(self, node_id: str, url: str, served_id: str | None, key_id: str | None = None) -> Follower:
        """Record a node that asked to follow (its signature already checked; `served_id` is the id its
        URL answered with, `key_id` its current key when it rotated its key)."""
        url = normalize_peer_url(url)
        if is_blocked(self.settings, node_id, url):
            raise Forbidden("this node does not accept followers from that node or domain")
        if served_id != node_id:
            raise Forbidden(f"{url} does not serve node {node_id} (it answered {served_id!r})")
        async with self.db.session() as session:
            row = (await session.exec(select(Follower).where(Follower.node_id == node_id))).first()
            if row is None:
                row = Follower(node_id=node_id, url=url,
                               state="approved" if self.settings.followers == "anyone" else "pending")
            elif row.state == "blocked":
                raise Forbidden("this node blocked you as a follower")
            row.url = url
            row.key_id = key_id if key_id != node_id else None
            session.add(row)
            await session.commit()
            await session.refresh(row)
        log.info("node %s (%s) follows this node: %s", node_id, url, row.state)
        return row

    async def current_keys(self, node_id: str) -> dict[str, str]:
        """{node id: its current key} when this node knows that node rotated its key: from its log (a
        followed or relayed origin) or from its node document (a follower); empty otherwise."""
        async with self.db.read_session() as session:
            head = await session.get(LogHead, node_id)
            if head is not None and head.key_id:
                return {node_id: head.key_id}
            row = (await session.exec(select(Follower).where(Follower.node_id == node_id))).first()
        return {node_id: row.key_id} if row is not None and row.key_id else {}

    async def may_read(self, node_id: str | None) -> bool:
        """Whether a request signed by `node_id` (None: unsigned) may read the log under the policy."""
        if node_id is not None and is_blocked(self.settings, node_id):
            return False
        if self.settings.followers == "anyone":
            return True
        if node_id is None:
            return False
        async with self.db.read_session() as session:
            row = (await session.exec(select(Follower).where(Follower.node_id == node_id))).first()
        return row is not None and row.state == "approved"

    async def list(self) -> list[Follower]:
        async with self.db.read_session() as session:
            return list((await session.exec(select(Follower).order_by(col(Follower.id)))).all())

    async def set_state(self, follower_id: int, state: str) -> Follower:
        if state not in FOLLOWER_STATES:
            raise InvalidInput(f"state: one of {', '.join(FOLLOWER_STATES)}")
        async with self.db.session() as session:
            row = await session.get(Follower, follower_id)
            if row is None:
                raise NotFound(f"no follower {follower_id}")
            was = row.state
            row.state = state
            session.add(row)
            if self.log is not None and (state == "blocked") != (was == "blocked"):
                # In the change's own transaction, like every catalog change.
                await self.log.append(session, "peer.blocked" if state == "blocked" else "peer.unblocked",
                                      {"nodeId": row.node_id, "nodeName": self.log.node_name,
                                       "nodeUrl": self.log.node_url})
            await session.commit()
            await session.refresh(row)
        return row

    # -- pushing ----------------------------------------------------------------------------------

    def push_soon(self, head: int) -> None:
        """Tell every approved follower that the log reached `head` (in the background, one push in
        flight per follower; a newer head while one is in flight sends once more after it)."""
        self.latest = max(self.latest, head)
        asyncio.ensure_future(self._push_all())

    async def _push_all(self) -> None:
        with contextlib.suppress(Exception):
            for follower in await self.list():
                if follower.state != "approved" or follower.id is None:
                    continue
                if follower.id in self._pushing and not self._pushing[follower.id].done():
                    self._again.add(follower.id)
                    continue
                self._pushing[follower.id] = asyncio.ensure_future(self._push(follower))

    async def _push(self, follower: Follower) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PUSH_TIMEOUT),
                                               headers={"User-Agent": f"atrium-node/{__version__}"})
        body = json.dumps({"origin": self.identity.node_id, "head": self.latest}).encode()
        path = urlsplit(follower.url).path.rstrip("/") + "/federation/v1/inbox"
        headers = {"Content-Type": "application/json", **sign_request(self.identity, "POST", path, "", body)}
        error = None
        try:
            async with self._http.post(f"{follower.url}/federation/v1/inbox", data=body, headers=headers) as response:
                if response.status >= 300:
                    error = f"HTTP {response.status}: {(await response.text())[:300]}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        async with self.db.session() as session:
            row = await session.get(Follower, follower.id)
            if row is not None:
                row.last_push_at, row.last_error = utcnow(), error
                session.add(row)
                await session.commit()
        if error:
            log.info("push to follower %s failed: %s", follower.url, error)
        if follower.id in self._again:
            self._again.discard(follower.id)  # type: ignore[arg-type]
            await self._push(follower)

    async def close(self) -> None:
        for task in self._pushing.values():
            task.cancel()
        await asyncio.gather(*self._pushing.values(), return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None


__all__ = ["FOLLOWER_STATES", "Followers"]
