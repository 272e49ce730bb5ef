"""Federation sync: how fast a follower takes in another node's log, and how soon a change arrives.

1. Node A (`atrium serve`, a real process) holds a log of N entries (written straight into its SQLite
   database, signed with its key, cached under /tmp between runs). Node B, in this process, catches up
   on it through A's HTTP API the way its puller does (signed checkpoint, hash chain, Merkle root, one
   transaction) and the bench prints entries/s beside raw single-core Ed25519 verifications/s measured
   in the same run. Target (issue 5): >= 1.0x raw.
2. B then follows A with its real puller (long-poll); the bench changes a model on A through the API
   and times until B has applied the entry. Target: within 200 ms.

    python bench/federation_sync.py [--entries 100000] [--changes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from federation import merkle  # noqa: E402
from federation.log import canonical  # noqa: E402
from node.core.config import load_config  # noqa: E402
from node.core.identity import load_identity  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "atrium-bench-federation"
CACHE_VERSION = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def atrium(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    done = subprocess.run([sys.executable, "-m", "node", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"atrium {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def body(i: int) -> dict:
    return {"model": {"id": i, "name": f"Model {i}", "type": "LORA", "status": "Published", "nsfwLevel": 1,
                      "creator": "bench", "tags": ["bench"], "description": "x" * 200,
                      "versions": [{"id": i, "name": "v1", "baseModel": "SD 1.5", "air": f"urn:air:sd1:lora:origin:{i}@{i}",
                                    "files": [{"name": f"m{i}.safetensors", "size": 1000 + i,
                                               "sha256": hashlib.sha256(str(i).encode()).hexdigest()}]}]},
            "nodeName": "origin"}


def populate(data: Path, count: int) -> None:
    """Append `count` signed entries to the node's own log, as FederationLog.append would."""
    config = load_config(data)
    identity = load_identity(config.key_path)
    node_id = identity.node_id
    conn = sqlite3.connect(data / "atrium.db")
    prev, rows = "0" * 64, []
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    for seq in range(1, count + 1):
        data_bytes = canonical({"body": body(seq), "kind": "model.published", "node": node_id, "prev": prev,
                                "seq": seq, "ts": "2026-11-23T00:00:00Z"})
        entry_hash = hashlib.sha256(data_bytes).hexdigest()
        rows.append((node_id, seq, data_bytes, identity.sign(data_bytes), entry_hash,
                     merkle.leaf_hash(data_bytes).hex(), "model.published", now))
        prev = entry_hash
        if len(rows) == 5000:
            conn.executemany("INSERT INTO log_entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            rows.clear()
    if rows:
        conn.executemany("INSERT INTO log_entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("INSERT OR REPLACE INTO log_heads (origin, seq, entry_hash) VALUES (?, ?, ?)", (node_id, count, prev))
    conn.commit()
    conn.close()


def origin_node(count: int) -> Path:
    cached = CACHE / f"v{CACHE_VERSION}-{count}"
    if not (cached / "atrium.db").exists():
        shutil.rmtree(cached, ignore_errors=True)
        cached.parent.mkdir(parents=True, exist_ok=True)
        atrium("init", str(cached), "--name", "origin", "--no-demo")
        started = time.perf_counter()
        populate(cached, count)
        print(f"(wrote and signed {count:,} entries in {time.perf_counter() - started:.1f} s; cached in {cached})")
    return cached


def raw_verifications_per_second(data: Path, sample: int = 4000) -> float:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: F401

    identity = load_identity(load_config(data).key_path)
    key = identity.public_key
    conn = sqlite3.connect(data / "atrium.db")
    rows = conn.execute("SELECT data, sig FROM log_entries ORDER BY seq LIMIT ?", (sample,)).fetchall()
    conn.close()
    started = time.perf_counter()
    for message, sig in rows:
        key.verify(sig, message)
    return len(rows) / (time.perf_counter() - started)


def http(method: str, url: str, token: str, payload: object = None, data: bytes | None = None,
         headers: dict | None = None) -> dict:
    body_bytes = data if data is not None else (json.dumps(payload).encode() if payload is not None else None)
    request = urllib.request.Request(url, data=body_bytes, method=method,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                                              **(headers or {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def publish_one(base: str, token: str) -> int:
    from tests.catalog_fixtures import safetensors_bytes

    model = http("POST", f"{base}/api/node/v1/models", token, {"name": "Push Probe", "type": "LORA"})
    version = http("POST", f"{base}/api/node/v1/models/{model['id']}/versions", token,
                   {"name": "v1", "base_model": "SD 1.5"})
    blob = safetensors_bytes(seed=7)
    upload = http("POST", f"{base}/api/node/v1/versions/{version['id']}/uploads", token,
                  {"filename": "probe.safetensors", "size": len(blob)})
    http("PATCH", upload["url"] if upload["url"].startswith("http") else base + upload["url"], token, data=blob,
         headers={"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    http("POST", f"{base}/api/node/v1/models/{model['id']}/publish", token)
    return model["id"]


async def follower(tmp: Path, origin_url: str, origin_id: str, changes: int, base: str, token: str,
                   model_id: int) -> tuple[float, int, list[float]]:
    import federation
    from federation.sync import Syncer
    from node.core.db import Database

    data = tmp / "follower"
    atrium("init", str(data), "--name", "follower", "--no-demo")
    config = load_config(data)
    db = Database.from_config(config)
    identity = load_identity(config.key_path)
    log = federation.FederationLog(db, identity, "follower")
    peers = federation.Peers(db)
    syncer = Syncer(db, log, peers, config.federation)
    try:
        await syncer.open()
        started = time.perf_counter()
        applied = await syncer.catch_up(origin_url, origin_id, own=True)
        elapsed = time.perf_counter() - started
        await syncer.close()

        await peers.follow(origin_url)
        running = asyncio.create_task(syncer.run())
        head = (await log.head(origin_id))[0]
        deadline = time.monotonic() + 30
        while (await log.head(origin_id))[0] < head + 1 and time.monotonic() < deadline:  # the probe's publish
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)  # the puller is now waiting on A's log
        latencies = []
        for n in range(changes):
            head = (await log.head(origin_id))[0]
            sent = time.perf_counter()
            await asyncio.to_thread(http, "PATCH", f"{base}/api/node/v1/models/{model_id}", token,
                                    {"description": f"change {n}"})
            while (await log.head(origin_id))[0] <= head:
                if time.perf_counter() - sent > 10:
                    raise SystemExit("the follower did not apply a change within 10 s")
                await asyncio.sleep(0.002)
            latencies.append((time.perf_counter() - sent) * 1000)
            await asyncio.sleep(0.1)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        return elapsed, applied, latencies
    finally:
        await syncer.close()
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    cached = origin_node(args.entries)
    with tempfile.TemporaryDirectory(prefix="atrium-bench-fed-") as tmp_name:
        tmp = Path(tmp_name)
        origin = tmp / "origin"
        shutil.copytree(cached, origin)
        atrium("db", "upgrade", "--data", str(origin))  # a cache from an older schema
        token = atrium("users", "add", "maker", "--role", "creator", "--data", str(origin)).strip().splitlines()[-1]
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
        server = subprocess.Popen([sys.executable, "-m", "node", "serve", "--data", str(origin), "--port", str(port),
                                   "--migrate"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    with urllib.request.urlopen(f"{base}/api/node/v1/health", timeout=1):
                        break
                except OSError:
                    time.sleep(0.1)
            origin_id = json.loads(urllib.request.urlopen(f"{base}/.well-known/atrium-node").read())["id"]
            raw = raw_verifications_per_second(origin)
            model_id = publish_one(base, token)
            elapsed, applied, latencies = asyncio.run(
                follower(tmp, base, origin_id, args.changes, base, token, model_id))
            raw_after = raw_verifications_per_second(origin)
        finally:
            server.terminate()
            server.wait(timeout=20)
    rate = applied / elapsed
    raw_mean = (raw + raw_after) / 2
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"catch-up: {applied:,} entries in {elapsed:.2f} s = {rate:,.0f} entries/s "
          f"(checked with one checkpoint signature, the hash chain and the Merkle root, applied in one transaction)")
    print(f"raw Ed25519 verification, one core, same run: {raw_mean:,.0f}/s (before {raw:,.0f}, after {raw_after:,.0f})")
    print(f"ratio sync / raw verification: {rate / raw_mean:.2f}x; target >= 1.0x: "
          f"{'met' if rate >= raw_mean else 'MISSED'}")
    print(f"push to applied on the follower, {len(latencies)} changes: p50 {statistics.median(latencies):.0f} ms, "
          f"p99 {p99:.0f} ms, max {latencies[-1]:.0f} ms; target <= 200 ms: {'met' if p99 <= 200 else 'MISSED'}")


if __name__ == "__main__":
    main()
