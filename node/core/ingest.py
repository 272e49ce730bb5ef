"""Ingest: model files through resumable uploads, and images, into the blob store and the catalog.

A model file arrives in pieces at increasing offsets. Every piece is appended to a part file and
fed, in the same pass, to the hasher (SHA256, BLAKE3, CRC32, AutoV1, tensor-data hash) and to the
safetensors header validator, so memory stays flat and the file is never read twice. A pickle is
refused as soon as its first bytes arrive. Only when the last byte is in and every check has passed
does the blob move into the content-addressed store and the file join its version.

If the node restarts in the middle of an upload, the part file is cut back to the last offset the
database recorded and re-hashed once when the client resumes.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import unicodedata
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import update
from sqlmodel import col, select

from node.core.blobs import BlobStore
from node.core.catalog import Catalog, check_nsfw_level
from node.core.config import StorageSection
from node.core.db import Database
from node.core.errors import Conflict, InvalidInput, NotFound, TooLarge
from node.core.files import atomic_write_bytes
from node.core.formats import (GGUF, OTHER, PICKLE_TENSOR, SAFETENSOR, SNIFF_BYTES,
                               SafetensorsHeaderReader, SafetensorsInfo, refuse_pickle, sniff_format)
from node.core.hashes import FileHasher, FileHashes, normalize_hash
from node.core.records import read
from node.core.tables import (FileHash, Image, ImageResource, Model, ModelFile, ModelVersion, Upload, User,
                              utcnow)
from node.core.vocabulary import FileType, parse_enum

if TYPE_CHECKING:
    from node.core.images import ImageInfo

_FILES = ModelFile.__table__  # type: ignore[attr-defined]
_HASHES = FileHash.__table__  # type: ignore[attr-defined]

# Pieces are gathered to this size before each write to disk (one thread hand-off per MiB).
WRITE_BATCH_BYTES = 1024 * 1024
FILENAME_MAX = 255
_FILENAME_BAD = re.compile(r"[\x00-\x1f\x7f/\\]")
# File types that hold weights must be a format that cannot run code when loaded.
WEIGHT_TYPES = {FileType.MODEL, FileType.PRUNED_MODEL, FileType.VAE}
WEIGHT_FORMATS = {SAFETENSOR, GGUF}


def check_filename(name: str) -> str:
    """A plain file name (no directories, no control characters), NFC-normalised."""
    if not isinstance(name, str):
        raise InvalidInput("filename: expected text")
    name = unicodedata.normalize("NFC", name.strip())
    if not name or len(name) > FILENAME_MAX or name in (".", "..") or _FILENAME_BAD.search(name):
        raise InvalidInput(f"filename: {name[:80]!r} is not a plain file name (1-{FILENAME_MAX} characters, "
                           "no slashes or control characters)")
    return name


@dataclass
class _LiveUpload:
    """What an upload in progress keeps in memory between its pieces."""

    hasher: FileHasher
    header: SafetensorsHeaderReader | None = None
    format: str | None = None
    head: bytearray = field(default_factory=bytearray)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class UploadProgress:
    """The answer to one piece: where the upload stands, and the file once it is complete."""

    upload: Upload
    file: ModelFile | None = None


class Ingest:
    """Uploads of model files and images for one node."""

    def __init__(self, db: Database, blobs: BlobStore, catalog: Catalog, storage: StorageSection) -> None:
        self.db = db
        self.blobs = blobs
        self.catalog = catalog
        self.storage = storage
        self.parts_dir = blobs.root / "uploads"
        self._live: dict[str, _LiveUpload] = {}
        self.scorer: Any = None  # node.core.scoring.ImageScorer when [moderation] image_scorer is set

    def part_path(self, upload_id: str) -> Path:
        return self.parts_dir / f"{upload_id}.part"

    # -- model files ---------------------------------------------------------------------------

    async def start(self, user: User, version_id: int, *, filename: str, size: int,
                    file_type: str = FileType.MODEL.value) -> Upload:
        """Open an upload of `size` bytes for a file of the version; pieces follow with `append`."""
        version, _model = await self.catalog.editable_version(user, version_id)
        name = check_filename(filename)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidInput("size: the file's size in bytes, at least 1")
        if size > self.storage.max_file_bytes:
            raise TooLarge(f"size: {size:,} bytes is more than this node accepts "
                           f"({self.storage.max_file_bytes:,} bytes)")
        kind = parse_enum(FileType, file_type, "type").value
        upload = Upload(id=secrets.token_hex(16), owner_id=user.id, version_id=version.id, filename=name,  # type: ignore[arg-type]
                        size=size, file_type=kind)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self.part_path(upload.id).touch(mode=0o600)
        async with self.db.session() as session:
            session.add(upload)
            await session.commit()
            await session.refresh(upload)
        self._live[upload.id] = _LiveUpload(hasher=FileHasher())
        return upload

    async def status(self, user: User, upload_id: str) -> Upload:
        """An upload of the user's (its `received` is the offset to resume from)."""
        async with self.db.session() as session:
            upload = await session.get(Upload, upload_id) if isinstance(upload_id, str) and len(upload_id) <= 32 else None
        if upload is None or upload.owner_id != user.id:
            raise NotFound(f"no upload {upload_id!r}")
        return upload

    async def cancel(self, user: User, upload_id: str) -> None:
        upload = await self.status(user, upload_id)
        await self._discard(upload.id)

    async def _discard(self, upload_id: str) -> None:
        self._live.pop(upload_id, None)
        await asyncio.to_thread(self.part_path(upload_id).unlink, True)
        async with self.db.session() as session:
            upload = await session.get(Upload, upload_id)
            if upload is not None:
                await session.delete(upload)
                await session.commit()

    async def append(self, user: User, upload_id: str, offset: int, pieces: AsyncIterator[bytes]) -> UploadProgress:
        """Append the bytes of `pieces` at `offset`, which must be where the upload stands.

        A refused file (pickle, bad safetensors header, wrong size) ends the upload: its part file is
        deleted and the error says why. A dropped connection keeps every byte that arrived.
        """
        upload = await self.status(user, upload_id)
        live = self._live.get(upload.id)
        if live is None:
            live = self._live[upload.id] = _LiveUpload(hasher=FileHasher())
            resumed = True
        else:
            resumed = False
        async with live.lock:
            upload = await self.status(user, upload_id)  # re-read under the lock
            if offset != upload.received:
                raise Conflict(f"this upload continues at byte {upload.received}, not {offset}; "
                               "ask GET for the offset and send from there")
            path = self.part_path(upload.id)
            if resumed:
                await asyncio.to_thread(self._replay, live, path, upload)
            received = upload.received
            pending: list[bytes] = []
            pending_size = 0
            handle = await asyncio.to_thread(open, path, "r+b")
            try:
                handle.seek(received)
                try:
                    async for piece in pieces:
                        if not piece:
                            continue
                        if received + pending_size + len(piece) > upload.size:
                            raise InvalidInput(f"more bytes than the {upload.size:,} announced for this upload")
                        pending.append(piece)
                        pending_size += len(piece)
                        if pending_size >= WRITE_BATCH_BYTES:
                            batch, pending, pending_size = b"".join(pending), [], 0
                            await asyncio.to_thread(self._absorb, live, upload, handle, batch)
                            received += len(batch)
                finally:
                    # Keep every byte that arrived, even when the connection dropped mid-way.
                    if pending:
                        batch = b"".join(pending)
                        await asyncio.to_thread(self._absorb, live, upload, handle, batch)
                        received += len(batch)
                    await asyncio.to_thread(handle.flush)
                    await self._record(upload.id, received)
            except InvalidInput:
                handle.close()
                await self._discard(upload.id)
                raise
            except OSError:
                # A failed write leaves the hasher ahead of the disk: rebuild from the file next time.
                self._live.pop(upload.id, None)
                raise
            finally:
                if not handle.closed:
                    await asyncio.to_thread(os.fsync, handle.fileno())
                    handle.close()
            upload.received = received
            if received < upload.size:
                return UploadProgress(upload=upload)
            try:
                model_file = await self._complete(upload, live, path)
            except InvalidInput:
                await self._discard(upload.id)
                raise
            return UploadProgress(upload=upload, file=model_file)

    def _absorb(self, live: _LiveUpload, upload: Upload, handle: Any, batch: bytes) -> None:
        """Check, hash and write one batch of bytes (in a worker thread: it is CPU and disk work)."""
        self._check_piece(live, upload, batch)
        handle.write(batch)

    def _check_piece(self, live: _LiveUpload, upload: Upload, piece: bytes) -> None:
        """Feed one piece to the format checks and the hasher; raises on a refused file."""
        if live.format is None:
            take = SNIFF_BYTES - len(live.head)
            live.head += piece[:take]
            if len(live.head) >= min(SNIFF_BYTES, upload.size):
                self._decide_format(live, upload)  # feeds the sniffed head to the header check
                if live.header is not None and len(piece) > take:
                    live.header.feed(piece[take:])
        elif live.header is not None:
            live.header.feed(piece)
        live.hasher.update(piece)

    def _decide_format(self, live: _LiveUpload, upload: Upload) -> None:
        fmt = sniff_format(bytes(live.head), upload.filename)
        if fmt == PICKLE_TENSOR:
            refuse_pickle(upload.filename)
        if upload.file_type in {t.value for t in WEIGHT_TYPES} and fmt not in WEIGHT_FORMATS:
            if upload.filename.lower().endswith(".safetensors"):
                fmt = SAFETENSOR  # let the validator say what is wrong with it
            else:
                raise InvalidInput(f"{upload.filename!r}: a {upload.file_type} file must be safetensors "
                                   f"(or GGUF); this looks like {fmt}")
        live.format = fmt
        if fmt == SAFETENSOR:
            live.header = SafetensorsHeaderReader(filename=upload.filename, expected_size=upload.size)
            live.header.feed(bytes(live.head))

    def _replay(self, live: _LiveUpload, path: Path, upload: Upload) -> None:
        """Rebuild the in-memory state of an upload from its part file (after a restart). Blocks."""
        with open(path, "r+b") as handle:
            handle.truncate(upload.received)  # bytes past the recorded offset were never confirmed
            remaining = upload.received
            while remaining:
                piece = handle.read(min(remaining, 4 * 1024 * 1024))
                if not piece:
                    break
                remaining -= len(piece)
                self._check_piece(live, upload, piece)

    async def _record(self, upload_id: str, received: int) -> None:
        async with self.db.session() as session:
            await session.exec(update(Upload).where(col(Upload.id) == upload_id)  # type: ignore[call-overload]
                               .values(received=received, updated_at=utcnow()))
            await session.commit()

    async def _complete(self, upload: Upload, live: _LiveUpload, path: Path) -> ModelFile:
        if live.format is None:
            self._decide_format(live, upload)
        info: SafetensorsInfo | None = live.header.finish() if live.header is not None else None
        hashes: FileHashes = await asyncio.to_thread(live.hasher.finish)
        async with self.db.session() as session:
            duplicate = (await session.exec(select(ModelFile).where(ModelFile.version_id == upload.version_id,
                                                                    ModelFile.sha256 == hashes.sha256))).first()
            if duplicate is not None:
                raise Conflict(f"this version already has these bytes as {duplicate.name!r}")
        await asyncio.to_thread(self.blobs.commit, path, hashes.sha256)
        self._live.pop(upload.id, None)
        async with self.db.session() as session:
            has_primary = (await session.exec(select(ModelFile).where(ModelFile.version_id == upload.version_id,
                                                                      col(ModelFile.primary).is_(True)))).first()
            is_weights = upload.file_type in {t.value for t in WEIGHT_TYPES}
            model_file = ModelFile(
                version_id=upload.version_id, name=upload.filename, size=hashes.size, type=upload.file_type,
                format=live.format or OTHER, fp=info.fp if info else None,
                size_kind="pruned" if upload.file_type == FileType.PRUNED_MODEL else ("full" if is_weights else None),
                primary=is_weights and has_primary is None, sha256=hashes.sha256, blake3=hashes.blake3,
                crc32=hashes.crc32, autov1=hashes.autov1, autov3=hashes.autov3,
                header_digest=info.header_sha256 if info else None,
                file_metadata=dict(info.metadata) if info and info.metadata else None,
                pickle_scan_result="Success", virus_scan_result="Success")
            session.add(model_file)
            await session.flush()
            for kind, value in hashes.as_civitai().items():
                session.add(FileHash(file_id=model_file.id, kind=kind, value=value.lower()))  # type: ignore[arg-type]
            stale = await session.get(Upload, upload.id)
            if stale is not None:
                await session.delete(stale)
            await session.commit()
            await session.refresh(model_file)
        return model_file

    async def expire(self) -> int:
        """Delete uploads untouched for longer than the configured expiry; returns how many."""
        cutoff = utcnow() - timedelta(hours=self.storage.upload_expiry_hours)
        async with self.db.session() as session:
            stale = (await session.exec(select(Upload.id).where(col(Upload.updated_at) < cutoff))).all()
        for upload_id in stale:
            await self._discard(upload_id)
        return len(stale)

    # -- images --------------------------------------------------------------------------------

    async def add_image(self, user: User, data: bytes, *, version_id: int | None = None,
                        nsfw_level: int = 1) -> Image:
        """Store an image (PNG, JPEG or WebP) with its thumbnail and generation metadata; link the
        resources its metadata names to catalog versions by hash."""
        # Pillow is imported on the first image, not when the node starts (a tenth of a second).
        from node.core.images import inspect_image

        level = check_nsfw_level(nsfw_level)
        if version_id is not None:
            await self.catalog.editable_version(user, version_id)
        info: ImageInfo = await asyncio.to_thread(inspect_image, data, max_bytes=self.storage.max_image_bytes,
                                                  max_pixels=self.storage.max_image_pixels)
        if self.scorer is not None:
            level = await asyncio.to_thread(self.scorer.level, data, level)
        thumb_sha = await asyncio.to_thread(self._store_image, data, info)
        meta = info.generation.to_civitai_meta() if info.generation else None
        async with self.db.session() as session:
            image = Image(owner_id=user.id, version_id=version_id, sha256=info.sha256,  # type: ignore[arg-type]
                          thumbnail_sha256=thumb_sha, mime=info.mime, width=info.width, height=info.height,
                          size=info.size, nsfw_level=level, meta=meta)
            session.add(image)
            await session.flush()
            for ref in (info.generation.resource_refs() if info.generation else []):
                linked = await _version_for_hash(session, ref.hash) if ref.hash else None
                session.add(ImageResource(image_id=image.id, version_id=linked, name=(ref.name or None) and ref.name[:255],  # type: ignore[arg-type]
                                          kind=(ref.kind or "other")[:16], hash=ref.hash.lower()[:64] if ref.hash else None,
                                          weight=ref.weight))
            if version_id is not None:
                version = await session.get(ModelVersion, version_id)
                await session.exec(update(Model).where(col(Model.id) == version.model_id)  # type: ignore[call-overload, union-attr]
                                   .values(image_count=Model.image_count + 1))
            await session.commit()
            await session.refresh(image)
        return image

    def _store_image(self, data: bytes, info: ImageInfo) -> str | None:
        """Write the image and its thumbnail into the blob store; returns the thumbnail's SHA-256. Blocks."""
        import hashlib

        from node.core.images import make_thumbnail

        temp = self.blobs.new_temp_path()
        atomic_write_bytes(temp, data, mode=0o644)
        self.blobs.commit(temp, info.sha256)
        thumb = self.blobs.new_temp_path(".webp")
        try:
            make_thumbnail(self.blobs.path_for(info.sha256), thumb, max_pixels=self.storage.max_image_pixels)
            digest = hashlib.sha256(thumb.read_bytes()).hexdigest()
            self.blobs.commit(thumb, digest)
            return digest
        finally:
            thumb.unlink(missing_ok=True)


async def _version_for_hash(session, text: str) -> int | None:  # type: ignore[no-untyped-def]
    try:
        _kinds, value = normalize_hash(text)
    except InvalidInput:
        return None
    row = (await session.exec(select(ModelFile.version_id).join(FileHash, col(FileHash.file_id) == col(ModelFile.id))
                              .where(FileHash.value == value).order_by(col(ModelFile.id)))).first()
    return row


def _versions_for_values(conn: Any, values: list[str]) -> list[tuple[str, int]]:
    return [tuple(row) for row in conn.execute(  # type: ignore[misc]
        sa.select(_HASHES.c.value, _FILES.c.version_id).join(_FILES, _FILES.c.id == _HASHES.c.file_id)
        .where(_HASHES.c.value.in_(values)))]


async def versions_by_hashes(db: Database, hashes: Sequence[str]) -> list[int]:
    """Version ids of files with any of these hashes (any kind, any case), in the order asked, once each."""
    values = []
    for text in hashes:
        try:
            values.append(normalize_hash(text)[1])
        except InvalidInput:
            raise InvalidInput(f"not a hash: {str(text)[:80]!r} (expected hex: AutoV1, AutoV2, AutoV3, CRC32, "
                               "SHA256 or BLAKE3)") from None
    if not values:
        return []
    # One indexed Core query on a reader thread (no ORM session): this is the by-hash API's hot path.
    rows = await read(db, lambda conn: _versions_for_values(conn, values))
    by_value: dict[str, list[int]] = {}
    for value, version_id in rows:
        by_value.setdefault(value, []).append(version_id)
    ordered: list[int] = []
    for value in values:
        for version_id in sorted(by_value.get(value, [])):
            if version_id not in ordered:
                ordered.append(version_id)
    return ordered
