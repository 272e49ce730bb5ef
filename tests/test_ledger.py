"""The ledger: double-entry transactions, balances that never go negative, idempotency, grants, tips,
history, and its HTTP API. Each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from node.core.errors import Conflict, InvalidInput, NotFound
from node.core.ledger import OPERATOR, InsufficientFunds, user_account_key
from node.core.tables import Role
from tests.conftest import Api
from tests.ledger_fixtures import Books, open_books


@pytest.fixture
async def books(tmp_path: Path, database_url: str) -> AsyncIterator[Books]:
    opened = await open_books(tmp_path, database_url, ledger={"signup_grant": 0, "daily_grant": 5,
                                                              "max_amount": 1_000_000})
    try:
        yield opened
    finally:
        await opened.db.close()


async def test_a_grant_moves_new_currency_from_the_mint_and_supply_equals_grants(books: Books) -> None:
    alice = await books.user("alice")
    receipt = await books.ledger.grant(alice.username, 100, actor=OPERATOR, reason="welcome")
    assert receipt.transaction.type == "Grant" and receipt.transaction.amount == 100
    assert sorted(receipt.postings) == sorted([("mint", -100), (user_account_key(alice.id), 100)])
    assert await books.ledger.balance(alice.id) == 100
    totals = await books.assert_books_balance()
    assert totals.supply == totals.grants == 100


async def test_a_tip_moves_currency_between_users_and_both_histories_show_it(books: Books) -> None:
    alice, bob = await books.user("alice"), await books.user("bob")
    await books.ledger.grant(alice.username, 50, actor=OPERATOR)
    await books.ledger.tip(alice, bob.username, 20, reason="nice lora")
    assert (await books.ledger.balance(alice.id), await books.ledger.balance(bob.id)) == (30, 20)
    alice_items, _ = await books.ledger.history(alice.id)
    bob_items, _ = await books.ledger.history(bob.id)
    assert [(i["type"], i["amount"], i["balance_after"]) for i in alice_items] == [("Tip", -20, 30), ("Grant", 50, 50)]
    assert [(i["type"], i["amount"], i["reason"]) for i in bob_items] == [("Tip", 20, "nice lora")]
    await books.assert_books_balance()


async def test_a_transfer_larger_than_the_balance_is_refused_and_changes_nothing(books: Books) -> None:
    alice, bob = await books.user("alice"), await books.user("bob")
    await books.ledger.grant(alice.username, 10, actor=OPERATOR)
    with pytest.raises(InsufficientFunds, match="lower than 11"):
        await books.ledger.tip(alice, bob.username, 11)
    assert (await books.ledger.balance(alice.id), await books.ledger.balance(bob.id)) == (10, 0)
    assert len((await books.ledger.history(alice.id))[0]) == 1
    await books.assert_books_balance()


@pytest.mark.parametrize("amount", [0, -5, 1.5, "10", True, None, 1_000_001])
async def test_amounts_must_be_positive_whole_numbers_within_the_limit(books: Books, amount: object) -> None:
    alice, bob = await books.user("alice"), await books.user("bob")
    await books.ledger.grant(alice.username, 100, actor=OPERATOR)
    with pytest.raises(InvalidInput, match="amount"):
        await books.ledger.tip(alice, bob.username, amount)  # type: ignore[arg-type]


async def test_tipping_yourself_or_nobody_is_refused(books: Books) -> None:
    alice = await books.user("alice")
    with pytest.raises(InvalidInput, match="yourself"):
        await books.ledger.tip(alice, alice.username.upper(), 1)
    with pytest.raises(NotFound, match="no user named"):
        await books.ledger.tip(alice, "nobody_here", 1)


async def test_a_replayed_idempotency_key_has_one_effect_and_returns_the_first_transaction(books: Books) -> None:
    alice, bob = await books.user("alice"), await books.user("bob")
    await books.ledger.grant(alice.username, 100, actor=OPERATOR)
    first = await books.ledger.tip(alice, bob.username, 7, idempotency_key="tip-1")
    again = await books.ledger.tip(alice, bob.username, 7, idempotency_key="tip-1")
    assert again.replayed and not first.replayed
    assert again.json() == first.json()
    assert await books.ledger.balance(bob.id) == 7
    # Keys are per actor: bob may use the same key for his own request.
    await books.ledger.tip(bob, alice.username, 1, idempotency_key="tip-1")
    assert await books.ledger.balance(bob.id) == 6


async def test_a_reused_key_with_other_content_is_a_conflict(books: Books) -> None:
    alice, bob = await books.user("alice"), await books.user("bob")
    await books.ledger.grant(alice.username, 100, actor=OPERATOR)
    await books.ledger.tip(alice, bob.username, 7, idempotency_key="k")
    with pytest.raises(Conflict, match="already used for a different request"):
        await books.ledger.tip(alice, bob.username, 8, idempotency_key="k")
    assert await books.ledger.balance(bob.id) == 7


async def test_concurrent_replays_of_one_key_have_one_effect(books: Books) -> None:
    alice, bob = await books.user("alice"), await books.user("bob")
    await books.ledger.grant(alice.username, 100, actor=OPERATOR)
    receipts = await asyncio.gather(*[books.ledger.tip(alice, bob.username, 3, idempotency_key="once")
                                      for _ in range(8)])
    assert len({r.transaction.id for r in receipts}) == 1
    assert sum(not r.replayed for r in receipts) == 1
    assert await books.ledger.balance(bob.id) == 3


async def test_concurrent_spenders_never_overdraw_an_account(books: Books) -> None:
    alice, bob = await books.user("alice"), await books.user("bob")
    await books.ledger.grant(alice.username, 10, actor=OPERATOR)

    async def spend() -> bool:
        try:
            await books.ledger.tip(alice, bob.username, 1)
            return True
        except InsufficientFunds:
            return False

    results = await asyncio.gather(*[spend() for _ in range(25)])
    assert sum(results) == 10
    assert (await books.ledger.balance(alice.id), await books.ledger.balance(bob.id)) == (0, 10)
    await books.assert_books_balance()


async def test_the_database_itself_refuses_a_negative_balance(books: Books) -> None:
    alice = await books.user("alice")
    await books.ledger.balance(alice.id)  # opens the account
    with pytest.raises(IntegrityError):
        async with books.db.session() as session:
            await session.exec(text("UPDATE ledger_accounts SET balance = -1 WHERE key = :k"),  # type: ignore[call-overload]
                               params={"k": user_account_key(alice.id)})
            await session.commit()


async def test_the_signup_grant_is_paid_once_when_the_account_opens(tmp_path: Path, database_url: str) -> None:
    books = await open_books(tmp_path, database_url, ledger={"signup_grant": 25})
    try:
        alice = await books.user("alice")
        balances = await asyncio.gather(*[books.ledger.balance(alice.id) for _ in range(5)])
        assert balances == [25] * 5
        assert [i["reason"] for i in (await books.ledger.history(alice.id))[0]] == ["sign-up grant"]
        assert (await books.assert_books_balance()).grants == 25
    finally:
        await books.db.close()


async def test_the_daily_grant_is_claimed_once_per_utc_day(books: Books) -> None:
    alice = await books.user("alice")
    await books.ledger.claim_daily(alice, today=date(2026, 11, 23))
    with pytest.raises(Conflict, match="already claimed; the next one can be claimed from 2026-11-24"):
        await books.ledger.claim_daily(alice, today=date(2026, 11, 23))
    await books.ledger.claim_daily(alice, today=date(2026, 11, 24))
    assert await books.ledger.balance(alice.id) == 10
    await books.assert_books_balance()


async def test_history_pages_newest_first_with_a_cursor(books: Books) -> None:
    alice = await books.user("alice")
    for amount in range(1, 8):
        await books.ledger.grant(alice.username, amount, actor=OPERATOR)
    seen, cursor = [], None
    while True:
        items, cursor = await books.ledger.history(alice.id, before=cursor, limit=3)
        seen += [i["amount"] for i in items]
        if cursor is None:
            break
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    with pytest.raises(InvalidInput, match="limit"):
        await books.ledger.history(alice.id, limit=0)


# -- HTTP ------------------------------------------------------------------------------------------


async def test_ledger_routes_grant_tip_balance_and_history(api_on: Api) -> None:
    admin = await api_on.user("admin1", Role.ADMIN)
    alice = await api_on.user("alice")
    await api_on.user("bobby")
    response = await api_on.call("POST", "/api/node/v1/ledger/grants", admin, json={"to": "alice", "amount": 40,
                                                                                      "reason": "seed"})
    assert response.status == 201, await response.text()
    headers = {"Idempotency-Key": "t1"}
    first = await api_on.call("POST", "/api/node/v1/ledger/tips", alice, json={"to": "bobby", "amount": 15},
                              headers=headers)
    again = await api_on.call("POST", "/api/node/v1/ledger/tips", alice, json={"to": "bobby", "amount": 15},
                              headers=headers)
    assert (first.status, again.status) == (201, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await first.json() == await again.json()
    balance = await (await api_on.call("GET", "/api/node/v1/ledger/balance", alice)).json()
    assert balance["balance"] == 25 and balance["currency"]["name"] == "coin"
    history = await (await api_on.call("GET", "/api/node/v1/ledger/history?limit=1", alice)).json()
    assert [i["type"] for i in history["items"]] == ["Tip"] and history["next_cursor"] is not None
    totals = await (await api_on.call("GET", "/api/node/v1/ledger/totals", admin)).json()
    assert totals["supply"] == totals["grants"] == 40 and totals["balance_sum"] == 0


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/api/node/v1/ledger/tips", {"to": "bobby", "amount": -1}, 400, "at least 1"),
    ("/api/node/v1/ledger/tips", {"to": "bobby", "amount": "1"}, 400, "whole number"),
    ("/api/node/v1/ledger/tips", {"to": "bobby", "amount": 10**30}, 400, "at most"),
    ("/api/node/v1/ledger/tips", {"to": "bobby"}, 400, "amount"),
    ("/api/node/v1/ledger/tips", {"to": "bobby", "amount": 1, "x": 1}, 400, "unknown field"),
    ("/api/node/v1/ledger/tips", {"to": "bobby", "amount": 5}, 409, "lower than 5"),
    ("/api/node/v1/ledger/tips", {"to": "nobody", "amount": 1}, 404, "no user"),
    ("/api/node/v1/ledger/grants", {"to": "bobby", "amount": 5}, 403, "admin"),
    ("/api/node/v1/ledger/daily", None, 404, "no daily grant"),
])
async def test_bad_ledger_requests_get_a_4xx_that_says_what_is_wrong(api: Api, path: str, body: object,
                                                                      status: int, message: str) -> None:
    alice = await api.user("alice")
    await api.user("bobby")
    response = await api.call("POST", path, alice, json=body)
    assert response.status == status, await response.text()
    assert message in (await response.json())["detail"]


async def test_ledger_routes_need_a_token_and_keep_balances_private(api: Api) -> None:
    alice = await api.user("alice")
    await api.user("bobby")
    assert (await api.call("GET", "/api/node/v1/ledger/balance")).status == 401
    assert (await api.call("POST", "/api/node/v1/ledger/tips", json={"to": "bobby", "amount": 1})).status == 401
    assert (await api.call("GET", "/api/node/v1/ledger/balance/bobby", alice)).status == 403
    assert (await api.call("GET", "/api/node/v1/ledger/history?user=bobby", alice)).status == 403
    bad_key = await api.call("POST", "/api/node/v1/ledger/tips", alice, json={"to": "bobby", "amount": 1},
                             headers={"Idempotency-Key": "has space"})
    assert bad_key.status == 400 and "Idempotency-Key" in (await bad_key.json())["detail"]


class _Orig(Exception):
    def __init__(self, text: str, sqlstate: str | None = None) -> None:
        super().__init__(text)
        self.sqlstate = sqlstate


def test_lost_races_are_retried_and_other_database_errors_are_not() -> None:
    from sqlalchemy.exc import DBAPIError, OperationalError

    from node.core.ledger import is_retryable

    assert is_retryable(DBAPIError("UPDATE", {}, _Orig("deadlock detected", "40P01")))
    assert is_retryable(DBAPIError("UPDATE", {}, _Orig("could not serialize access", "40001")))
    assert is_retryable(OperationalError("BEGIN IMMEDIATE", {}, _Orig("database is locked")))
    assert is_retryable(IntegrityError("INSERT", {}, _Orig('duplicate key value violates unique constraint '
                                                           '"uq_ledger_transactions_actor_key"', "23505")))
    assert not is_retryable(IntegrityError("UPDATE", {}, _Orig("violates check constraint", "23514")))
    assert not is_retryable(DBAPIError("SELECT", {}, _Orig("syntax error", "42601")))


async def test_a_transaction_that_keeps_losing_races_gets_429_not_500(books: Books) -> None:
    from sqlalchemy.exc import OperationalError

    from node.core.errors import RateLimited

    calls = []

    async def flaky(session: object) -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("BEGIN IMMEDIATE", {}, _Orig("database is locked"))
        return "done"

    assert await books.ledger.run(flaky) == "done" and len(calls) == 3

    async def hopeless(session: object) -> str:
        raise OperationalError("BEGIN IMMEDIATE", {}, _Orig("database is locked"))

    with pytest.raises(RateLimited, match="busy"):
        await books.ledger.run(hopeless)
