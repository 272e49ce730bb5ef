"""`atrium pull`: download a model version's files from the swarm into a UI's model folders.

The node names the files and signs what they are; the bytes come from every peer that has them and
from the node's web seed. Nothing appears in the target folder before its size and SHA-256 match the
signed manifest: files are downloaded into a hidden `.atrium-partial/` directory inside the target,
with libtorrent's resume data next to them, so a pull that is interrupted (Ctrl+C, a crash, a lost
connection) resumes where it stopped when run again, and a verified file is moved into place with
one atomic rename.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import libtorrent as lt

from node.client import NodeClient
from node.core.config import SwarmSection
from node.core.errors import AtriumError, InvalidInput
from node.core.files import atomic_write_bytes
from node.core.manifests import ManifestError, ManifestFile, check_file
from node.core.swarm import add_params, check_torrent_matches, session_settings, stop_session
from node.core.torrents import TorrentMeta
from node.sources import Wanted, manifest_entry, resolve, signer_text, torrent_of, verified_manifest

PARTIAL_DIR = ".atrium-partial"
RESUME_FILE = "resume.dat"
# Resume data is written this often while downloading, so even a killed pull loses little.
RESUME_SAVE_SECONDS = 2.0
POLL_SECONDS = 0.1
REDRAW_SECONDS = 0.2
LINE_SECONDS = 10.0
# A pull that receives nothing for this long gives up (run it again to resume).
STALL_SECONDS = 120.0

# Where each UI looks for each kind of model, relative to its root folder (--to).
LAYOUTS: dict[str, dict[str, str]] = {
    "a1111": {
        "Checkpoint": "models/Stable-diffusion", "LORA": "models/Lora", "LoCon": "models/Lora",
        "DoRA": "models/Lora", "VAE": "models/VAE", "TextualInversion": "embeddings",
        "Hypernetwork": "models/hypernetworks", "Controlnet": "models/ControlNet", "Upscaler": "models/ESRGAN",
    },
    "comfyui": {
        "Checkpoint": "models/checkpoints", "LORA": "models/loras", "LoCon": "models/loras",
        "DoRA": "models/loras", "VAE": "models/vae", "TextualInversion": "models/embeddings",
        "Hypernetwork": "models/hypernetworks", "Controlnet": "models/controlnet",
        "Upscaler": "models/upscale_models", "MotionModule": "models/animatediff_models",
    },
    "flat": {},
}


class PullError(AtriumError):
    """A pull could not finish (its partial data is kept, so running it again resumes)."""

    code = "pull_failed"


def folder_for(root: Path, layout: str, model_type: str, file_type: str = "") -> Path:
    """Where a file of this model type (and file type: a version's "VAE" file goes with the VAEs) belongs."""
    if layout not in LAYOUTS:
        raise InvalidInput(f"--layout: one of {', '.join(LAYOUTS)}; got {layout!r}")
    folders = LAYOUTS[layout]
    kind = "VAE" if file_type == "VAE" else model_type
    return root / folders[kind] if kind in folders else root


@dataclass
class Job:
    """One file being pulled."""

    entry: ManifestFile
    meta: TorrentMeta
    torrent: bytes
    final: Path
    partial: Path  # this file's directory under .atrium-partial
    handle: Any = None
    had: int = 0  # bytes already on disk when this run started
    hash_failures: int = 0
    from_peers: dict[str, int] = field(default_factory=dict)  # peer -> payload bytes received
    from_web_seeds: int = 0
    resume_pending: bool = False
    last_resume: float = 0.0

    @property
    def data(self) -> Path:
        return self.partial / self.entry.name


@dataclass
class PullOptions:
    root: Path
    layout: str = "flat"
    peers: list[tuple[str, int]] = field(default_factory=list)
    listen: str = "0.0.0.0:0"
    key: str | None = None
    max_rate: int = 0
    peers_only: bool = False  # leave the node's web seed out: spare its HTTP bandwidth
    stall_seconds: float = STALL_SECONDS
    stream: TextIO = field(default_factory=lambda: sys.stderr)  # looked up when used, not at import


async def pull(client: NodeClient, target: str, options: PullOptions) -> list[Path]:
    """Resolve `target` on the node, download its files and put them in place; returns their paths."""
    if options.layout not in LAYOUTS:
        raise InvalidInput(f"--layout: one of {', '.join(LAYOUTS)}; got {options.layout!r}")
    wanted = await resolve(client, target)
    manifest = await verified_manifest(client, wanted.version_id, options.key)
    files = wanted.files()
    if not files:
        raise InvalidInput(f"version {wanted.version_id} lists no files to pull")
    say(options.stream, f"{wanted.version.get('air') or target}: {len(files)} file(s), manifest signed by "
                        f"{signer_text(manifest)}")
    done: list[Path] = []
    jobs: list[Job] = []
    for file in files:
        entry = manifest_entry(manifest, file)
        final = folder_for(options.root, options.layout, wanted.model_type, str(file.get("type") or "")) / entry.name
        if final.exists():
            try:
                await asyncio.to_thread(check_file, final, entry)
            except ManifestError as exc:
                raise PullError(f"{final} exists and is not the signed file ({exc.detail}); move it away "
                                "and pull again") from None
            say(options.stream, f"{entry.name}: already in {final.parent}, verified")
            done.append(final)
            continue
        torrent = await torrent_of(client, int(file["id"]))
        meta = TorrentMeta.from_bytes(torrent)
        check_torrent_matches(meta, entry)
        partial = options.root / PARTIAL_DIR / meta.info_hash_v2[:32]
        jobs.append(Job(entry=entry, meta=meta, torrent=torrent, final=final, partial=partial))
    if jobs:
        done += await Downloader(jobs, options, wanted).run()
    return done


def say(stream: TextIO, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


class Downloader:
    """One client-side libtorrent session that downloads the jobs, verifies them and moves them in place."""

    def __init__(self, jobs: list[Job], options: PullOptions, wanted: Wanted) -> None:
        self.jobs = jobs
        self.options = options
        self.wanted = wanted
        section = SwarmSection(dht=False, lsd=False, upnp=False, natpmp=False, utp=False,
                               download_rate_limit=options.max_rate)
        self.session: lt.session | None = lt.session(session_settings(section, listen=options.listen))
        self.tty = options.stream.isatty()
        self.drawn = False

    async def run(self) -> list[Path]:
        try:
            for job in self.jobs:
                self._add(job)
            await self._download()
        finally:
            await self._save_all_resume()
            self._end_line()
            holder, self.session = [self.session], None
            await asyncio.to_thread(stop_session, holder)
        placed = []
        for job in self.jobs:
            placed.append(await asyncio.to_thread(self._place, job))
        return placed

    def _add(self, job: Job) -> None:
        job.partial.mkdir(parents=True, exist_ok=True)
        resume_path = job.partial / RESUME_FILE
        resume = resume_path.read_bytes() if resume_path.is_file() else None
        decoded = lt.bdecode(job.torrent)
        if self.options.peers_only:
            decoded.pop(b"url-list", None)
        info = lt.torrent_info(decoded)
        try:
            params = add_params(info, job.partial, job.entry.name, seed=False, resume=resume)
        except Exception:  # unreadable resume data: start from what is on disk (libtorrent checks it)
            params = add_params(info, job.partial, job.entry.name, seed=False)
        assert self.session is not None
        job.handle = self.session.add_torrent(params)
        for peer in self.options.peers:
            job.handle.connect_peer(peer)

    async def _download(self) -> None:
        started = time.monotonic()
        shown = 0.0
        last_progress, last_done = started, -1
        checked: set[int] = set()
        while True:
            self._drain_alerts()
            statuses = [job.handle.status() for job in self.jobs]
            now = time.monotonic()
            for i, (job, status) in enumerate(zip(self.jobs, statuses)):
                if i not in checked and status.state not in (lt.torrent_status.checking_files,
                                                            lt.torrent_status.checking_resume_data):
                    checked.add(i)
                    job.had = status.total_wanted_done
                    if job.had:
                        say(self.options.stream, f"{job.entry.name}: resuming, {_mib(job.had)} of "
                                                 f"{_mib(job.entry.size)} already here")
                self._count_sources(job)
                if status.errc.value() != 0:
                    raise PullError(f"{job.entry.name}: {status.errc.message()}")
            if all(s.is_seeding or s.is_finished for s in statuses) and len(checked) == len(self.jobs):
                self._draw(statuses, started, final=True)
                return
            done = sum(s.total_wanted_done for s in statuses)
            if done != last_done:
                last_done, last_progress = done, now
            elif now - last_progress > self.options.stall_seconds:
                raise PullError(f"nothing arrived from any peer or web seed for {self.options.stall_seconds:.0f} s; "
                                "run the same command again to resume")
            for job in self.jobs:
                if now - job.last_resume >= RESUME_SAVE_SECONDS and not job.resume_pending:
                    job.last_resume, job.resume_pending = now, True
                    job.handle.save_resume_data()
            if now - shown >= (REDRAW_SECONDS if self.tty else LINE_SECONDS):
                shown = now
                self._draw(statuses, started)
            await asyncio.sleep(POLL_SECONDS)

    def _count_sources(self, job: Job) -> None:
        for peer in job.handle.get_peer_info():
            if peer.connection_type in (lt.peer_info.web_seed, lt.peer_info.http_seed):
                continue
            job.from_peers[f"{peer.ip[0]}:{peer.ip[1]}"] = max(job.from_peers.get(f"{peer.ip[0]}:{peer.ip[1]}", 0),
                                                                peer.total_download)

    def _drain_alerts(self) -> None:
        assert self.session is not None
        for alert in self.session.pop_alerts():
            job = self._job_of(alert)
            if job is None:
                continue
            if isinstance(alert, lt.save_resume_data_alert):
                job.resume_pending = False
                atomic_write_bytes(job.partial / RESUME_FILE, lt.write_resume_data_buf(alert.params))
            elif isinstance(alert, lt.save_resume_data_failed_alert):
                job.resume_pending = False
            elif isinstance(alert, lt.hash_failed_alert):
                job.hash_failures += 1

    def _job_of(self, alert: Any) -> Job | None:
        handle = getattr(alert, "handle", None)
        if handle is None or not handle.is_valid():
            return None
        return next((j for j in self.jobs if j.handle == handle), None)

    async def _save_all_resume(self) -> None:
        """Write every job's resume data once more (on success, failure or Ctrl+C)."""
        pending = [job for job in self.jobs if job.handle is not None and job.handle.is_valid()]
        for job in pending:
            job.resume_pending = True
            job.handle.save_resume_data(lt.save_resume_flags_t.flush_disk_cache)
        deadline = time.monotonic() + 5.0
        while any(job.resume_pending for job in pending) and time.monotonic() < deadline:
            self._drain_alerts()
            await asyncio.sleep(0.02)

    def _draw(self, statuses: list[Any], started: float, *, final: bool = False) -> None:
        total = sum(job.entry.size for job in self.jobs)
        done = sum(s.total_wanted_done for s in statuses)
        had = sum(job.had for job in self.jobs)
        rate = sum(s.download_payload_rate for s in statuses)
        peers = sum(s.num_peers for s in statuses)
        elapsed = max(time.monotonic() - started, 1e-6)
        if final:
            self._end_line()
            fetched = done - had
            sources = sum(1 for job in self.jobs for b in job.from_peers.values() if b > 0)
            failures = sum(job.hash_failures for job in self.jobs)
            web = "" if self.options.peers_only else " and the web seed"
            say(self.options.stream, f"downloaded {_mib(fetched)} in {elapsed:.1f} s ({_mib(fetched / elapsed)}/s) "
                                     f"from {sources} peer(s) seen sending{web}; {failures} piece(s) failed "
                                     "their hash check and were fetched again")
            return
        eta = (total - done) / rate if rate > 0 else None
        name = self.jobs[0].entry.name if len(self.jobs) == 1 else f"{len(self.jobs)} files"
        line = (f"{name}  {100 * done / total if total else 100:5.1f}%  {_mib(done)} / {_mib(total)}  "
                f"{_mib(rate)}/s  {peers} peer(s)  ETA {_duration(eta)}")
        if self.tty:
            self.options.stream.write(f"\r{line}\x1b[K")
            self.drawn = True
        else:
            self.options.stream.write(f"pulling {line}\n")
        self.options.stream.flush()

    def _end_line(self) -> None:
        if self.tty and self.drawn:
            self.options.stream.write("\n")
            self.options.stream.flush()
        self.drawn = False

    def _place(self, job: Job) -> Path:
        """Check the finished file against the manifest, then move it into the target folder."""
        try:
            check_file(job.data, job.entry)
        except ManifestError as exc:
            shutil.rmtree(job.partial, ignore_errors=True)
            raise PullError(f"{exc.detail}; the download was discarded") from None
        job.final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(job.data, job.final)
        shutil.rmtree(job.partial, ignore_errors=True)
        with contextlib.suppress(OSError):
            job.partial.parent.rmdir()  # .atrium-partial, when no other pull uses it
        say(self.options.stream, f"{job.entry.name}: verified against the manifest "
                                 f"(sha256:{job.entry.sha256[:16]}...), saved to {job.final}")
        return job.final


def _mib(size: float) -> str:
    return f"{size / 1024**2:.1f} MiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


__all__ = ["LAYOUTS", "PullError", "PullOptions", "folder_for", "pull"]
