"""Every hash a model file is known by, computed in one streaming pass.

`FileHasher` is fed a file's bytes in order and returns `FileHashes`: SHA256, BLAKE3 and CRC32 of the
whole file, the old A1111 hash (AutoV1), AutoV2 (the first 10 hex of SHA256) and, for safetensors files,
the tensor-data hash (A1111's "addnet" hash, Civitai's AutoV3): SHA256 of everything after the 8-byte
length and the JSON header, so it survives edits to `__metadata__`.

The work is two SHA256 passes plus BLAKE3 and CRC32. All four release the GIL on large buffers, so the
hasher splits them into two groups of about equal cost ({SHA256, CRC32} and {tensor SHA256, BLAKE3})
that run on a shared two-thread pool while the caller reads the next chunk. Measured on the project's
2-core machine (bench/hashing.py, 512 MiB): 1.75x the time of SHA256 alone, against 2.9-3.1x with
everything in one thread. The floor on two cores is about 1.65x: here CRC32 (zlib 1.2.13) costs 0.7
and BLAKE3 0.6 of a SHA256. BLAKE3's own multithreading (max_threads=AUTO) made it slower (3.1x):
it fights the other group for the same two cores.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from threading import Lock

import blake3

try:  # ISA-L's CRC32 is several times faster than zlib's (0.7 of a SHA256 here, down to about 0.15)
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib gives the same values
    _crc32 = zlib.crc32

from node.core.errors import InvalidInput
from node.core.formats import MAX_HEADER_BYTES

# AutoV1 is SHA256 of the 64 KiB at 1 MiB. A1111 hashed whatever was there (even nothing) for shorter
# files; Civitai reports no AutoV1 under 2 MiB, and so do we, so every AutoV1 covers the full window.
AUTOV1_START = 0x100000
AUTOV1_END = 0x110000
AUTOV1_MIN_SIZE = 2 * 1024 * 1024
# Small updates (an HTTP body arrives in ~64 KiB pieces) are gathered into batches this big before
# they go to the pool, so thread hand-offs cost nothing next to the hashing.
BATCH_BYTES = 1024 * 1024
# hash_file reads this much at a time: large enough for few hand-offs, small enough to keep memory
# flat (at most about three chunks are alive at once).
READ_CHUNK_BYTES = 4 * 1024 * 1024

_pool: ThreadPoolExecutor | None = None
_pool_lock = Lock()


def _hash_pool() -> ThreadPoolExecutor:
    # One pool for the process: two workers match the two hash groups, and hashers that run at the
    # same time share the cores instead of each starting threads.
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="atrium-hash")
        return _pool


@dataclass(frozen=True)
class FileHashes:
    """The hashes of one file, as lowercase hex; `autov1`/`autov3` are None where undefined."""

    size: int
    sha256: str
    blake3: str
    crc32: str
    autov1: str | None
    autov2: str
    autov3: str | None

    def as_civitai(self) -> dict[str, str]:
        """The `hashes` object of Civitai's API: uppercase hex, AutoV3 shortened to 12 digits."""
        hashes = {"AutoV1": self.autov1, "AutoV2": self.autov2,
                  "AutoV3": self.autov3[:12] if self.autov3 else None,
                  "SHA256": self.sha256, "CRC32": self.crc32, "BLAKE3": self.blake3}
        return {name: value.upper() for name, value in hashes.items() if value is not None}


class FileHasher:
    """Computes `FileHashes` from a file's bytes fed in order with `update`, then `finish`.

    The tensor-data hash is computed when the file starts like safetensors: an 8-byte little-endian
    header length N of at most 100 MB followed by `{`; it covers the bytes after offset 8 + N, so the
    header boundary may fall anywhere inside or between chunks. It is None when the file is shorter
    than 8 + N. This is a hash, not a validation: `node.core.formats` says whether the header is good.

    AutoV1 is None for files under 2 MiB, as on Civitai.

    With `concurrent=False` everything runs in the calling thread (slower; kept for the benchmark).
    Feed one hasher from one thread at a time.
    """

    def __init__(self, *, concurrent: bool = True) -> None:
        self._sha256 = hashlib.sha256()
        self._tensor_sha256 = hashlib.sha256()
        self._blake3 = blake3.blake3()
        self._crc32 = 0
        self._size = 0            # bytes received by update()
        self._dispatched = 0      # bytes handed to the hash groups
        self._head = bytearray()  # the first 9 bytes: length prefix and the header's first byte
        self._data_start: int | None = None  # offset of tensor data; -1 when not safetensors
        self._autov1_window = bytearray()
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._concurrent = concurrent
        self._futures: list[Future[None] | None] = [None, None]
        self._finished = False

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes of the file."""
        if self._finished:
            raise RuntimeError("FileHasher.update() after finish()")
        # The hash groups may still be reading this buffer after we return, so it must not change
        # under them: bytes are immutable, anything else is copied.
        chunk = data if isinstance(data, bytes) else bytes(data)
        if not chunk:
            return
        start = self._size
        self._size += len(chunk)
        if len(self._head) < 9:
            self._head += chunk[:9 - len(self._head)]
            if len(self._head) == 9:
                self._data_start = _tensor_data_start(bytes(self._head))
        if start < AUTOV1_END and self._size > AUTOV1_START:
            self._autov1_window += chunk[max(0, AUTOV1_START - start):AUTOV1_END - start]
        if len(chunk) >= BATCH_BYTES:
            self._flush_pending()
            self._dispatch(chunk)
        else:
            self._pending.append(chunk)
            self._pending_size += len(chunk)
            if self._pending_size >= BATCH_BYTES:
                self._flush_pending()

    def finish(self) -> FileHashes:
        """Wait for the hash groups and return the file's hashes. The hasher cannot be reused."""
        if self._finished:
            raise RuntimeError("FileHasher.finish() called twice")
        if self._data_start is None:
            self._data_start = -1  # fewer than 9 bytes: not safetensors
        self._flush_pending()
        for future in self._futures:
            if future is not None:
                future.result()
        self._finished = True
        sha256 = self._sha256.hexdigest()
        autov1 = None
        if self._size >= AUTOV1_MIN_SIZE:
            autov1 = hashlib.sha256(self._autov1_window).hexdigest()[:8]
        autov3 = None
        if self._data_start >= 0 and self._size >= self._data_start:
            autov3 = self._tensor_sha256.hexdigest()
        return FileHashes(size=self._size, sha256=sha256, blake3=self._blake3.hexdigest(),
                          crc32=f"{self._crc32:08x}", autov1=autov1, autov2=sha256[:10], autov3=autov3)

    def _flush_pending(self) -> None:
        if self._pending:
            batch = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            self._dispatch(batch)

    def _dispatch(self, batch: bytes) -> None:
        offset = self._dispatched
        self._dispatched += len(batch)
        # The head is complete before any batch is dispatched, except at finish() for tiny files.
        data_start = self._data_start if self._data_start is not None else -1
        tensor_part: memoryview | None = None
        if 0 <= data_start < offset + len(batch):
            tensor_part = memoryview(batch)[max(0, data_start - offset):]
        if not self._concurrent:
            self._group_whole(batch)
            self._group_tensor(batch, tensor_part)
            return
        pool = _hash_pool()
        # Each group waits for its own previous batch only, which keeps its updates in file order
        # while letting the caller read ahead and the two groups drift by one batch.
        for index, task in ((0, lambda: self._group_whole(batch)),
                            (1, lambda: self._group_tensor(batch, tensor_part))):
            previous = self._futures[index]
            if previous is not None:
                previous.result()
            self._futures[index] = pool.submit(task)

    def _group_whole(self, batch: bytes) -> None:
        self._sha256.update(batch)
        self._crc32 = _crc32(batch, self._crc32)

    def _group_tensor(self, batch: bytes, tensor_part: memoryview | None) -> None:
        self._blake3.update(batch)
        if tensor_part is not None:
            self._tensor_sha256.update(tensor_part)


def _tensor_data_start(head: bytes) -> int:
    # A file claiming a header over the format's limit is not safetensors: no tensor-data hash.
    header_length = int.from_bytes(head[:8], "little")
    if header_length <= MAX_HEADER_BYTES and head[8:9] == b"{":
        return 8 + header_length
    return -1


def hash_bytes(data: bytes) -> FileHashes:
    """`FileHashes` of bytes already in memory (small files, tests)."""
    hasher = FileHasher()
    hasher.update(data)
    return hasher.finish()


async def hash_file(path: Path | str, *, chunk_size: int = READ_CHUNK_BYTES) -> FileHashes:
    """`FileHashes` of the file at `path`, read in a worker thread with flat memory."""
    return await asyncio.to_thread(_hash_file_blocking, Path(path), chunk_size)


def _hash_file_blocking(path: Path, chunk_size: int) -> FileHashes:
    hasher = FileHasher()
    with path.open("rb", buffering=0) as handle:
        while chunk := handle.read(chunk_size):
            hasher.update(chunk)
    return hasher.finish()


# What a hash of each length may be, in Civitai's names.
HASH_KINDS_BY_LENGTH = {
    8: ("AutoV1", "CRC32"),
    10: ("AutoV2",),
    12: ("AutoV3",),
    64: ("SHA256", "BLAKE3"),
}
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")


class InvalidHash(InvalidInput):
    """A string given as a file hash is not one."""

    code = "invalid_hash"


def normalize_hash(text: str) -> tuple[tuple[str, ...], str]:
    """Recognise a user-supplied hash by its length: return (candidate kinds, lowercase hex).

    8 hex digits may be AutoV1 or CRC32, 10 AutoV2, 12 the short AutoV3, 64 SHA256 or BLAKE3.
    """
    value = text.strip()
    if not _HEX_RE.match(value):
        raise InvalidHash(f"hash {text!r} is not hexadecimal")
    kinds = HASH_KINDS_BY_LENGTH.get(len(value))
    if kinds is None:
        raise InvalidHash(f"hash {text!r} has {len(value)} hex digits; expected 8 (AutoV1, CRC32), "
                          "10 (AutoV2), 12 (AutoV3) or 64 (SHA256, BLAKE3)")
    return kinds, value.lower()
