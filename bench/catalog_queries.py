"""Catalog reads under load: `GET /api/v1/models` (query, tag and type filters) and by-hash lookups on a
node with 100,000 published models, against a bare aiohttp server answering a fixed JSON body of the
same size, measured in the same run with the same load generator.

The catalog is written straight into an initialised node's SQLite database with bulk inserts (the FTS5
triggers fill the search index) and cached under /tmp between runs; each run serves a fresh copy, so
`atrium serve --migrate` may upgrade it without touching the cache. Load comes from `wrk` (Debian:
`apt-get install wrk`; it costs little CPU next to a Python client) with a Lua script that walks a
shuffled list of realistic requests. The node runs with its defaults (access log and metrics on).

Each node is measured twice over:
- "cache off": `database.read_cache_mb = 0`, every request computed from the database;
- "cache on, warm, no writes": the defaults, after every request of the list was made once. The read
  cache (node/core/readcache.py) keeps answers until the next commit, so this is the figure of a
  catalog being browsed while nobody writes to it; any write (a download counts) empties it.

Listings are measured at --connections (50) concurrent clients. By-hash latency is measured at 1 and 4
connections: at 50 connections on 2 cores the p99 of any server is about 50 / throughput (a 5 ms p99
would take 10,000 req/s), so -c50 is reported for throughput only.

Targets (issue 3): listings p99 < 30 ms at 50 concurrent clients and throughput >= 25% of the bare
server's; by-hash lookups p99 < 5 ms.

    python bench/catalog_queries.py [--models 100000] [--duration 10] [--runs 2] [--connections 50]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(tempfile.gettempdir()) / "atrium-bench-catalog"
# Bump when the generated catalog changes, so stale caches are rebuilt.
CATALOG_VERSION = 1
LISTING_TARGET_P99_MS = 30.0
LISTING_TARGET_SHARE = 0.25
BY_HASH_TARGET_P99_MS = 5.0
# Connection counts at which by-hash latency is measured (and the listing's count for throughput).
BY_HASH_LATENCY_CONNECTIONS = (1, 4)

BASELINE = """
import sys
from aiohttp import web
body = open(sys.argv[2], "rb").read()
async def handler(request):
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_get("/{tail:.*}", handler)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

# Each wrk thread walks the request list from its own random start.
WRK_SCRIPT = """
local paths = {}
for line in io.lines("%(paths)s") do paths[#paths + 1] = line end
local i = 0
function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  i = math.random(#paths)
end
function request()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
"""

ADJECTIVES = ("cinematic dreamy dark bright retro neon vintage soft gritty ethereal painterly glossy detailed "
              "minimal surreal cozy epic moody pastel vivid gothic cyber rustic golden silver crystal").split()
NOUNS = ("cat dog fox dragon knight castle forest city portrait landscape robot witch samurai ocean mountain "
         "flower girl boy warrior mech car ship tower garden temple wolf owl tiger bear angel demon").split()
STYLES = ("style lora checkpoint mix merge detailer slider concept character pose lighting texture").split()
COMMON_TAGS = ("anime photorealistic style character concept clothing base model woman man landscape "
               "fantasy scifi portrait cartoon 3d realistic sexy nsfw celebrity game").split()
TYPE_WEIGHTS = {"LORA": 55, "Checkpoint": 20, "TextualInversion": 8, "LoCon": 6, "Controlnet": 2, "VAE": 2,
                "Upscaler": 1, "Poses": 1, "Wildcards": 1, "Workflows": 1, "DoRA": 2, "Other": 1}
BASE_WEIGHTS = {"SD 1.5": 30, "SDXL 1.0": 25, "Pony": 15, "Illustrious": 10, "Flux.1 D": 10, "SD 3.5": 3,
                "NoobAI": 4, "Other": 3}
HASH_KINDS = ("AutoV1", "AutoV2", "AutoV3", "SHA256", "CRC32", "BLAKE3")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weighted(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), list(weights.values()))[0]


def tag_vocabulary() -> list[str]:
    rare = [f"{a} {n}" for a in ADJECTIVES[:12] for n in NOUNS[:25]]
    return list(dict.fromkeys(COMMON_TAGS + NOUNS + rare))


def pick_tags(rng: random.Random, vocab: list[str]) -> set[str]:
    # Zipf-like: a few tags are on a large share of models, most on a handful.
    count = rng.randint(2, 7)
    return {vocab[min(int(rng.paretovariate(1.1)) - 1, len(vocab) - 1)] if rng.random() < 0.6
            else rng.choice(vocab) for _ in range(count)}


def sqlite_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")  # how SQLAlchemy stores DateTime on SQLite


def populate(db_path: Path, count: int, owner_id: int) -> None:
    """Write `count` published models, each with one version, one file and its six hashes."""
    rng = random.Random(1234)
    vocab = tag_vocabulary()
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA journal_mode = WAL")
    users = [(owner_id, None)]
    now = datetime(2025, 6, 1)
    with conn:
        for n in range(2, 501):
            name = f"{rng.choice(ADJECTIVES)}_{rng.choice(NOUNS)}{n}"
            conn.execute("INSERT INTO users (id, username, username_key, role, disabled, created_at) "
                         "VALUES (?, ?, ?, 'creator', 0, ?)", (n, name, name.lower(), sqlite_time(now)))
            users.append((n, name))
        owner_names = dict(conn.execute("SELECT id, username FROM users").fetchall())
        conn.executemany("INSERT INTO tags (id, name) VALUES (?, ?)", list(enumerate(vocab, start=1)))
        tag_ids = {name: i for i, name in enumerate(vocab, start=1)}
        models, versions, files, hashes, model_tags, search = [], [], [], [], [], []
        for mid in range(1, count + 1):
            adjective, noun, style = rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(STYLES)
            name = f"{adjective.title()} {noun.title()} {style.title()} {rng.randint(1, 9)}"
            mtype = weighted(rng, TYPE_WEIGHTS)
            owner = rng.choice(users)[0]
            created = now - timedelta(minutes=rng.randint(0, 3 * 365 * 24 * 60))
            published = created + timedelta(minutes=rng.randint(0, 600))
            downloads = int(rng.paretovariate(0.8) * 10)
            rating_count = rng.randint(0, 200) if rng.random() < 0.7 else 0
            rating_sum = sum(rng.randint(3, 5) for _ in range(min(rating_count, 5))) * rating_count // 5 \
                if rating_count else 0
            nsfw = rng.choice((1, 1, 1, 2, 4, 8, 16))
            description = f"A {adjective} {noun} {style} for {weighted(rng, BASE_WEIGHTS)}. " * rng.randint(1, 4)
            models.append((mid, owner, name, description, mtype, "Published", None, nsfw, 1,
                           '["Image","RentCivit","Rent","Sell"]', 1, 1, sqlite_time(created), sqlite_time(published),
                           sqlite_time(published), downloads, rng.randint(0, 500), rng.randint(0, 20),
                           rng.randint(0, 50), rating_count, rating_sum, 0))
            base = weighted(rng, BASE_WEIGHTS)
            trigger = f"{noun}{style}"
            versions.append((mid, mid, "v1.0", "", base, json.dumps([trigger]), None, "Published",
                             sqlite_time(created), sqlite_time(published), sqlite_time(published), downloads,
                             rating_count, rating_sum, rating_count, 0))
            sha = hashlib.sha256(b"file%d" % mid).hexdigest()
            b3 = hashlib.sha256(b"blake%d" % mid).hexdigest()
            v3 = hashlib.sha256(b"tensor%d" % mid).hexdigest()
            crc = f"{rng.getrandbits(32):08x}"
            v1 = f"{rng.getrandbits(32):08x}"
            files.append((mid, mid, f"{noun}_{style}_{mid}.safetensors", rng.randint(10_000_000, 7_000_000_000),
                          "Model", "SafeTensor", "fp16", "full", 1, sha, b3, crc, v1, v3, None, None,
                          "Success", "Success", sqlite_time(created)))
            for kind, value in zip(HASH_KINDS, (v1, sha[:10], v3[:12], sha, crc, b3)):
                hashes.append((mid, kind, value))
            tags = sorted(pick_tags(rng, vocab))
            model_tags.extend((mid, tag_ids[t]) for t in tags)
            search.append((mid, "\n".join([name, " ".join(tags), trigger, owner_names[owner], description])))
        conn.executemany(f"INSERT INTO models VALUES ({','.join('?' * 22)})", models)
        conn.executemany(f"INSERT INTO model_versions VALUES ({','.join('?' * 16)})", versions)
        conn.executemany(f"INSERT INTO model_files VALUES ({','.join('?' * 19)})", files)
        conn.executemany("INSERT INTO file_hashes VALUES (?, ?, ?)", hashes)
        conn.executemany("INSERT INTO model_tags VALUES (?, ?)", model_tags)
        conn.executemany("INSERT INTO model_search VALUES (?, ?)", search)
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def cached_catalog(count: int) -> Path:
    """An initialised node data directory with `count` models (built once, then reused)."""
    target = CACHE / f"v{CATALOG_VERSION}-{count}"
    if (target / "done").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    env = clean_env()
    subprocess.run([sys.executable, "-m", "node", "init", "--no-demo", str(target)], check=True,
                   capture_output=True, env=env, cwd=ROOT)
    subprocess.run([sys.executable, "-m", "node", "users", "add", "bench", "--role", "creator", "--no-token",
                    "--data", str(target)], check=True, capture_output=True, env=env, cwd=ROOT)
    populate(target / "atrium.db", count, owner_id=1)
    (target / "done").write_text("")
    print(f"built a catalog of {count:,} models in {time.monotonic() - started:.0f} s (cached in {target})")
    return target


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}


def listing_paths(db_path: Path, rng: random.Random, n: int = 2000) -> list[str]:
    """Requests as a browsing crowd sends them: query words, tags and types, alone and combined."""
    conn = sqlite3.connect(db_path)
    popular_tags = [name for (name,) in conn.execute(
        "SELECT t.name FROM tags t JOIN model_tags mt ON mt.tag_id = t.id GROUP BY t.id "
        "ORDER BY count(*) DESC LIMIT 60")]
    conn.close()
    words = ADJECTIVES + NOUNS + STYLES
    types = list(TYPE_WEIGHTS)
    paths = []
    for _ in range(n):
        params = ["limit=20"]
        shape = rng.random()
        if shape < 0.45:  # query, sometimes two words, sometimes a prefix being typed
            text = rng.choice(words)
            if rng.random() < 0.3:
                text = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
            elif rng.random() < 0.2:
                text = text[:max(2, len(text) - 2)]
            params.append("query=" + urllib.request.quote(text))
        if 0.3 < shape < 0.75:
            params.append("tag=" + urllib.request.quote(rng.choice(popular_tags)))
        if shape > 0.6 or rng.random() < 0.35:
            params.append("types=" + weighted(rng, TYPE_WEIGHTS) if rng.random() < 0.8 else f"types={rng.choice(types)}")
        if rng.random() < 0.25:
            params.append("sort=" + urllib.request.quote(rng.choice(("Newest", "Most Downloaded"))))
        paths.append("/api/v1/models?" + "&".join(params))
    return paths


def by_hash_paths(db_path: Path, rng: random.Random, n: int = 2000) -> list[str]:
    conn = sqlite3.connect(db_path)
    count = conn.execute("SELECT max(file_id) FROM file_hashes").fetchone()[0]
    values = [row[0] for row in conn.execute(
        "SELECT value FROM file_hashes WHERE kind = 'SHA256' AND file_id IN (%s)" %
        ",".join(str(rng.randint(1, count)) for _ in range(n)))]
    conn.close()
    return [f"/api/v1/model-versions/by-hash/{v}" for v in values]


class Server:
    """A server process on 127.0.0.1, stopped on exit."""

    def __init__(self, cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.log = log.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**clean_env(), **(env or {})},
                                     cwd=ROOT)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/node/v1/health", timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit(f"{cmd[:5]} did not start; see {log}")
                time.sleep(0.05)

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as response:
            assert response.status == 200, (path, response.status)
            return response.read()

    def get_all(self, paths: list[str], threads: int = 4) -> list[int]:
        """Request every path once (a few at a time); returns the body sizes."""
        with ThreadPoolExecutor(threads) as pool:
            return [len(body) for body in pool.map(self.get, paths)]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self.log.close()


def wrk(port: int, paths_file: Path, script: Path, *, duration: float, connections: int) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "--timeout", "10s",
                          "-s", str(script), f"http://127.0.0.1:{port}"], capture_output=True, text=True,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if errors or socket_errors:
        print(f"  wrk reported errors: {errors.group(0) if errors else ''} {socket_errors.group(0) if socket_errors else ''}")
    return {"rps": rps, "p99": float(p99.group(1)) * scale[p99.group(2)], "p50": float(p50.group(1)) * scale[p50.group(2)]}


SERVERS = ("cache off", "cache on", "bare")
CACHE_OFF_ENV = {"ATRIUM_DATABASE_READ_CACHE_MB": "0"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk measurement")
    parser.add_argument("--runs", type=int, default=2, help="alternating measurements of each server")
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    catalog = cached_catalog(args.models)
    rng = random.Random(42)
    # (suite, connections) pairs measured; by-hash at few connections for latency, at many for throughput.
    loads = [("listing", args.connections)] + [("by-hash", c) for c in (*BY_HASH_LATENCY_CONNECTIONS, args.connections)]
    with tempfile.TemporaryDirectory(prefix="atrium-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "node"
        # Bring the cached catalog to the current schema first: a migration over 100,000 models can take
        # minutes, longer than a server is given to start.
        subprocess.run([sys.executable, "-m", "node", "db", "upgrade", "--data", str(catalog)], check=True,
                       env=clean_env(), cwd=ROOT, capture_output=True)
        shutil.copytree(catalog, data)
        suites = {"listing": listing_paths(data / "atrium.db", rng), "by-hash": by_hash_paths(data / "atrium.db", rng)}
        servers: dict[str, Server] = {}
        try:
            for name, env in (("cache off", CACHE_OFF_ENV), ("cache on", {})):
                port = free_port()
                servers[name] = Server([sys.executable, "-m", "node", "serve", "--data", str(data), "--port", str(port)],
                                       port, tmp / f"node-{name.replace(' ', '-')}.log", env)
            files = {}
            for name, paths in suites.items():
                started = time.monotonic()
                sizes = servers["cache on"].get_all(paths)  # every answer once: the cache is warm
                warm = time.monotonic() - started
                mean = int(statistics.mean(sizes))
                paths_file = tmp / f"{name}.paths"
                paths_file.write_text("\n".join(paths) + "\n")
                script = tmp / f"{name}.lua"
                script.write_text(WRK_SCRIPT % {"paths": paths_file})
                body = tmp / f"{name}.json"
                filler = json.dumps({"items": [], "metadata": {}, "pad": ""})
                body.write_bytes(filler[:-2].encode() + b"x" * max(0, mean - len(filler)) + b'"}')
                files[name] = (paths_file, script, body, mean, statistics.median(sizes))
                print(f"{name}: {len(paths)} distinct requests, each made once in {warm:.1f} s to warm the cache")
                wrk(servers["cache off"].port, paths_file, script, duration=2, connections=args.connections)  # warm pages
            for name, (_paths, _script, body, _mean, _median) in files.items():
                port = free_port()
                servers[f"bare {name}"] = Server([sys.executable, "-c", BASELINE, str(port), str(body)], port,
                                                 tmp / f"bare-{name}.log")
            results: dict[tuple[str, int, str], list[dict[str, float]]] = {}
            for _run in range(args.runs):
                for suite, connections in loads:
                    paths_file, script = files[suite][:2]
                    for server in SERVERS:
                        target = servers[f"bare {suite}" if server == "bare" else server]
                        results.setdefault((suite, connections, server), []).append(
                            wrk(target.port, paths_file, script, duration=args.duration, connections=connections))
            rss = {name: rss_mb(server.proc.pid) for name, server in servers.items() if not name.startswith("bare")}
        finally:
            for server in servers.values():
                server.stop()
    print(f"{args.models:,} models, wrk for {args.duration:.0f} s per figure, {args.runs} alternating runs, "
          f"{os.cpu_count()} CPUs; figures are medians of the runs (runs: req/s / p99 ms)")
    print(f"node RSS at the end: cache off {rss['cache off']:.0f} MB, cache on {rss['cache on']:.0f} MB")
    for suite, connections in loads:
        _paths, _script, _body, mean, median = files[suite]
        print(f"{suite} at -c{connections}: response body mean {mean:,} B (median {median:,.0f} B)")
        figures = {}
        for server in SERVERS:
            runs = results[(suite, connections, server)]
            f = figures[server] = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p99", "p50")}
            label = {"cache off": "atrium, cache off", "cache on": "atrium, cache on (warm, no writes)",
                     "bare": "bare aiohttp"}[server]
            print(f"  {label:36s} {f['rps']:8.0f} req/s   p50 {f['p50']:6.2f} ms   p99 {f['p99']:6.2f} ms   "
                  f"(runs: {', '.join('%.0f/%.1f' % (r['rps'], r['p99']) for r in runs)})")
        for server in ("cache off", "cache on"):
            f = figures[server]
            share = f["rps"] / figures["bare"]["rps"]
            if suite == "listing":
                print(f"  {server}: throughput share {share:.1%} (target >= {LISTING_TARGET_SHARE:.0%}: "
                      f"{'met' if share >= LISTING_TARGET_SHARE else 'MISSED'}); p99 target < "
                      f"{LISTING_TARGET_P99_MS:.0f} ms: {'met' if f['p99'] < LISTING_TARGET_P99_MS else 'MISSED'}")
            elif connections in BY_HASH_LATENCY_CONNECTIONS:
                print(f"  {server}: p99 target < {BY_HASH_TARGET_P99_MS:.0f} ms at -c{connections}: "
                      f"{'met' if f['p99'] < BY_HASH_TARGET_P99_MS else 'MISSED'}")
            else:
                print(f"  {server}: throughput share {share:.1%} (latency at this load is -c{connections} / throughput)")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


if __name__ == "__main__":
    main()
