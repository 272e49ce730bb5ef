"""The mirroring policy: which followed nodes' files this node keeps copies of, and keeping them.

Like PeerTube's redundancy: by `[federation.mirror]`, the node picks files of published versions from
the mirrored index (`remote_files` beside `remote_models`, filled from the origins' signed logs),
within a byte budget, fetches each through its swarm (the origin's own torrent: its web seed and
tracker, and every peer already seeding it), checks it against the origin's signed manifest (the
signature must be the origin node's key, and the manifest must list the very SHA-256 and size the
origin's log gives), and only then moves it into the blob store and seeds it under the same info-hash
as the origin, so the origin's swarm gains a seeder.

Evaluation runs every `interval_seconds`, soon after a sync applies new entries, and when an admin
asks. A copy is kept at least `min_lifetime_hours` even when a better candidate would take its place;
a copy whose file the origin removed (deleted, unpublished, taken down) or whose origin is now blocked
is removed at once: its seeding stops and its blob is deleted unless a local file or another mirrored
record still uses the same bytes.

"most-downloaded" ranks by the origin's own download counts, read from its public Civitai-compatible
API (`GET /api/v1/models?sort=Most Downloaded`). Those counts are not signed; they only order the
candidates, and the bytes are verified against the signed manifest whatever the ranking said.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlmodel import col, select

from federation.peers import is_blocked
from node.client import NodeClient
from node.core.blobs import BlobStore
from node.core.config import FederationSection, MirrorSection
from node.core.db import Database
from node.core.errors import AtriumError, NotFound
from node.core.manifests import ManifestError
from node.core.swarm import Swarm
from node.core.tables import MirroredFile, ModelFile, RemoteFile, RemoteModel, utcnow
from node.core.torrents import TorrentMeta
from node.sources import torrent_of, verified_manifest

log = logging.getLogger("atrium.mirroring")

# After a sync wakes the policy, wait this long for more batches before evaluating (one run per burst).
SETTLE_SECONDS = 1.0
# Evaluations woken by syncs start at least this long apart.
MIN_GAP_SECONDS = 5.0
# A failed fetch waits interval x 2^(failures - 1) before the next try, at most this long.
MAX_RETRY_SECONDS = 24 * 3600
# "most-downloaded" reads at most this many pages of 100 models of each origin's ranking.
STATS_PAGES = 10
STATS_PAGE_SIZE = 100
ERROR_CHARS = 2000
# Rows of the mirrored index handled between two turns of the event loop.
CHUNK_ROWS = 500


class Candidate(NamedTuple):
    """A followed node's file the policy may mirror, with what the strategies rank it by. A tuple of plain
    values: a large index makes many of them, and the garbage collector then has nothing to walk."""

    origin: str
    file_id: int
    version_id: int
    model_id: int
    name: str
    sha256: str
    size: int
    origin_name: str = ""
    origin_url: str | None = None
    tags: tuple[str, ...] = ()
    published_at: datetime | None = None
    downloads: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return self.origin, self.file_id


class Held(NamedTuple):
    """A copy this node holds (or is fetching): what eviction weighs."""

    origin: str
    file_id: int
    sha256: str
    size: int
    mirrored_at: datetime | None  # None while it is being fetched

    @property
    def key(self) -> tuple[str, int]:
        return self.origin, self.file_id


@dataclass
class Plan:
    """What one evaluation decided: copies to keep, files to fetch (best first), copies to remove."""

    keep: list[tuple[str, int]] = field(default_factory=list)
    fetch: list[Candidate] = field(default_factory=list)
    evict: list[tuple[str, int]] = field(default_factory=list)
    used: int = 0  # bytes of the copies kept and fetched, each set of bytes counted once


def _newest_first(c: Candidate) -> tuple[float, int]:
    return (-(c.published_at.timestamp() if c.published_at else 0.0), -c.version_id)


def rank(candidates: Iterable[Candidate], settings: MirrorSection) -> list[Candidate]:
    """The candidates the strategy wants, best first: `all` and `tags` newest first, `recent` by the
    version's publishedAt (newest first), `most-downloaded` by the origin's download count (ties: newest)."""
    if settings.strategy == "none":
        return []
    wanted = list(candidates)
    if settings.origins:
        names = {o.lower() for o in settings.origins}
        wanted = [c for c in wanted if c.origin.lower() in names or c.origin_name.lower() in names]
    if settings.strategy == "tags":
        tags = {t.lower() for t in settings.tags}
        wanted = [c for c in wanted if tags & {t.lower() for t in c.tags}]
    if settings.strategy == "most-downloaded":
        return sorted(wanted, key=lambda c: (-c.downloads, *_newest_first(c)))
    return sorted(wanted, key=_newest_first)


def choose(candidates: Sequence[Candidate], held: Sequence[Held], settings: MirrorSection, now: datetime) -> Plan:
    """Decide what to keep, fetch and remove.

    Copies younger than `min_lifetime_hours` (and copies being fetched) of files still listed stay and
    count against the budget first; then candidates fill the rest of the budget in rank order (one that
    does not fit is passed over for smaller ones after it). Bytes held for one file cost nothing more
    for another file with the same SHA-256. Copies of files no longer listed are always removed.
    """
    listed = {c.key for c in candidates}
    lifetime = timedelta(hours=settings.min_lifetime_hours)
    budget = settings.budget
    chosen: set[tuple[str, int]] = set()
    shas: set[str] = set()
    used = 0
    for h in held:
        if h.key in listed and (h.mirrored_at is None or now - h.mirrored_at < lifetime):
            chosen.add(h.key)
            if h.sha256 not in shas:
                shas.add(h.sha256)
                used += h.size
    ranked = rank(candidates, settings)
    for c in ranked:
        if c.key in chosen:
            continue
        if c.sha256 in shas:
            chosen.add(c.key)
        elif budget == 0 or used + c.size <= budget:
            chosen.add(c.key)
            shas.add(c.sha256)
            used += c.size
    held_keys = {h.key for h in held}
    order = {c.key: i for i, c in enumerate(ranked)}
    fetch = sorted((c for c in candidates if c.key in chosen and c.key not in held_keys),
                   key=lambda c: order.get(c.key, len(order)))
    return Plan(keep=[h.key for h in held if h.key in chosen], fetch=fetch,
                evict=[h.key for h in held if h.key not in chosen], used=used)


def parse_published(text: Any) -> datetime | None:
    """A log's `publishedAt` (ISO 8601, `Z` for UTC) as a datetime; None when absent or malformed."""
    if not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


class Mirroring:
    """Runs the mirroring policy while the node serves (see the module docstring)."""

    def __init__(self, db: Database, blobs: BlobStore, swarm: Swarm, settings: MirrorSection,
                 federation: FederationSection) -> None:
        self.db = db
        self.blobs = blobs
        self.swarm = swarm
        self.settings = settings
        self.federation = federation
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one evaluation at a time
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self._fetching: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._chores: set[asyncio.Task[Any]] = set()
        self._stats: dict[str, tuple[float, dict[int, int]]] = {}  # origin -> (when read, version -> downloads)
        self.last_run: dict[str, Any] | None = None
        self.last_run_at: datetime | None = None
        self._last_evaluation = 0.0  # time.monotonic() of the last evaluation's end

    # -- running -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Evaluate now, then every `interval_seconds` and soon after each sync, until cancelled."""
        try:
            while True:
                try:
                    await self.evaluate()
                except Exception:  # a failed round must not stop the next one
                    log.exception("mirroring: evaluating the policy failed")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.interval_seconds):
                        await self._wake.wait()
                if self._wake.is_set():
                    # Let a burst of batches land first, and keep a busy origin from re-running it back to back.
                    since = time.monotonic() - self._last_evaluation
                    await asyncio.sleep(max(SETTLE_SECONDS, MIN_GAP_SECONDS - since))
                self._wake.clear()
        finally:
            await self.close()

    async def close(self) -> None:
        """Cancel fetches in flight and pending removals (a cancelled fetch leaves nothing in the store)."""
        tasks = [*self._fetching.values(), *self._chores]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fetching.clear()
        self._chores.clear()

    def wake(self) -> None:
        """Evaluate soon (a sync brought news)."""
        self._wake.set()

    def on_applied(self, origin: str, model_ids: set[int]) -> None:
        """Syncer listener: copies of files these entries removed go at once; the policy runs soon."""
        if model_ids:
            task = asyncio.ensure_future(self.drop_unlisted(origin, model_ids))
            self._chores.add(task)
            task.add_done_callback(self._chores.discard)
        self.wake()

    # -- evaluating --------------------------------------------------------------------------------

    async def evaluate(self, *, wait: bool = False) -> dict[str, Any]:
        """Choose, remove what is no longer chosen, and start fetching what is missing. With `wait`, also
        wait for those fetches. Returns what was decided (the admin API shows it)."""
        async with self._lock:
            now = utcnow()
            rows = await self._rows()
            # The default (no policy, nothing held) costs no scan of the mirrored index.
            candidates = await self._candidates() if rows or self.settings.strategy != "none" else []
            origins = {(c.origin, c.origin_url) for c in candidates}
            blocked_origins = {o for o, u in origins if is_blocked(self.federation, o, u)}
            candidates = [c for c in candidates if c.origin not in blocked_origins]
            if self.settings.strategy == "most-downloaded":
                candidates = await self._with_downloads(candidates)
            held, backing_off = [], set()
            for row in rows:
                key = (row.origin, row.file_id)
                if key in self._fetching:
                    held.append(Held(row.origin, row.file_id, row.sha256, row.size, None))
                elif row.state == "stored" and await asyncio.to_thread(self.blobs.exists, row.sha256):
                    held.append(Held(row.origin, row.file_id, row.sha256, row.size, row.mirrored_at))
                elif row.state == "failed" and row.retry_at is not None and row.retry_at > now:
                    backing_off.add(key)
            # Ranking a large index takes a while: off the event loop.
            plan = await asyncio.to_thread(choose, [c for c in candidates if c.key not in backing_off], held,
                                           self.settings, now)
            listed = {c.key for c in candidates}
            for key in plan.evict:
                await self.evict(key, "no longer listed by its origin" if key not in listed else "not chosen by the policy")
            # Rows of files that are neither held nor wanted (failed, or fetching in a previous run) go too.
            wanted = {c.key for c in plan.fetch} | set(plan.keep)
            stale = [(r.origin, r.file_id) for r in rows if (r.origin, r.file_id) not in wanted
                     and (r.origin, r.file_id) not in plan.evict
                     and ((r.origin, r.file_id) not in backing_off or (r.origin, r.file_id) not in listed)]
            for key in stale:
                await self.evict(key, "no longer wanted")
            started = []
            if plan.fetch and not self.swarm.running:
                log.warning("mirroring: %d files to fetch, but the swarm is not running (swarm.enabled)",
                            len(plan.fetch))
            elif plan.fetch:
                for candidate in plan.fetch:
                    if candidate.key not in self._fetching:
                        started.append(candidate)
                        self._start_fetch(candidate)
            self.last_run_at = now
            self.last_run = {"at": _iso(now), "candidates": len(candidates), "kept": len(plan.keep),
                             "fetching": [{"origin": c.origin, "fileId": c.file_id, "name": c.name} for c in started],
                             "evicted": [{"origin": o, "fileId": f} for o, f in plan.evict],
                             "used": plan.used, "swarmRunning": self.swarm.running}
            tasks = [self._fetching[c.key] for c in started if c.key in self._fetching]
            self._last_evaluation = time.monotonic()
        if wait and tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return dict(self.last_run)

    async def _rows(self) -> list[MirroredFile]:
        async with self.db.read_session() as session:
            return list((await session.exec(select(MirroredFile).order_by(
                col(MirroredFile.origin), col(MirroredFile.file_id)))).all())

    async def _candidates(self) -> list[Candidate]:
        """Every file of every published version of followed nodes' models, with what ranks it. Rows are
        read in chunks, so a large index never holds the event loop for long; each model's tags and
        versions are read once, not once per file."""
        models: dict[tuple[str, int], tuple[str, str | None, tuple[str, ...]]] = {}
        published: dict[tuple[str, int], datetime | None] = {}
        out: list[Candidate] = []
        async with self.db.read_session() as session:
            result = await session.stream(select(RemoteModel.origin, RemoteModel.remote_id, RemoteModel.origin_name,
                                                 RemoteModel.origin_url, RemoteModel.tags, RemoteModel.versions))
            async for chunk in result.partitions(CHUNK_ROWS):
                for origin, model_id, origin_name, origin_url, tags, versions in chunk:
                    models[(origin, model_id)] = (origin_name, origin_url,
                                                  tuple(t for t in tags or [] if isinstance(t, str)))
                    for v in versions or []:
                        if isinstance(v, dict) and isinstance(v.get("id"), int):
                            published[(origin, v["id"])] = parse_published(v.get("publishedAt"))
                await asyncio.sleep(0)
            result = await session.stream(select(RemoteFile.origin, RemoteFile.file_id, RemoteFile.version_id,
                                                 RemoteFile.model_id, RemoteFile.name, RemoteFile.sha256,
                                                 RemoteFile.size))
            async for chunk in result.partitions(CHUNK_ROWS):
                for origin, file_id, version_id, model_id, name, sha256, size in chunk:
                    model = models.get((origin, model_id))
                    if model is None or not model[1] or size <= 0:
                        continue
                    out.append(Candidate(origin=origin, file_id=file_id, version_id=version_id, model_id=model_id,
                                         name=name, sha256=sha256, size=size, origin_name=model[0],
                                         origin_url=model[1], tags=model[2],
                                         published_at=published.get((origin, version_id))))
                await asyncio.sleep(0)
        return out

    async def _with_downloads(self, candidates: list[Candidate]) -> list[Candidate]:
        counts: dict[str, dict[int, int]] = {}
        for origin, url in {(c.origin, c.origin_url) for c in candidates}:
            counts[origin] = await self._download_counts(origin, url or "")
        return [c._replace(downloads=counts.get(c.origin, {}).get(c.version_id, 0)) for c in candidates]

    async def _download_counts(self, origin: str, url: str) -> dict[int, int]:
        """Download counts of an origin's versions from its public API (kept for one interval); an origin
        that does not answer ranks by recency meanwhile."""
        cached = self._stats.get(origin)
        if cached is not None and time.monotonic() - cached[0] < self.settings.interval_seconds:
            return cached[1]
        counts: dict[int, int] = {}
        try:
            async with NodeClient(url) as client:
                cursor = None
                for _ in range(STATS_PAGES):
                    params: dict[str, Any] = {"sort": "Most Downloaded", "limit": STATS_PAGE_SIZE, "followed": "false"}
                    if cursor:
                        params["cursor"] = cursor
                    page = await client.get("/api/v1/models", **params)
                    for model in page.get("items") or []:
                        for version in model.get("modelVersions") or []:
                            downloads = (version.get("stats") or {}).get("downloadCount")
                            if isinstance(version.get("id"), int) and isinstance(downloads, int):
                                counts[version["id"]] = downloads
                    cursor = (page.get("metadata") or {}).get("nextCursor")
                    if not cursor:
                        break
        except (AtriumError, AttributeError, TypeError) as exc:
            log.info("mirroring: no download counts from %s (%s); ranking its files by recency", url,
                     getattr(exc, "detail", exc))
        self._stats[origin] = (time.monotonic(), counts)
        return counts

    # -- fetching ----------------------------------------------------------------------------------

    def _start_fetch(self, candidate: Candidate) -> None:
        task = asyncio.ensure_future(self._fetch(candidate))
        self._fetching[candidate.key] = task
        task.add_done_callback(lambda _t, key=candidate.key: self._fetching.pop(key, None))

    async def _fetch(self, c: Candidate) -> None:
        await self._record(c, state="fetching")
        async with self._slots:
            try:
                info_hash = await self._fetch_verified(c)
            except AtriumError as exc:
                await self._failed(c, exc.detail)
                return
            except Exception as exc:  # an unexpected failure is recorded, never left as "fetching"
                log.exception("mirroring: fetching %s failed", c.name)
                await self._failed(c, f"{type(exc).__name__}: {exc}")
                return
        if not await self._still_listed(c.key):  # removed at the origin while it was on its way
            await self._record(c, state="stored", info_hash_v2=info_hash, mirrored_at=utcnow())
            await self.evict(c.key, "removed by its origin during the fetch")
            return
        await self._record(c, state="stored", info_hash_v2=info_hash, mirrored_at=utcnow(), failures=0,
                           last_error=None, retry_at=None)
        log.info("mirroring: %s of %s is mirrored, verified and seeded", c.name, c.origin_name or c.origin,
                 extra={"event": "mirrored", "origin": c.origin, "file_id": c.file_id, "sha256": c.sha256})

    async def _fetch_verified(self, c: Candidate) -> str:
        """Fetch one file through the swarm, checked against the origin's signed manifest; its v2 info-hash."""
        assert c.origin_url is not None
        async with NodeClient(c.origin_url) as client:
            # Signed by the origin's key, and the URL must answer as that node: a relay cannot substitute.
            manifest = await verified_manifest(client, c.version_id, key=c.origin)
            entry = manifest.by_sha256(c.sha256)
            if entry is None:
                raise ManifestError(f"{c.name}: the signed manifest of version {c.version_id} does not list the "
                                    f"SHA-256 {c.sha256} that the origin's log gives")
            if entry.size != c.size:
                raise ManifestError(f"{c.name}: the signed manifest says {entry.size} bytes, the origin's log "
                                    f"{c.size}")
            torrent = await torrent_of(client, c.file_id)
        await self.swarm.fetch(entry, torrent)
        return TorrentMeta.from_bytes(torrent).info_hash_v2

    async def _failed(self, c: Candidate, detail: str) -> None:
        async with self.db.read_session() as session:
            row = await session.get(MirroredFile, c.key)
        failures = (row.failures if row else 0) + 1
        pause = min(MAX_RETRY_SECONDS, self.settings.interval_seconds * 2 ** (failures - 1))
        await self._record(c, state="failed", failures=failures, last_error=detail[:ERROR_CHARS],
                           retry_at=utcnow() + timedelta(seconds=pause))
        log.warning("mirroring: %s of %s was not mirrored (try %d; next in %d s): %s", c.name,
                    c.origin_name or c.origin, failures, pause, detail,
                    extra={"event": "mirror_failed", "origin": c.origin, "file_id": c.file_id})

    async def _record(self, c: Candidate, **values: Any) -> None:
        async with self.db.session() as session:
            row = await session.get(MirroredFile, c.key)
            if row is None:
                row = MirroredFile(origin=c.origin, file_id=c.file_id, version_id=c.version_id, model_id=c.model_id,
                                   name=c.name[:255], sha256=c.sha256, size=c.size)
            for name, value in values.items():
                setattr(row, name, value)
            session.add(row)
            await session.commit()

    async def _still_listed(self, key: tuple[str, int]) -> bool:
        async with self.db.read_session() as session:
            return await session.get(RemoteFile, key) is not None

    # -- removing ----------------------------------------------------------------------------------

    async def drop_unlisted(self, origin: str, model_ids: set[int]) -> int:
        """Remove at once the copies of these models' files that the origin no longer lists (a takedown,
        a delete, an unpublished version). Returns how many went."""
        async with self.db.read_session() as session:
            rows = (await session.exec(select(MirroredFile.file_id).where(
                MirroredFile.origin == origin, col(MirroredFile.model_id).in_(list(model_ids))))).all()
            listed = set((await session.exec(select(RemoteFile.file_id).where(
                RemoteFile.origin == origin, col(RemoteFile.file_id).in_(list(rows))))).all()) if rows else set()
        gone = [(origin, file_id) for file_id in rows if file_id not in listed]
        for key in gone:
            task = self._fetching.get(key)
            if task is not None:  # still on its way: the fetch evicts it when it lands
                continue
            await self.evict(key, "removed by its origin")
        return len(gone)

    async def evict(self, key: tuple[str, int], reason: str) -> None:
        """Remove a mirrored copy: its record, its seeding, and its blob unless other records use the bytes."""
        async with self.db.session() as session:
            row = await session.get(MirroredFile, key)
            if row is None:
                return
            # A takedown and an evaluation may remove the same copy at once: only one of them goes on.
            deleted = await session.exec(sa.delete(MirroredFile).where(  # type: ignore[call-overload]
                MirroredFile.origin == key[0], MirroredFile.file_id == key[1]))
            await session.commit()
        if deleted.rowcount == 0:
            return
        if row.info_hash_v2 and not await self._torrent_in_use(row.info_hash_v2):
            await self.swarm.unseed(row.info_hash_v2)
        if row.state == "stored" and not await self._in_use(row.sha256):
            await asyncio.to_thread(self.blobs.delete, row.sha256)
        log.info("mirroring: removed the copy of %s (%s)", row.name, reason,
                 extra={"event": "mirror_removed", "origin": row.origin, "file_id": row.file_id})

    async def _torrent_in_use(self, info_hash_v2: str) -> bool:
        """Whether another mirrored record is the same torrent (same bytes, same name, another origin)."""
        async with self.db.read_session() as session:
            return (await session.exec(select(MirroredFile.file_id).where(
                MirroredFile.info_hash_v2 == info_hash_v2).limit(1))).first() is not None

    async def _in_use(self, sha256: str) -> bool:
        """Whether a local file or another mirrored record still needs these bytes."""
        async with self.db.read_session() as session:
            local = (await session.exec(select(ModelFile.id).where(ModelFile.sha256 == sha256).limit(1))).first()
            mirrored = (await session.exec(select(MirroredFile.file_id).where(
                MirroredFile.sha256 == sha256).limit(1))).first()
        return local is not None or mirrored is not None

    async def stored_copy(self, origin: str, file_id: int) -> tuple[MirroredFile, Path]:
        """A verified mirrored copy and its blob; NotFound unless it is stored here."""
        row = None
        if len(origin) <= 128 and file_id < 2**31:  # beyond the columns' range nothing can match
            async with self.db.read_session() as session:
                row = await session.get(MirroredFile, (origin, file_id))
        if row is None or row.state != "stored" or not await asyncio.to_thread(self.blobs.exists, row.sha256):
            raise NotFound(f"this node holds no mirrored copy of file {file_id} of {origin[:128]}")
        return row, self.blobs.path_for(row.sha256)

    # -- reporting ---------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """The policy, the bytes held and every mirrored file's state (the admin API and `atrium mirror`)."""
        rows = await self._rows()
        async with self.db.read_session() as session:
            names = dict((await session.exec(select(RemoteModel.origin, RemoteModel.origin_name)
                                             .distinct())).all())
        lifetime = timedelta(hours=self.settings.min_lifetime_hours)
        seen: set[str] = set()
        used = 0
        files = []
        for row in rows:
            if row.state == "stored" and row.sha256 not in seen:
                seen.add(row.sha256)
                used += row.size
            stats = self.swarm.stats(row.info_hash_v2) if row.info_hash_v2 and self.swarm.running else None
            files.append({"origin": row.origin, "originName": names.get(row.origin), "fileId": row.file_id,
                          "versionId": row.version_id, "modelId": row.model_id, "name": row.name,
                          "sha256": row.sha256, "size": row.size, "state": row.state,
                          "mirroredAt": _iso(row.mirrored_at),
                          "keepUntil": _iso(row.mirrored_at + lifetime) if row.mirrored_at else None,
                          "infoHashV2": row.info_hash_v2,
                          "contentPath": f"/api/node/v1/mirrored/{row.origin}/{row.file_id}/content"
                          if row.state == "stored" else None, "seeding": bool(stats and stats["state"] == "seeding"),
                          "uploaded": stats["uploaded"] if stats else 0, "failures": row.failures,
                          "lastError": row.last_error, "retryAt": _iso(row.retry_at)})
        s = self.settings
        return {"strategy": s.strategy, "tags": s.tags, "origins": s.origins, "budget": s.budget, "used": used,
                "minLifetimeHours": s.min_lifetime_hours, "intervalSeconds": s.interval_seconds,
                "maxConcurrent": s.max_concurrent, "swarmRunning": self.swarm.running,
                "lastRun": self.last_run, "files": files}


__all__ = ["Candidate", "Held", "Mirroring", "Plan", "choose", "parse_published", "rank"]
