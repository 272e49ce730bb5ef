"""Ledger: transfers per second, and the p99 of a bounty award under 32 concurrent HTTP clients.

1. Transfers/s on SQLite and on PostgreSQL: tips between users through `Ledger.tip` (guarded balance
   updates, postings, transaction row, idempotency key, one commit each), one at a time and 8 at once.
   Baseline in the same run and database: a bare one-row INSERT per transaction through the same session
   factory (same BEGIN IMMEDIATE / commit). The ratio says what the bookkeeping costs.
2. Award latency: the real app with the bounties plugin served on 127.0.0.1; 32 clients (one
   aiohttp session each, one user each) each award their share on every one of B bounties, all at once.
   Baseline in the same run: 32 clients hammering GET /api/node/v1/ledger/balance (authenticated read).

    python bench/ledger.py [--transfers 2000] [--bounties 20] [--backend sqlite|postgresql|both]

PostgreSQL: $ATRIUM_TEST_PG_DSN, else postgresql://postgres@127.0.0.1:5432/postgres (a scratch database is
created and dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
from aiohttp import web  # noqa: E402
from sqlalchemy import text  # noqa: E402

import plugins.bounties  # noqa: E402
from node.app import create_app  # noqa: E402
from node.api.keys import NODE  # noqa: E402
from node.core.config import config_from_mapping  # noqa: E402
from node.core.db import Database  # noqa: E402
from node.core.identity import create_identity  # noqa: E402
from node.core.ledger import OPERATOR  # noqa: E402
from node.core.plugins import PluginHost  # noqa: E402
from node.core.tables import Image  # noqa: E402
from plugins.bounties import service_for  # noqa: E402
from plugins.bounties.bounties import NewBounty  # noqa: E402

PG_ADMIN_DSN = os.environ.get("ATRIUM_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
CLIENTS = 32


def config_for(data_dir: Path, url: str) -> Any:
    data_dir.mkdir(parents=True, exist_ok=True)
    create_identity(data_dir / "node.key")
    return config_from_mapping(data_dir, {
        "database": {"url": url}, "accounts": {"argon2_memory_kib": 8192, "argon2_time_cost": 1},
        "swarm": {"enabled": False}, "federation": {"sync": False}, "metrics": {"enabled": False},
        "http": {"access_log": False}, "plugins": {"bounties": {"expiry_check_seconds": 86400}}}, env={})


async def pg_database() -> str:
    name = f"atrium_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name


async def drop_pg(url: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    await conn.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def transfers(node: Any, n: int) -> dict[str, float]:
    """Transfers/s of the ledger against a bare insert per transaction."""
    db, ledger = node.db, node.ledger
    users = [await node.accounts.create_user(f"t{i}_{secrets.token_hex(2)}") for i in range(8)]
    for user in users:
        await ledger.grant(user.username, 10**8, actor=OPERATOR)
    async with db.session() as session:
        serial = "SERIAL" if db.dialect == "postgresql" else "INTEGER"
        await session.exec(text(f"CREATE TABLE IF NOT EXISTS bench_bare (id {serial} PRIMARY KEY, v INTEGER)"))
        await session.commit()

    async def bare(i: int) -> None:
        async with db.session() as session:
            await session.exec(text("INSERT INTO bench_bare (v) VALUES (:v)"), params={"v": i})
            await session.commit()

    async def tip(i: int) -> None:
        src, dst = users[i % 8], users[(i + 1) % 8]
        await ledger.tip(src, dst.username, 1, idempotency_key=f"b{i}")

    results: dict[str, float] = {}
    for label, op in (("bare insert", bare), ("ledger tip", tip)):
        start = time.perf_counter()
        for i in range(n):
            await op(i)
        results[f"{label}, sequential"] = n / (time.perf_counter() - start)
    for label, op, offset in (("bare insert", bare, n), ("ledger tip", tip, n)):
        start = time.perf_counter()
        for chunk in range(0, n, 8):
            await asyncio.gather(*[op(offset + chunk + j) for j in range(8)])
        results[f"{label}, 8 at once"] = n / (time.perf_counter() - start)
    totals = await ledger.totals()
    assert totals.supply == totals.grants and totals.balance_sum == 0 and totals.negative_accounts == 0
    return results


async def awards(node: Any, base: str, bounty_count: int) -> dict[str, float]:
    """p50/p99 of awards by 32 concurrent clients, and of balance reads as the baseline."""
    bounties = service_for(node)
    creator = await node.accounts.create_user(f"maker_{secrets.token_hex(2)}")
    entrant = await node.accounts.create_user(f"entrant_{secrets.token_hex(2)}")
    await node.ledger.grant(creator.username, 10**9, actor=OPERATOR)
    clients = []
    for i in range(CLIENTS):
        user = await node.accounts.create_user(f"c{i}_{secrets.token_hex(2)}")
        await node.ledger.grant(user.username, 10**6, actor=OPERATOR)
        clients.append((user, (await node.accounts.issue_token(user, "bench")).secret))
    async with node.db.session() as session:
        image = Image(owner_id=entrant.id, sha256=secrets.token_hex(32), mime="image/png", width=8, height=8, size=1)
        session.add(image)
        await session.commit()
        image_id = image.id
    targets = []
    for b in range(bounty_count):
        bounty, _ = await bounties.create(creator, NewBounty(name=f"b{b}", amount=100,
                                                             expires_at=datetime.now(UTC) + timedelta(days=30)))
        for user, _ in clients:
            await bounties.contribute(user, bounty.id, 10)
        entry = await bounties.enter(entrant, bounty.id, image_id=image_id)
        targets.append((bounty.id, entry.id))

    async def hammer(make: Any) -> list[float]:
        latencies: list[float] = []

        async def one(index: int, token: str) -> None:
            async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {token}"}) as session:
                for method, path, body in make(index):
                    start = time.perf_counter()
                    async with session.request(method, path, json=body) as response:
                        await response.read()
                        assert response.status in (200, 201), (response.status, await response.text())
                    latencies.append(time.perf_counter() - start)

        await asyncio.gather(*[one(i, token) for i, (_, token) in enumerate(clients)])
        return latencies

    reads = await hammer(lambda i: [("GET", "/api/node/v1/ledger/balance", None)] * bounty_count)
    started = time.perf_counter()
    writes = await hammer(lambda i: [("POST", f"/api/node/v1/bounties/{b}/awards", {"entry_id": e})
                                     for b, e in targets])
    elapsed = time.perf_counter() - started
    assert await bounties.escrow_mismatches() == []
    return {"reads": len(reads), "read p50": pct(reads, 0.5) * 1000, "read p99": pct(reads, 0.99) * 1000,
            "awards": len(writes), "award p50": pct(writes, 0.5) * 1000, "award p99": pct(writes, 0.99) * 1000,
            "awards/s": len(writes) / elapsed, "award mean": statistics.mean(writes) * 1000}


async def run_backend(backend: str, args: argparse.Namespace, tmp: Path) -> None:
    url = f"sqlite:///{tmp / backend / 'atrium.db'}" if backend == "sqlite" else await pg_database()
    try:
        config = config_for(tmp / backend, url)
        db = Database.from_config(config)
        await db.upgrade()
        await db.close()
        host = PluginHost([], available={})
        host.register(plugins.bounties, "bounties")
        app = create_app(config, plugins=host)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            node = app[NODE]
            t = await transfers(node, args.transfers)
            print(f"\n[{backend}] transfers ({args.transfers} each)")
            for mode in ("sequential", "8 at once"):
                bare, tip = t[f"bare insert, {mode}"], t[f"ledger tip, {mode}"]
                print(f"  {mode:<11} bare insert {bare:8.0f}/s   ledger tip {tip:8.0f}/s   ratio {tip / bare:.2f}x")
            a = await awards(node, f"http://127.0.0.1:{port}", args.bounties)
            print(f"[{backend}] {CLIENTS} concurrent clients over HTTP")
            print(f"  baseline GET balance  n={a['reads']:.0f}  p50 {a['read p50']:.1f} ms  p99 {a['read p99']:.1f} ms")
            print(f"  POST award            n={a['awards']:.0f}  p50 {a['award p50']:.1f} ms  "
                  f"p99 {a['award p99']:.1f} ms  ({a['awards/s']:.0f} awards/s)  "
                  f"p99 ratio to baseline {a['award p99'] / a['read p99']:.2f}x")
        finally:
            await runner.cleanup()
    finally:
        if backend == "postgresql":
            await drop_pg(url)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transfers", type=int, default=2000)
    parser.add_argument("--bounties", type=int, default=20)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    with tempfile.TemporaryDirectory(prefix="atrium-bench-ledger-") as tmp:
        for backend in backends:
            await run_backend(backend, args, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
