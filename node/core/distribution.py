"""Getting a published version ready to travel: a torrent per file and a signed manifest per version.

Both are made when a version is published (and again when its files change), stored, and served as
stored, so the bytes a node hands out never change under a signature. Making a torrent reads the
whole file, so it runs in a worker thread; the result is the same on every node for the same bytes
and name (node/core/torrents.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from node.core.blobs import BlobStore
from node.core.catalog import version_air
from node.core.db import Database
from node.core.errors import Conflict, NotFound
from node.core.identity import NodeIdentity
from node.core.keychain import refresh_identity
from node.core.manifests import ManifestFile, build_statement, sign_manifest
from node.core.tables import FileHash, FileTorrent, Model, ModelFile, ModelVersion, VersionManifest
from node.core.torrents import TorrentMeta, make_torrent
from node.core.vocabulary import ModelStatus

log = logging.getLogger(__name__)

# Hash kinds the manifest repeats from the catalog, in Civitai's spelling.
MANIFEST_HASH_KINDS = ("SHA256", "BLAKE3", "CRC32", "AutoV1", "AutoV2", "AutoV3")


@dataclass(frozen=True)
class SharedFile:
    """A stored file with its torrent: what the swarm seeds."""

    file_id: int
    sha256: str
    torrent: TorrentMeta


TorrentListener = Callable[[SharedFile], Awaitable[None]]


class Distribution:
    """Torrents and manifests of this node's published versions."""

    def __init__(self, db: Database, blobs: BlobStore, identity: NodeIdentity, node_name: str) -> None:
        self.db = db
        self.blobs = blobs
        self.identity = identity
        self.node_name = node_name
        self._locks: dict[int, asyncio.Lock] = {}
        self.listeners: list[TorrentListener] = []  # told about every new torrent (the swarm seeds it)
        self._tasks: set[asyncio.Task[None]] = set()
        # Set by open_node: where the key lives, so that a rotation committed by another process is
        # adopted before a manifest is signed or served (keychain.refresh_identity).
        self.key_path: Path | None = None

    def schedule_model(self, model_id: int) -> None:
        """Prepare a just-published model in the background (hashing big files takes seconds); a
        request for its manifest or a torrent meanwhile waits for the same work instead of repeating it."""
        self._spawn(self._quietly(self.prepare_model(model_id), f"model {model_id}"))

    def schedule_version(self, version_id: int) -> None:
        self._spawn(self._quietly(self.prepare(version_id), f"version {version_id}"))

    async def catch_up(self) -> int:
        """Prepare every published version that has no manifest signed by this node's key (at start,
        and for versions published by another process) in one query, whatever the catalog's size.
        Manifests made stale by a new file are redone when the file arrives and when one is asked for.
        Returns how many were signed."""
        lacking = (select(ModelVersion.id).join(Model, col(Model.id) == ModelVersion.model_id)
                   .outerjoin(VersionManifest, col(VersionManifest.version_id) == ModelVersion.id)
                   .where(ModelVersion.status == ModelStatus.PUBLISHED.value,
                          Model.status == ModelStatus.PUBLISHED.value,
                          or_(col(VersionManifest.version_id).is_(None),
                              VersionManifest.key_id != self.identity.key_id)))
        async with self.db.read_session() as session:
            ids = (await session.exec(lacking.order_by(col(ModelVersion.id)))).all()
            files = (await session.exec(select(ModelFile.version_id, ModelFile.sha256).where(
                col(ModelFile.version_id).in_(lacking.scalar_subquery())))).all() if ids else []
        # Versions whose bytes are not all in the store cannot be shared: say so once, not per version.
        missing = await asyncio.to_thread(lambda: {v for v, sha in files if not self.blobs.exists(sha)})
        if missing:
            log.warning("%d published versions have files missing from the blob store; they get no torrent or "
                        "manifest until their files are uploaded again (first: %s)", len(missing),
                        ", ".join(str(v) for v in sorted(missing)[:10]))
        done = 0
        for version_id in ids:
            if version_id in missing:
                continue
            if await self._quietly(self.prepare(version_id), f"version {version_id}"):  # type: ignore[arg-type]
                done += 1
        return done

    def start(self) -> None:
        """Catch up in the background: a node started after a crash or an offline publish gets its
        torrents and manifests without delaying its start."""
        self._spawn(self._quietly(self.catch_up(), "published versions"))

    async def close(self) -> None:
        """Cancel background preparation (it resumes at the next start through catch_up)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Awaitable[bool]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]

    async def _quietly(self, work: Awaitable[object], what: str) -> bool:
        try:
            await work
        except (NotFound, Conflict) as exc:
            log.info("nothing to share for %s: %s", what, exc.detail)
            return False
        except Exception:
            log.exception("could not make the torrents and manifest of %s", what)
            return False
        return True

    def _lock(self, version_id: int) -> asyncio.Lock:
        return self._locks.setdefault(version_id, asyncio.Lock())

    async def prepare_model(self, model_id: int) -> list[int]:
        """Prepare every published version of a model; returns their ids."""
        async with self.db.read_session() as session:
            ids = list((await session.exec(select(ModelVersion.id).where(
                ModelVersion.model_id == model_id, ModelVersion.status == ModelStatus.PUBLISHED.value))).all())
        for version_id in ids:
            await self.prepare(version_id)  # type: ignore[arg-type]
        return ids  # type: ignore[return-value]

    async def prepare(self, version_id: int) -> bytes:
        """Make the missing torrents of a published version's files and (re)sign its manifest when its
        set of files changed. Returns the manifest envelope. Conflict for drafts, NotFound when gone."""
        if self.key_path is not None:
            await refresh_identity(self.db, self.identity, self.key_path)
        async with self._lock(version_id):
            version, model, files = await self._version_files(version_id)
            torrents = await self._torrents(files)
            digest = files_digest(files)
            async with self.db.read_session() as session:
                stored = await session.get(VersionManifest, version_id)
                if stored is not None and stored.files_digest == digest and stored.key_id == self.identity.key_id:
                    return stored.envelope
            hashes = await self._hashes([f.id for f in files])  # type: ignore[misc]
            entries = [ManifestFile(
                name=f.name, size=f.size, sha256=f.sha256,
                hashes={k: hashes[f.id][k] for k in MANIFEST_HASH_KINDS if k in hashes[f.id]},  # type: ignore[index]
                header_sha256=f.header_digest, file_root=torrents[f.id].file_root,  # type: ignore[index]
                info_hash_v1=torrents[f.id].info_hash_v1, info_hash_v2=torrents[f.id].info_hash_v2,  # type: ignore[index]
                piece_size=torrents[f.id].piece_size) for f in files]  # type: ignore[index]
            statement = build_statement(
                node_id=self.identity.node_id, node_name=self.node_name,
                air=version_air(self.node_name, model, version),
                model={"id": model.id, "name": model.name, "type": model.type},
                version={"id": version.id, "name": version.name, "baseModel": version.base_model,
                         "publishedAt": version.published_at.isoformat().replace("+00:00", "Z")
                         if version.published_at else None},
                files=entries)
            envelope = sign_manifest(self.identity, statement)
            async with self.db.session() as session:
                row = await session.get(VersionManifest, version_id)
                if row is None:
                    row = VersionManifest(version_id=version_id, envelope=envelope, files_digest=digest,
                                          key_id=self.identity.key_id)
                else:
                    row.envelope, row.files_digest, row.key_id = envelope, digest, self.identity.key_id
                session.add(row)
                await session.commit()
            log.info("signed the manifest of version %d (%d files)", version_id, len(files))
            return envelope

    async def manifest(self, version_id: int) -> bytes:
        """The version's signed manifest, made first if it is missing or stale."""
        return await self.prepare(version_id)

    async def torrent(self, file_id: int) -> TorrentMeta:
        """A published file's torrent (made first when missing)."""
        async with self.db.read_session() as session:
            row = await session.get(FileTorrent, file_id)
            if row is not None:
                return TorrentMeta.from_bytes(row.data)
            file = await session.get(ModelFile, file_id)
        if file is None:
            raise NotFound(f"no file {file_id}")
        await self.prepare(file.version_id)
        async with self.db.read_session() as session:
            row = await session.get(FileTorrent, file_id)
        if row is None:
            raise NotFound(f"file {file_id} has no torrent")
        return TorrentMeta.from_bytes(row.data)

    async def shared_file(self, file_id: int) -> SharedFile:
        """A published file with its torrent (made first when missing); NotFound when there is none."""
        meta = await self.torrent(file_id)
        async with self.db.read_session() as session:
            file = await session.get(ModelFile, file_id)
        if file is None:
            raise NotFound(f"no file {file_id}")
        return SharedFile(file_id, file.sha256, meta)

    async def version_of_file(self, file_id: int) -> int | None:
        async with self.db.read_session() as session:
            file = await session.get(ModelFile, file_id)
        return file.version_id if file else None

    async def torrent_summaries(self, file_ids: Sequence[int]) -> dict[int, FileTorrent]:
        """Stored torrents of these files, without making any (for file listings)."""
        if not file_ids:
            return {}
        async with self.db.read_session() as session:
            rows = (await session.exec(select(FileTorrent).where(col(FileTorrent.file_id).in_(file_ids)))).all()
        return {row.file_id: row for row in rows}

    async def find_torrent(self, info_hash: str) -> SharedFile | None:
        """The local file with this v1 or v2 info-hash (hex)."""
        info_hash = info_hash.lower()
        column = FileTorrent.info_hash_v1 if len(info_hash) == 40 else FileTorrent.info_hash_v2
        async with self.db.read_session() as session:
            found = (await session.exec(select(FileTorrent, ModelFile.sha256).join(
                ModelFile, col(ModelFile.id) == FileTorrent.file_id).where(column == info_hash))).first()
        if found is None:
            return None
        row, sha256 = found
        return SharedFile(row.file_id, sha256, TorrentMeta.from_bytes(row.data))

    async def shared_files(self) -> list[SharedFile]:
        """Every stored file that has a torrent: what this node seeds."""
        async with self.db.read_session() as session:
            rows = (await session.exec(select(FileTorrent, ModelFile.sha256).join(
                ModelFile, col(ModelFile.id) == FileTorrent.file_id))).all()
        return [SharedFile(row.file_id, sha256, TorrentMeta.from_bytes(row.data)) for row, sha256 in rows]

    # -- internals -------------------------------------------------------------------------------

    async def _version_files(self, version_id: int) -> tuple[ModelVersion, Model, list[ModelFile]]:
        async with self.db.read_session() as session:
            version = await session.get(ModelVersion, version_id)
            model = await session.get(Model, version.model_id) if version else None
            if version is None or model is None or model.status == ModelStatus.DELETED:
                raise NotFound(f"no model version {version_id}")
            if version.status != ModelStatus.PUBLISHED or model.status != ModelStatus.PUBLISHED:
                raise Conflict(f"version {version_id} is not published; manifests and torrents are made at publish")
            files = list((await session.exec(select(ModelFile).where(ModelFile.version_id == version_id)
                                             .order_by(col(ModelFile.id)))).all())
        if not files:
            raise Conflict(f"version {version_id} has no files")
        return version, model, files

    async def _hashes(self, file_ids: list[int]) -> dict[int, dict[str, str]]:
        async with self.db.read_session() as session:
            rows = (await session.exec(select(FileHash).where(col(FileHash.file_id).in_(file_ids)))).all()
        out: dict[int, dict[str, str]] = {i: {} for i in file_ids}
        for row in rows:
            out[row.file_id][row.kind] = row.value
        return out

    async def _torrents(self, files: list[ModelFile]) -> dict[int, TorrentMeta]:
        have = await self.torrent_summaries([f.id for f in files])  # type: ignore[misc]
        out = {file_id: TorrentMeta.from_bytes(row.data) for file_id, row in have.items()}
        for f in files:
            if f.id in out:
                continue
            path = self.blobs.open_path(f.sha256)
            meta = await asyncio.to_thread(make_torrent, path, f.name, self.blobs.tmp_dir)
            async with self.db.session() as session:
                session.add(FileTorrent(file_id=f.id, info_hash_v1=meta.info_hash_v1,  # type: ignore[arg-type]
                                        info_hash_v2=meta.info_hash_v2, file_root=meta.file_root,
                                        piece_size=meta.piece_size, data=meta.data))
                try:
                    await session.commit()
                except IntegrityError:  # another process made it first: same bytes, same torrent
                    await session.rollback()
            out[f.id] = meta  # type: ignore[index]
            log.info("made the torrent of file %d (%s, %d pieces of %d KiB)", f.id, f.name,
                     -(-meta.size // meta.piece_size), meta.piece_size // 1024)
            shared = SharedFile(f.id, f.sha256, meta)  # type: ignore[arg-type]
            for listener in self.listeners:
                try:
                    await listener(shared)
                except Exception:
                    log.exception("a torrent listener failed for file %d", f.id)
        return out


def files_digest(files: Sequence[ModelFile]) -> str:
    """Names the exact set of files a manifest covers (ids, names and contents)."""
    text = "\n".join(f"{f.id}\t{f.name}\t{f.sha256}" for f in sorted(files, key=lambda f: f.id or 0))
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = ["Distribution", "SharedFile", "files_digest"]
