"""BitTorrent metadata for stored files: one reproducible hybrid (v1 + v2) torrent per file.

A torrent here describes exactly one file of a model version. The same bytes under the same name give
the same torrent on every node (no creation date, no creator, a piece size that depends only on the
size), so two nodes that publish or mirror the same file join one swarm. What varies per node, the web
seed (this node's download URL), lives outside the info dictionary: it is added when the `.torrent` is
served, so it changes neither the info-hashes nor the signed manifest.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import libtorrent as lt

from node.core.errors import InvalidInput

KIB = 1024
MIB = 1024 * KIB
MIN_PIECE = 256 * KIB
MAX_PIECE = 16 * MIB
# Aim for at most this many pieces: enough to spread a download over peers, few enough that the v1
# piece list and the v2 piece layer stay small (2,048 x 52 bytes ~ 104 KB per torrent).
TARGET_PIECES = 2048


def piece_size_for(size: int) -> int:
    """The piece size for a file of `size` bytes: the smallest power of two from 256 KiB to 16 MiB
    that keeps the file within TARGET_PIECES pieces."""
    piece = MIN_PIECE
    while piece < MAX_PIECE and size > piece * TARGET_PIECES:
        piece *= 2
    return piece


@dataclass(frozen=True)
class TorrentMeta:
    """A file's torrent without its web seeds, as stored, with the identifiers read out of it."""

    data: bytes  # bencoded {info, piece layers}
    info_hash_v1: str  # hex, 40
    info_hash_v2: str  # hex, 64
    file_root: str  # hex, 64: BEP 52 merkle root of the file (independent of the piece size)
    piece_size: int
    name: str
    size: int

    @classmethod
    def from_bytes(cls, data: bytes) -> TorrentMeta:
        """Read a stored torrent (or a downloaded `.torrent`) and check it describes a single file."""
        try:
            decoded = lt.bdecode(data)
            info = decoded[b"info"]
            ti = lt.torrent_info(lt.bencode(decoded))
        except Exception as exc:  # libtorrent raises RuntimeError / KeyError / TypeError on garbage
            raise InvalidInput(f"not a valid torrent: {exc}") from None
        if ti.num_files() != 1 or b"file tree" not in info:
            raise InvalidInput("not a single-file v2-capable torrent")
        name = info[b"name"].decode("utf-8")
        ((entry_name, entry),) = info[b"file tree"].items()
        root = entry[b""].get(b"pieces root", b"")
        hashes = ti.info_hashes()
        return cls(data=data, info_hash_v1=str(hashes.v1), info_hash_v2=str(hashes.v2), file_root=root.hex(),
                   piece_size=ti.piece_length(), name=name, size=ti.total_size())

    def with_web_seeds(self, urls: list[str], trackers: list[str] = ()) -> bytes:  # type: ignore[assignment]
        """The `.torrent` to hand out: the stored dictionary plus `url-list` (BEP 19 web seeds) and, when
        given, `announce` / `announce-list` (trackers). Neither changes the info-hashes."""
        decoded = lt.bdecode(self.data)
        if urls:
            decoded[b"url-list"] = [u.encode() for u in urls]
        if trackers:
            decoded[b"announce"] = trackers[0].encode()
            decoded[b"announce-list"] = [[t.encode()] for t in trackers]
        return lt.bencode(decoded)

    def magnet(self, web_seeds: Sequence[str] = (), trackers: Sequence[str] = ()) -> str:
        return magnet_link(self.name, self.size, self.info_hash_v1, self.info_hash_v2, web_seeds, trackers)

    def torrent_info(self) -> lt.torrent_info:
        return lt.torrent_info(lt.bdecode(self.data))


def magnet_link(name: str, size: int, info_hash_v1: str, info_hash_v2: str, web_seeds: Sequence[str] = (),
                trackers: Sequence[str] = ()) -> str:
    """A magnet link naming both info-hashes (hybrid), the file name and size, and web seeds."""
    parts = [f"xt=urn:btih:{info_hash_v1}", f"xt=urn:btmh:1220{info_hash_v2}", f"dn={quote(name, safe='')}",
             f"xl={size}"]
    parts += [f"tr={quote(t, safe='')}" for t in trackers]
    parts += [f"ws={quote(u, safe='')}" for u in web_seeds]
    return "magnet:?" + "&".join(parts)


def make_torrent(blob: Path, name: str, work_dir: Path) -> TorrentMeta:
    """Hash `blob` into a hybrid torrent for a single file called `name` (blocking: hashes the file).

    libtorrent reads the file under its torrent name, so a hard link (or, across filesystems, a
    symbolic link) named `name` is made in a fresh directory under `work_dir` and removed afterwards.
    """
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise InvalidInput(f"a torrent needs a plain file name, not {name!r}")
    size = blob.stat().st_size
    if size == 0:
        raise InvalidInput("an empty file cannot be shared as a torrent")
    work_dir.mkdir(parents=True, exist_ok=True)
    staging = work_dir / f"torrent-{os.urandom(8).hex()}"
    staging.mkdir()
    try:
        link = staging / name
        try:
            os.link(blob, link)
        except OSError:
            link.symlink_to(blob.resolve())
        creator = lt.create_torrent(lt.list_files(str(link)), piece_size_for(size), 0)  # 0: hybrid v1 + v2
        lt.set_piece_hashes(creator, str(staging))
        generated = creator.generate()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stored = {key: value for key, value in generated.items() if key in (b"info", b"piece layers")}
    return TorrentMeta.from_bytes(lt.bencode(stored))


__all__ = ["TorrentMeta", "magnet_link", "make_torrent", "piece_size_for"]
