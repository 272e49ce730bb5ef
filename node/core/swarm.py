"""The node's BitTorrent session: it seeds every stored file and fetches files the node lacks.

One libtorrent session lives as long as the node. Each stored file is seeded from the blob store
itself: the torrent's single file is renamed to the blob's name (its SHA-256) inside the blob's
directory, so no second copy exists. Blobs enter the store only once checked, so at start every one
is added in seed mode (libtorrent checks a piece the first time a peer asks for it) instead of hashing
every file again; resume data saved at stop (atomically, under `DATA/swarm/resume/`) carries each
file's upload totals across restarts and lets files fetched from other nodes be seeded again.

`Swarm.fetch` downloads a file into the store's temp directory, checks it against its signed
manifest entry (size and SHA-256) and only then commits it to the store and seeds it.

The settings that matter on fast links come from measurements on these machines (see
docs/sharing.md): rate limits also apply to peers on the local network, a short bandwidth tick and
larger send buffers keep a capped upload near its cap, and uTP is off by default.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libtorrent as lt

from node.core.blobs import SHA256_RE, BlobStore
from node.core.config import SwarmSection
from node.core.distribution import Distribution, SharedFile
from node.core.errors import AtriumError, InvalidInput
from node.core.files import atomic_write_bytes
from node.core.manifests import ManifestError, ManifestFile, check_file
from node.core.torrents import TorrentMeta

log = logging.getLogger("atrium.swarm")

# How often the alert queue is drained (seconds). Alerts queue up in libtorrent meanwhile.
ALERT_POLL_SECONDS = 0.05
# Bandwidth-manager tick (ms): at the default 500 ms a capped upload reaches 0.6-0.85 of its cap.
TICK_INTERVAL_MS = 20
# Send buffers of capped seeders: the low watermark must stay above about 2 x cap x tick.
SEND_BUFFER_LOW_WATERMARK = 1024 * 1024
SEND_BUFFER_WATERMARK = 2 * 1024 * 1024
# How long stopping waits for resume data before giving up on it.
RESUME_SAVE_TIMEOUT = 10.0
# Announces every this many seconds (the tracker tells clients; libtorrent re-announces on its own).
ANNOUNCE_INTERVAL = 120
# Peers handed out per announce, and how long a peer counts without announcing again.
ANNOUNCE_NUMWANT = 50
PEER_TTL = 3 * ANNOUNCE_INTERVAL
FETCH_DIR_PREFIX = "fetch-"
# A fetch that receives nothing for this long fails (no peer or web seed has the file, or none answers).
FETCH_STALL_SECONDS = 120.0


class SwarmError(AtriumError):
    """A fetch failed: no peer or web seed delivered the file, or the swarm is not running."""

    code = "swarm_error"


def session_settings(section: SwarmSection, *, listen: str | None = None) -> dict[str, Any]:
    """libtorrent settings for a node's (or `atrium pull`'s) session."""
    interface = listen if listen is not None else f"{_bracket(section.host)}:{section.port}"
    return {
        "listen_interfaces": interface,
        "enable_dht": section.dht,
        "enable_lsd": section.lsd,
        "enable_upnp": section.upnp,
        "enable_natpmp": section.natpmp,
        "enable_outgoing_utp": section.utp,
        "enable_incoming_utp": section.utp,
        "upload_rate_limit": section.upload_rate_limit,
        "download_rate_limit": section.download_rate_limit,
        "connections_limit": section.connections_limit,
        # Without this, peers on 127.0.0.0/8 and the LAN ignore the rate limits.
        "ignore_limits_on_local_network": False,
        "tick_interval": TICK_INTERVAL_MS,
        "send_buffer_low_watermark": SEND_BUFFER_LOW_WATERMARK,
        "send_buffer_watermark": SEND_BUFFER_WATERMARK,
        # Several nodes (and clients) behind one address, or on one host, are distinct peers.
        "allow_multiple_connections_per_ip": True,
        "user_agent": "atrium",
        "alert_mask": (lt.alert_category.error | lt.alert_category.status | lt.alert_category.storage
                       | lt.alert_category.performance_warning | lt.alert_category.tracker),
    }


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def parse_peer(text: str) -> tuple[str, int]:
    """`HOST:PORT` (or `[IPv6]:PORT`) as a tuple; InvalidInput when it is not one."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(f"a peer is HOST:PORT, e.g. 127.0.0.1:6881; got {text!r}")
    return host, int(port)


def add_params(info: lt.torrent_info, save_path: Path, file_name: str, *, seed: bool,
               max_connections: int = -1, resume: bytes | None = None) -> lt.add_torrent_params:
    """Parameters to add a single-file torrent stored as `save_path/file_name`, running (not queued)."""
    params = lt.read_resume_data(resume) if resume else lt.add_torrent_params()
    params.ti = info
    params.save_path = str(save_path)
    params.renamed_files = {0: file_name}
    flags = params.flags & ~lt.torrent_flags.paused & ~lt.torrent_flags.auto_managed
    if seed:
        flags |= lt.torrent_flags.seed_mode
    params.flags = flags
    params.max_connections = max_connections
    return params


@dataclass
class Shared:
    """A torrent in the session."""

    handle: lt.torrent_handle
    sha256: str
    name: str
    info_hash_v1: str
    info_hash_v2: str
    size: int
    file_id: int | None = None  # None for files fetched from other nodes that this node's catalog lacks
    done: asyncio.Future[None] | None = None  # set while a fetch waits for the download
    hash_failures: int = 0


@dataclass
class Tracker:
    """A minimal BitTorrent tracker for this node's files: who announced which info-hash, and from where."""

    peers: dict[bytes, dict[tuple[str, int], tuple[float, bool]]] = field(default_factory=dict)

    def announce(self, info_hash: bytes, ip: str, port: int, *, seed: bool, stopped: bool,
                 numwant: int = ANNOUNCE_NUMWANT) -> list[tuple[str, int]]:
        """Record (or forget, when `stopped`) a peer and return up to `numwant` other peers."""
        now = time.monotonic()
        known = self.peers.setdefault(info_hash, {})
        for endpoint, (seen, _seed) in list(known.items()):
            if now - seen > PEER_TTL:
                del known[endpoint]
        if stopped:
            known.pop((ip, port), None)
        else:
            known[(ip, port)] = (now, seed)
        others = [e for e in known if e != (ip, port)]
        # Seeds first: a client wants bytes, and a seed has them all.
        others.sort(key=lambda e: not known[e][1])
        return others[:max(0, numwant)]

    def counts(self, info_hashes: Iterable[bytes]) -> tuple[int, int]:
        """(seeds, leechers) that announced any of these info-hashes recently."""
        now = time.monotonic()
        seen: dict[tuple[str, int], bool] = {}
        for info_hash in info_hashes:
            for endpoint, (at, seed) in self.peers.get(info_hash, {}).items():
                if now - at <= PEER_TTL:
                    seen[endpoint] = seen.get(endpoint, False) or seed
        seeds = sum(seen.values())
        return seeds, len(seen) - seeds


class Swarm:
    """The node's libtorrent session (see the module docstring)."""

    def __init__(self, section: SwarmSection, blobs: BlobStore, state_dir: Path,
                 distribution: Distribution | None = None) -> None:
        self.section = section
        self.blobs = blobs
        self.state_dir = state_dir
        self.resume_dir = state_dir / "resume"
        self.distribution = distribution
        self.tracker = Tracker()
        self.session: lt.session | None = None
        self._torrents: dict[str, Shared] = {}  # info-hash v2 -> torrent
        self._by_v1: dict[str, str] = {}  # info-hash v1 -> v2
        self._pending_resume: dict[str, asyncio.Future[None]] = {}
        self._fetches: dict[str, asyncio.Task[Path]] = {}
        self._alerts: asyncio.Task[None] | None = None
        # Pieces that failed their hash check while a file was fetched, by v2 info-hash (for reports).
        self.fetch_hash_failures: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.session is not None

    @property
    def listen_port(self) -> int:
        """The TCP port peers connect to (0 while not listening)."""
        return self.session.listen_port() if self.session is not None else 0

    async def start(self) -> None:
        """Open the session, seed every stored file and start turning alerts into log lines."""
        self.resume_dir.mkdir(parents=True, exist_ok=True)
        self.session = lt.session(session_settings(self.section))
        self._alerts = asyncio.create_task(self._alert_loop(), name="atrium-swarm-alerts")
        shared = await self.distribution.shared_files() if self.distribution is not None else []
        added = await asyncio.to_thread(self._add_stored, shared)
        if self.distribution is not None:
            self.distribution.listeners.append(self._on_new_torrent)
        log.info("swarm listening on port %d, seeding %d files", self.listen_port, added,
                 extra={"event": "swarm_started", "port": self.listen_port, "files": added})

    async def close(self) -> None:
        """Stop fetches, save resume data of every torrent (atomically), and close the session."""
        if self.session is None:
            return
        if self.distribution is not None and self._on_new_torrent in self.distribution.listeners:
            self.distribution.listeners.remove(self._on_new_torrent)
        for task in list(self._fetches.values()):
            task.cancel()
        await asyncio.gather(*self._fetches.values(), return_exceptions=True)
        try:
            await asyncio.wait_for(self._save_all_resume_data(), RESUME_SAVE_TIMEOUT)
        except TimeoutError:
            log.warning("swarm: gave up waiting for resume data", extra={"event": "resume_timeout"})
        if self._alerts is not None:
            self._alerts.cancel()
            try:
                await self._alerts
            except asyncio.CancelledError:
                pass
        # The session's destructor joins libtorrent's threads (and says goodbye to trackers): off the loop,
        # so the worker thread must hold the last reference.
        holder, self.session = [self.session], None
        await asyncio.to_thread(stop_session, holder)
        self._torrents.clear()
        self._by_v1.clear()

    def _add_stored(self, shared: Sequence[SharedFile]) -> int:
        """Add every stored file: those with resume data first (fetched files among them), then the rest."""
        assert self.session is not None
        by_hash = {s.torrent.info_hash_v2: s for s in shared}
        for path in sorted(self.resume_dir.glob("*.resume")):
            try:
                params = lt.read_resume_data(path.read_bytes())
                info = params.ti
                sha256 = dict(params.renamed_files).get(0, "")
            except Exception as exc:
                log.warning("swarm: unreadable resume data %s: %s", path.name, exc, extra={"event": "resume_bad"})
                path.unlink(missing_ok=True)
                continue
            if info is None or not SHA256_RE.match(sha256) or not self.blobs.exists(sha256):
                path.unlink(missing_ok=True)  # the blob is gone (deleted) or the data is not ours
                continue
            v2 = str(info.info_hashes().v2)
            entry = by_hash.pop(v2, None)
            meta_name = info.name()  # a single-file torrent's name is its file's
            params = add_params(info, self.blobs.path_for(sha256).parent, sha256, seed=True,
                                max_connections=self.section.peers_per_file, resume=path.read_bytes())
            self._add(params, sha256=sha256, name=meta_name, file_id=entry.file_id if entry else None)
        for entry in by_hash.values():
            if not self.blobs.exists(entry.sha256):
                continue
            self._add_seed(entry.torrent, entry.sha256, entry.file_id)
        return len(self._torrents)

    def _add_seed(self, meta: TorrentMeta, sha256: str, file_id: int | None) -> Shared:
        if meta.info_hash_v2 in self._torrents:
            found = self._torrents[meta.info_hash_v2]
            found.file_id = found.file_id or file_id
            return found
        params = add_params(meta.torrent_info(), self.blobs.path_for(sha256).parent, sha256, seed=True,
                            max_connections=self.section.peers_per_file)
        return self._add(params, sha256=sha256, name=meta.name, file_id=file_id)

    def _add(self, params: lt.add_torrent_params, *, sha256: str, name: str, file_id: int | None) -> Shared:
        assert self.session is not None
        handle = self.session.add_torrent(params)
        hashes = params.ti.info_hashes()
        entry = Shared(handle=handle, sha256=sha256, name=name, info_hash_v1=str(hashes.v1),
                       info_hash_v2=str(hashes.v2), size=params.ti.total_size(), file_id=file_id)
        self._torrents[entry.info_hash_v2] = entry
        self._by_v1[entry.info_hash_v1] = entry.info_hash_v2
        return entry

    async def _on_new_torrent(self, shared: SharedFile) -> None:
        """Distribution listener: a just-published file is seeded at once."""
        if self.session is None or not self.blobs.exists(shared.sha256):
            return
        self._add_seed(shared.torrent, shared.sha256, shared.file_id)
        log.info("swarm: seeding %s", shared.torrent.name,
                 extra={"event": "seeding", "info_hash": shared.torrent.info_hash_v2, "file_id": shared.file_id})

    async def seed(self, meta: TorrentMeta, sha256: str, file_id: int | None = None) -> None:
        """Seed a stored blob under `meta` (no-op when it is already seeded)."""
        self._require_running()
        self.blobs.open_path(sha256)
        self._add_seed(meta, sha256, file_id)

    async def unseed(self, info_hash_v2: str) -> bool:
        """Stop seeding a torrent fetched from another node and forget its resume data (a torrent of one
        of this node's own files, or one still downloading, is left alone). Returns whether one stopped."""
        entry = self._torrents.get(info_hash_v2)
        if entry is None:
            (self.resume_dir / f"{info_hash_v2}.resume").unlink(missing_ok=True)
            return False
        if self.session is None or entry.file_id is not None or entry.done is not None:
            return False
        await self._remove(entry)
        log.info("swarm: stopped seeding %s", entry.name, extra={"event": "unseeded", "info_hash": info_hash_v2})
        return True

    # -- questions -------------------------------------------------------------------------------

    def knows(self, info_hash: str) -> bool:
        """Whether the session holds a torrent with this v1 info-hash or (possibly truncated) v2 one."""
        return self.find(info_hash) is not None

    def find(self, info_hash: str) -> Shared | None:
        """The torrent with this v1 info-hash or (possibly truncated) v2 one, if the session holds it."""
        info_hash = info_hash.lower()
        if len(info_hash) == 64:
            return self._torrents.get(info_hash)
        if info_hash in self._by_v1:
            return self._torrents.get(self._by_v1[info_hash])
        # A hybrid torrent is also announced under its v2 info-hash cut to 20 bytes.
        return next((t for v2, t in self._torrents.items() if v2[:40] == info_hash), None)

    def stats(self, info_hash_v2: str) -> dict[str, Any] | None:
        """Swarm figures of one torrent, or None when this session does not hold it."""
        entry = self._torrents.get(info_hash_v2)
        if entry is None or self.session is None:
            return None
        status = entry.handle.status()
        seeds, leechers = self.tracker.counts([bytes.fromhex(entry.info_hash_v1),
                                               bytes.fromhex(entry.info_hash_v2[:40])])
        return {
            "state": _state_name(status),
            "progress": round(status.progress, 4),
            "peers": status.num_peers,
            "seeds": status.num_seeds,
            "uploaded": status.all_time_upload,
            "uploadedThisSession": status.total_payload_upload,
            "downloaded": status.all_time_download,
            "uploadRate": status.upload_payload_rate,
            "downloadRate": status.download_payload_rate,
            "trackerSeeds": seeds,
            "trackerLeechers": leechers,
            "hashFailures": entry.hash_failures,
        }

    def peer_endpoint(self, public_host: str) -> tuple[str, int] | None:
        """This node's own peer address as clients should dial it (None when not listening)."""
        port = self.listen_port
        if not port:
            return None
        host = self.section.host
        return (public_host if host in ("0.0.0.0", "::", "") else host), port

    def _require_running(self) -> None:
        if self.session is None:
            raise SwarmError("the swarm is not running on this node (swarm.enabled is false)")

    # -- fetching --------------------------------------------------------------------------------

    async def fetch(self, expected: ManifestFile, torrent: bytes, *, peers: Sequence[tuple[str, int]] = (),
                    timeout: float | None = None) -> Path:
        """Download the file `expected` describes (from `peers`, the torrent's trackers and web seeds),
        check its size and SHA-256 against the signed manifest entry, commit it to the blob store and
        seed it. Returns the blob's path. A file already stored is seeded and returned at once.

        Raises ManifestError when the torrent does not describe the manifest's file or the bytes do not
        match, SwarmError when the download fails or `timeout` passes (nothing is left in the store).
        """
        self._require_running()
        meta = TorrentMeta.from_bytes(torrent)
        check_torrent_matches(meta, expected)
        if self.blobs.exists(expected.sha256):
            await self.seed(meta, expected.sha256)
            return self.blobs.path_for(expected.sha256)
        task = self._fetches.get(meta.info_hash_v2)
        if task is None:
            task = asyncio.create_task(self._fetch(meta, torrent, expected, peers))
            self._fetches[meta.info_hash_v2] = task
            task.add_done_callback(lambda _t: self._fetches.pop(meta.info_hash_v2, None))
        else:
            self.connect(meta.info_hash_v2, peers)
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # its cleanup is done when this returns
            raise SwarmError(f"{expected.name}: not downloaded within {timeout:.0f} s") from None

    def connect(self, info_hash_v2: str, peers: Iterable[tuple[str, int]]) -> None:
        """Dial these peers for a torrent in the session."""
        entry = self._torrents.get(info_hash_v2)
        if entry is None:
            return
        for peer in peers:
            entry.handle.connect_peer(peer)

    async def _fetch(self, meta: TorrentMeta, torrent: bytes, expected: ManifestFile,
                     peers: Sequence[tuple[str, int]]) -> Path:
        assert self.session is not None
        work = self.blobs.tmp_dir / f"{FETCH_DIR_PREFIX}{meta.info_hash_v2[:32]}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        # The served torrent (with its trackers and web seeds), not the stored dictionary.
        decoded = lt.bdecode(torrent)
        info = lt.torrent_info(decoded)
        params = add_params(info, work, "data", seed=False, max_connections=self.section.peers_per_file)
        if self.section.tracker is False:
            params.trackers = []
        entry = self._add(params, sha256=expected.sha256, name=expected.name, file_id=None)
        entry.done = asyncio.get_running_loop().create_future()
        self.connect(meta.info_hash_v2, peers)
        log.info("swarm: fetching %s (%d bytes) from %d peers and %d web seeds", expected.name, expected.size,
                 len(peers), len(decoded.get(b"url-list") or []),
                 extra={"event": "fetch_started", "info_hash": meta.info_hash_v2, "file": expected.name})
        path = work / "data"
        try:
            await self._wait_for_download(entry)
            self.fetch_hash_failures[meta.info_hash_v2] = entry.hash_failures
            await self._remove(entry)
            await asyncio.to_thread(check_file, path, expected)
            await asyncio.to_thread(self.blobs.commit, path, expected.sha256)
        except BaseException:
            if meta.info_hash_v2 in self._torrents:
                await self._remove(entry)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        # Seeded under the served torrent, trackers included: the origin's tracker then sends clients here too.
        seeded = self._add_seed(meta, expected.sha256, None)
        await self._save_resume_data([seeded])
        log.info("swarm: fetched and verified %s; seeding it", expected.name,
                 extra={"event": "fetched", "info_hash": meta.info_hash_v2, "sha256": expected.sha256,
                        "hash_failures": entry.hash_failures})
        return self.blobs.path_for(expected.sha256)

    async def _wait_for_download(self, entry: Shared) -> None:
        """Until the torrent finishes; SwarmError when nothing arrives for FETCH_STALL_SECONDS."""
        assert entry.done is not None
        last, since = -1, time.monotonic()
        while not entry.done.done() and not entry.handle.status().is_seeding:
            await asyncio.wait([entry.done], timeout=1.0)
            done = entry.handle.status().total_wanted_done
            if done != last:
                last, since = done, time.monotonic()
            elif time.monotonic() - since > FETCH_STALL_SECONDS:
                raise SwarmError(f"{entry.name}: nothing arrived from any peer or web seed for "
                                 f"{FETCH_STALL_SECONDS:.0f} s")
        if entry.done.done():
            entry.done.result()  # raises the torrent's error, if it failed

    async def _remove(self, entry: Shared) -> None:
        assert self.session is not None
        self._torrents.pop(entry.info_hash_v2, None)
        self._by_v1.pop(entry.info_hash_v1, None)
        self.session.remove_torrent(entry.handle)
        (self.resume_dir / f"{entry.info_hash_v2}.resume").unlink(missing_ok=True)

    # -- resume data -----------------------------------------------------------------------------

    async def _save_all_resume_data(self) -> None:
        """Resume data of every stored torrent that changed (uploads, or new) since it was last saved."""
        await self._save_resume_data([t for t in self._torrents.values()
                                      if t.done is None and t.handle.is_valid() and t.handle.need_save_resume_data()])

    async def _save_resume_data(self, entries: Sequence[Shared]) -> None:
        loop = asyncio.get_running_loop()
        waits = []
        for entry in entries:
            if not entry.handle.is_valid():
                continue
            future = self._pending_resume.get(entry.info_hash_v2)
            if future is None:
                future = loop.create_future()
                self._pending_resume[entry.info_hash_v2] = future
                entry.handle.save_resume_data(lt.save_resume_flags_t.save_info_dict)
            waits.append(future)
        await asyncio.gather(*waits, return_exceptions=True)

    def _write_resume(self, alert: Any) -> None:
        v2 = str(alert.handle.info_hashes().v2)
        entry = self._torrents.get(v2)
        future = self._pending_resume.pop(v2, None)
        if entry is not None and entry.done is None:  # only complete, stored files are worth resuming
            data = lt.write_resume_data_buf(alert.params)
            atomic_write_bytes(self.resume_dir / f"{v2}.resume", data)
        if future is not None and not future.done():
            future.set_result(None)

    # -- alerts ----------------------------------------------------------------------------------

    async def _alert_loop(self) -> None:
        while self.session is not None:
            try:
                for alert in self.session.pop_alerts():
                    self._on_alert(alert)
            except Exception:  # one bad alert must not stop the loop
                log.exception("swarm: handling an alert failed")
            await asyncio.sleep(ALERT_POLL_SECONDS)

    def _on_alert(self, alert: Any) -> None:
        kind = type(alert).__name__
        v2 = _alert_info_hash(alert)
        entry = self._torrents.get(v2) if v2 else None
        extra: dict[str, Any] = {"event": kind.removesuffix("_alert")}
        if entry is not None:
            extra.update(info_hash=v2, file=entry.name)
        if kind == "save_resume_data_alert":
            self._write_resume(alert)
            return
        if kind == "save_resume_data_failed_alert":
            future = self._pending_resume.pop(v2 or "", None)
            if future is not None and not future.done():
                future.set_result(None)
            return
        if kind == "torrent_finished_alert":
            if entry is not None and entry.done is not None and not entry.done.done():
                entry.done.set_result(None)
            log.info("swarm: %s", alert.message(), extra=extra)
        elif kind == "hash_failed_alert":
            if entry is not None:
                entry.hash_failures += 1
            log.warning("swarm: %s", alert.message(), extra={**extra, "piece": alert.piece_index})
        elif kind in ("torrent_error_alert", "file_error_alert"):
            if entry is not None and entry.done is not None and not entry.done.done():
                entry.done.set_exception(SwarmError(f"{entry.name}: {alert.message()}"))
            log.error("swarm: %s", alert.message(), extra=extra)
        elif kind in ("listen_failed_alert", "performance_alert", "peer_ban_alert"):
            log.warning("swarm: %s", alert.message(), extra=extra)
        elif kind in ("listen_succeeded_alert", "torrent_removed_alert"):
            log.info("swarm: %s", alert.message(), extra=extra)
        elif isinstance(alert, (lt.tracker_error_alert, lt.scrape_failed_alert)):
            log.info("swarm: %s", alert.message(), extra=extra)
        else:
            log.debug("swarm: %s", alert.message(), extra=extra)


def check_torrent_matches(meta: TorrentMeta, expected: ManifestFile) -> None:
    """The torrent must describe exactly the manifest's file: its size and (when signed) its hashes."""
    if meta.size != expected.size:
        raise ManifestError(f"{expected.name}: the torrent describes {meta.size} bytes, the manifest {expected.size}")
    for label, ours, signed in (("v2 info-hash", meta.info_hash_v2, expected.info_hash_v2),
                                ("v1 info-hash", meta.info_hash_v1, expected.info_hash_v1),
                                ("file root", meta.file_root, expected.file_root)):
        if signed and ours != signed:
            raise ManifestError(f"{expected.name}: the torrent's {label} {ours} is not the manifest's {signed}")


def _alert_info_hash(alert: Any) -> str | None:
    handle = getattr(alert, "handle", None)
    if handle is None or not handle.is_valid():
        return None
    try:
        return str(handle.info_hashes().v2)
    except RuntimeError:
        return None


def _state_name(status: Any) -> str:
    if status.is_seeding:
        return "seeding"
    name = str(status.state).rsplit(".", 1)[-1]
    return name


def stop_session(holder: list[lt.session]) -> None:
    """Pause and destroy the session in `holder` (the caller keeps no other reference to it)."""
    session = holder.pop()
    session.pause()
    del session


def clean_fetch_dirs(blobs: BlobStore) -> int:
    """Remove download directories of fetches a previous run left behind; returns how many."""
    removed = 0
    if blobs.tmp_dir.is_dir():
        for path in blobs.tmp_dir.iterdir():
            if path.is_dir() and path.name.startswith(FETCH_DIR_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
    return removed


__all__ = ["Swarm", "SwarmError", "Tracker", "add_params", "check_torrent_matches", "clean_fetch_dirs", "parse_peer",
           "session_settings", "stop_session"]

