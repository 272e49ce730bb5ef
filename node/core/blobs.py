"""The content-addressed blob store: `blobs/sha256/ab/cd/<hash>` under the data directory.

Bytes arrive in a temp file inside the store (same filesystem, so the final move is an atomic rename)
and enter the store only once every hash is known and every check has passed. The same bytes stored
twice occupy the disk once.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from node.core.errors import InvalidInput, NotFound

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    """Blobs on the local disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"

    def prepare(self) -> None:
        """Create the store's directories (idempotent)."""
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        """Where the blob with this SHA-256 lives (whether or not it exists)."""
        if not SHA256_RE.match(sha256):
            raise InvalidInput(f"not a SHA-256 digest: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def open_path(self, sha256: str) -> Path:
        """The path of a stored blob; NotFound when it is not in the store."""
        path = self.path_for(sha256)
        if not path.is_file():
            raise NotFound(f"blob {sha256} is not in this node's store")
        return path

    def new_temp_path(self, suffix: str = ".part") -> Path:
        """A fresh temp file name inside the store (nothing is created)."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return self.tmp_dir / f"{secrets.token_hex(16)}{suffix}"

    def commit(self, temp_path: Path, sha256: str) -> Path:
        """Move a fully checked temp file into the store under its SHA-256.

        The caller has verified the digest. When the blob is already stored the temp file is
        deleted instead, so identical uploads share one copy. Blocks briefly (fsync): call from
        a worker thread in async code.
        """
        target = self.path_for(sha256)
        if target.is_file():
            temp_path.unlink(missing_ok=True)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(temp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(temp_path, 0o444)
        os.replace(temp_path, target)
        return target

    def delete(self, sha256: str) -> None:
        """Remove a blob (the caller made sure nothing refers to it)."""
        self.path_for(sha256).unlink(missing_ok=True)

    def clean_temp(self, older_than_seconds: float = 0) -> int:
        """Delete leftover temp files (from crashed or abandoned uploads); returns how many."""
        import time

        if not self.tmp_dir.is_dir():
            return 0
        removed = 0
        now = time.time()
        for path in self.tmp_dir.iterdir():
            if path.is_file() and now - path.stat().st_mtime >= older_than_seconds:
                path.unlink(missing_ok=True)
                removed += 1
        return removed
