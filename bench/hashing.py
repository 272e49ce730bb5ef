"""Throughput of the multi-hasher (node.core.hashes) against hashlib.sha256 alone, same file, same run.

Writes a 512 MiB safetensors-shaped file to a temp dir, reads it once to warm the page cache, then
times alternately: SHA256 alone (read + hash), the concurrent FileHasher via hash_file, and the same
hasher with everything in one thread. The best of --runs is reported as a ratio to SHA256 alone.
Target (ingest issue): the whole ingest at most 2.0x SHA256 alone.

    python bench/hashing.py [--size-mib 512] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.core.hashes import READ_CHUNK_BYTES, FileHasher, hash_file  # noqa: E402


def write_file(path: Path, size: int) -> None:
    """A valid safetensors file of about `size` bytes, so the tensor-data hash runs too."""
    data_len = size - 4096
    header = json.dumps({"w": {"dtype": "U8", "shape": [data_len], "data_offsets": [0, data_len]}})
    header_bytes = header.encode().ljust(4096 - 8)
    block = os.urandom(8 * 1024 * 1024)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(header_bytes)) + header_bytes)
        left = data_len
        while left:
            handle.write(block[:min(left, len(block))])
            left -= min(left, len(block))


def sha256_alone(path: Path) -> None:
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as handle:
        while chunk := handle.read(READ_CHUNK_BYTES):
            digest.update(chunk)
    digest.hexdigest()


def multi_concurrent(path: Path) -> None:
    asyncio.run(hash_file(path))


def multi_serial(path: Path) -> None:
    hasher = FileHasher(concurrent=False)
    with path.open("rb", buffering=0) as handle:
        while chunk := handle.read(READ_CHUNK_BYTES):
            hasher.update(chunk)
    hasher.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    cases = {"sha256 alone": sha256_alone, "FileHasher (concurrent)": multi_concurrent,
             "FileHasher (one thread)": multi_serial}
    best = {name: float("inf") for name in cases}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.safetensors"
        write_file(path, size)
        sha256_alone(path)  # warm the page cache
        for _ in range(args.runs):
            for name, func in cases.items():
                started = time.perf_counter()
                func(path)
                best[name] = min(best[name], time.perf_counter() - started)
    print(f"{args.size_mib} MiB file, {os.cpu_count()} CPUs, best of {args.runs}")
    for name, seconds in best.items():
        ratio = seconds / best["sha256 alone"]
        print(f"  {name:25s} {args.size_mib / seconds:7.0f} MiB/s   {ratio:4.2f}x sha256 alone")


if __name__ == "__main__":
    main()
