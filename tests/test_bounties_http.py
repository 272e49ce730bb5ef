"""The bounties HTTP API on a node with the plugin enabled: the whole flow, bad input, and 32 concurrent
clients hammering contributions and awards on one bounty, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from PIL import Image

import plugins.bounties
from node.app import create_app
from node.core.config import Config
from node.core.plugins import PluginHost
from node.core.tables import Role
from plugins.bounties import service_for
from plugins.bounties.bounties import NewBounty
from tests.conftest import Api, wait_for
from tests.ledger_fixtures import Books

CLIENTS = 32
FUTURE = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()


def png() -> bytes:
    """A small PNG of a random colour (each one a different file)."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8), tuple(random.randrange(256) for _ in range(3))).save(out, "PNG")  # type: ignore[arg-type]
    return out.getvalue()


def bounties_host() -> PluginHost:
    host = PluginHost([], available={})
    host.register(plugins.bounties, "bounties")
    return host


@pytest.fixture
async def bapi(config: Config, aiohttp_client: Any) -> Api:
    """The real app with the bounties plugin, on each database backend."""
    app = create_app(config, plugins=bounties_host())
    return Api(client=await aiohttp_client(app), app=app)


def books_of(api: Api) -> Books:
    node = api.node
    return Books(db=node.db, accounts=node.accounts, ledger=node.ledger, bounties=service_for(node),
                 catalog=node.catalog)


async def fund(api: Api, admin: str, username: str, amount: int) -> None:
    response = await api.call("POST", "/api/node/v1/ledger/grants", admin, json={"to": username, "amount": amount})
    assert response.status == 201, await response.text()


async def an_image(api: Api, token: str) -> int:
    response = await api.call("POST", "/api/node/v1/images", token, data=png(), headers={"Content-Type": "image/png"})
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


async def test_a_bounty_from_creation_to_award_over_http(bapi: Api) -> None:
    admin = await bapi.user("admin1", Role.ADMIN)
    alice, bob, carol = await bapi.user("alice"), await bapi.user("bobby"), await bapi.user("carol")
    for name in ("alice", "bobby"):
        await fund(bapi, admin, name, 100)
    created = await bapi.call("POST", "/api/node/v1/bounties", alice, json={
        "name": "Watercolour LoRA", "amount": 60, "expires": FUTURE, "type": "LoraCreation",
        "tags": ["watercolor"], "entry_limit": 2}, headers={"Idempotency-Key": "new-1"})
    assert created.status == 201, await created.text()
    bounty = await created.json()
    assert (bounty["pool"], bounty["creator"], bounty["state"]) == (60, "alice", "open")
    replay = await bapi.call("POST", "/api/node/v1/bounties", alice, json={
        "name": "Watercolour LoRA", "amount": 60, "expires": FUTURE, "type": "LoraCreation",
        "tags": ["watercolor"], "entry_limit": 2}, headers={"Idempotency-Key": "new-1"})
    assert replay.status == 200 and (await replay.json())["id"] == bounty["id"]
    path = f"/api/node/v1/bounties/{bounty['id']}"
    assert (await bapi.call("POST", path + "/contributions", bob, json={"amount": 40})).status == 201
    entry = await bapi.call("POST", path + "/entries", carol, json={"image_id": await an_image(bapi, carol),
                                                                     "note": "here it is"})
    assert entry.status == 201, await entry.text()
    entry_id = (await entry.json())["id"]
    award = await bapi.call("POST", path + "/awards", bob, json={"entry_id": entry_id})
    assert award.status == 201 and (await award.json())["type"] == "BountyAward"
    shown = await (await bapi.call("GET", path)).json()
    assert shown["pool"] == 60 and shown["entries"][0]["awarded"] == 40
    listed = await (await bapi.call("GET", "/api/node/v1/bounties?state=open")).json()
    assert [b["id"] for b in listed["items"]] == [bounty["id"]]
    balance = await (await bapi.call("GET", "/api/node/v1/ledger/balance", carol)).json()
    assert balance["balance"] == 40
    expired = await bapi.call("POST", "/api/node/v1/bounties/expire", admin)
    assert expired.status == 200 and (await expired.json())["closed"] == []
    await books_of(bapi).assert_books_balance()


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("POST", "/api/node/v1/bounties", {"name": "x", "amount": 5, "expires": "someday"}, 400, "expires"),
    ("POST", "/api/node/v1/bounties", {"name": "x", "amount": 5, "expires": "9999-12-31"}, 400, "expires"),
    ("POST", "/api/node/v1/bounties", {"name": "x", "amount": 5.5, "expires": FUTURE}, 400, "whole number"),
    ("POST", "/api/node/v1/bounties", {"name": "x", "amount": 5, "expires": "2000-01-01"}, 400, "future"),
    ("POST", "/api/node/v1/bounties", {"name": "x", "amount": 5000, "expires": FUTURE}, 409, "lower than"),
    ("POST", "/api/node/v1/bounties", {"name": "x", "amount": 5, "expires": FUTURE, "evil": 1}, 400,
     "unknown field"),
    ("POST", "/api/node/v1/bounties/999/contributions", {"amount": 5}, 404, "no bounty 999"),
    ("POST", "/api/node/v1/bounties/1/contributions", {"amount": -5}, 400, "at least"),
    ("POST", "/api/node/v1/bounties/abc/awards", {"entry_id": 1}, 400, "positive integer"),
    ("POST", "/api/node/v1/bounties/1/entries", {}, 400, "image_id or a version_id"),
    ("POST", "/api/node/v1/bounties/1/entries", {"image_id": 10**30}, 400, "image_id"),
    ("POST", "/api/node/v1/bounties/expire", None, 403, "admin"),
    ("GET", "/api/node/v1/bounties?state=lost", None, 400, "state"),
    ("GET", "/api/node/v1/bounties?limit=-1", None, 400, "limit"),
])
async def test_bad_bounty_requests_get_a_4xx_that_says_what_is_wrong(sqlite_config: Config, aiohttp_client: Any,
                                                                      method: str, path: str, body: Any,
                                                                      status: int, message: str) -> None:
    # Input checks do not depend on the database: SQLite only.
    app = create_app(sqlite_config, migrate=True, plugins=bounties_host())
    api = Api(client=await aiohttp_client(app), app=app)
    alice = await api.user("alice")
    response = await api.call(method, path, alice, json=body)
    assert response.status == status, await response.text()
    assert message in (await response.json())["detail"]
    assert (await api.call("POST", "/api/node/v1/bounties", json={"name": "x"})).status == 401


async def test_32_concurrent_clients_hammer_one_bounty_and_the_books_still_balance(bapi: Api) -> None:
    admin = await bapi.user("admin1", Role.ADMIN)
    creator = await bapi.user("creator")
    await fund(bapi, admin, "creator", 1000)
    bounty = await (await bapi.call("POST", "/api/node/v1/bounties", creator, json={
        "name": "stress", "amount": 500, "expires": FUTURE, "entry_limit": 3})).json()
    path = f"/api/node/v1/bounties/{bounty['id']}"
    tokens = [await bapi.user(f"client{i:02d}") for i in range(CLIENTS)]
    for i in range(CLIENTS):
        await fund(bapi, admin, f"client{i:02d}", 60)
    entries = []
    for token in tokens[:4]:
        response = await bapi.call("POST", path + "/entries", token, json={"image_id": await an_image(bapi, token)})
        entries.append((await response.json())["id"])
    statuses: Counter[int] = Counter()
    base = str(bapi.client.make_url(""))

    async def client(index: int, token: str) -> None:
        rng = random.Random(index)
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(base) as session:
            for step in range(6):
                key = {"Idempotency-Key": f"c{index}-{step}"}
                amount = rng.choice([1, 5, 20, 70])  # 70 is more than anyone has: refused with 409
                for _ in range(rng.choice([1, 2])):  # sometimes the same request twice (a retry)
                    async with session.post(path + "/contributions", json={"amount": amount},
                                            headers={**headers, **key}) as response:
                        statuses[response.status] += 1
                async with session.post(path + "/awards", json={"entry_id": rng.choice(entries)},
                                        headers={**headers, "Idempotency-Key": f"a{index}-{step}"}) as response:
                    statuses[response.status] += 1

    await asyncio.gather(*[client(i, token) for i, token in enumerate(tokens)])
    assert statuses[500] == 0 and set(statuses) <= {200, 201, 403, 409, 429}, statuses
    assert statuses[201] > CLIENTS, statuses  # most clients got some contributions and an award through
    books = books_of(bapi)
    await books.assert_books_balance()
    view = await (await bapi.call("GET", path)).json()
    awarded = [b for b in view["benefactors"] if b["outcome"] == "awarded"]
    assert len(awarded) >= CLIENTS - 4  # entrants cannot award their own entry, the rest could
    assert view["pool"] == sum(b["amount"] for b in view["benefactors"] if b["outcome"] is None)
    assert sum(e["awarded"] for e in view["entries"]) == sum(b["amount"] for b in awarded)
    total = sum([(await (await bapi.call("GET", "/api/node/v1/ledger/balance", t)).json())["balance"]
                 for t in [creator, *tokens]])
    assert total + view["pool"] == 1000 + CLIENTS * 60


async def test_the_expiry_job_started_with_the_node_closes_due_bounties(sqlite_config: Config,
                                                                        aiohttp_client: Any) -> None:
    sqlite_config.plugin_tables = {"bounties": {"expiry_check_seconds": 1, "grace_days": 0}}
    app = create_app(sqlite_config, migrate=True, plugins=bounties_host())
    api = Api(client=await aiohttp_client(app), app=app)
    admin = await api.user("admin1", Role.ADMIN)
    await api.user("alice")
    await fund(api, admin, "alice", 100)
    node = api.node
    alice = await node.accounts.get_user("alice")
    # Made "two days ago" so that it is already due; the job, not the test, must notice.
    past = datetime.now(UTC) - timedelta(days=2)
    bounty, _ = await service_for(node).create(alice, NewBounty(name="late", amount=40, expires_at=past + timedelta(days=1)),
                                               now=past)

    async def refunded() -> bool:
        shown = await (await api.call("GET", f"/api/node/v1/bounties/{bounty.id}")).json()
        return shown["state"] == "refunded"

    await wait_for(refunded, timeout=15)
    assert (await (await api.call("GET", "/api/node/v1/ledger/balance", admin)).json())["balance"] == 0
    assert await node.ledger.balance(alice.id) == 100
    closed = await api.call("POST", "/api/node/v1/bounties/expire", admin)
    assert (await closed.json())["closed"] == []  # closing again changes nothing
    await books_of(api).assert_books_balance()
