"""Bounties on the ledger: escrow, contributions, entries, awards, expiry with refunds or the top entry,
and property-based runs of random sequences that check the books after every step. Each test runs on
SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from sqlmodel import select

from node.core.catalog import VersionChanges
from node.core.errors import AtriumError, Conflict, Forbidden, InvalidInput
from node.core.ledger import OPERATOR, InsufficientFunds
from node.core.ledger_tables import LedgerTransaction
from node.core.tables import Role, User
from plugins.bounties.bounties import NewBounty, parse_expiry, split_by_weight
from tests.conftest import create_pg_database, drop_pg_database
from tests.ledger_fixtures import Books, open_books

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
async def books(tmp_path: Path, database_url: str) -> AsyncIterator[Books]:
    opened = await open_books(tmp_path, database_url, bounties={"grace_days": 2})
    try:
        yield opened
    finally:
        await opened.db.close()


async def funded(books: Books, amount: int = 1000, prefix: str = "u") -> User:
    user = await books.user(prefix)
    if amount:
        await books.ledger.grant(user.username, amount, actor=OPERATOR)
    return user


def spec(amount: int = 100, days: int = 7, **kw: Any) -> NewBounty:
    return NewBounty(name=kw.pop("name", "a watercolour LoRA"), amount=amount, expires_at=NOW + timedelta(days=days), **kw)


async def test_creating_a_bounty_moves_its_amount_into_escrow(books: Books) -> None:
    alice = await funded(books, 500)
    bounty, receipt = await books.bounties.create(alice, spec(120, type="loracreation", tags=("Watercolor",)), now=NOW)
    assert receipt.transaction.type == "BountyContribution"
    assert await books.ledger.balance(alice.id) == 380
    view = await books.bounties.view(bounty.id)  # type: ignore[arg-type]
    assert (view["pool"], view["type"], view["tags"], view["state"]) == (120, "LoraCreation", ["watercolor"], "open")
    assert view["benefactors"] == [{"username": alice.username, "amount": 120, "outcome": None, "entry_id": None}]
    await books.assert_books_balance()


async def test_a_bounty_larger_than_the_balance_is_refused_and_leaves_no_bounty(books: Books) -> None:
    alice = await funded(books, 50)
    with pytest.raises(InsufficientFunds):
        await books.bounties.create(alice, spec(51), now=NOW)
    assert (await books.bounties.list())[0] == []
    await books.assert_books_balance()


MALFORMED = [
    ({"name": " "}, "name"), ({"amount": 0}, "amount"), ({"days": -1}, "future"), ({"days": 400}, "within 365"),
    ({"type": "Painting"}, "type"), ({"entry_mode": "anyone"}, "entry_mode"), ({"entry_limit": 0}, "entry_limit"),
    ({"award_mode": "lottery"}, "award_mode"), ({"nsfw_level": 3}, "nsfw_level"), ({"tags": ("no/slash",)}, "tags"),
    ({"reference_image_ids": (-1,)}, "reference_image_ids"),
]


async def test_a_malformed_bounty_is_refused_naming_the_field(books: Books) -> None:
    alice = await funded(books)
    for change, message in MALFORMED:
        with pytest.raises(InvalidInput, match=message):
            await books.bounties.create(alice, spec(**change), now=NOW)
    other = await books.image(await funded(books))
    with pytest.raises(InvalidInput, match="not an image of yours"):
        await books.bounties.create(alice, spec(reference_image_ids=(other,)), now=NOW)
    assert await books.ledger.balance(alice.id) == 1000


async def test_benefactors_add_to_the_pool_and_the_escrow_equals_the_outstanding_shares(books: Books) -> None:
    alice, bob = await funded(books), await funded(books)
    bounty, _ = await books.bounties.create(alice, spec(100), now=NOW)
    await books.bounties.contribute(bob, bounty.id, 30, now=NOW)  # type: ignore[arg-type]
    await books.bounties.contribute(bob, bounty.id, 20, now=NOW)  # type: ignore[arg-type]
    view = await books.bounties.view(bounty.id)  # type: ignore[arg-type]
    assert view["pool"] == 150
    assert [(b["username"], b["amount"]) for b in view["benefactors"]] == [(alice.username, 100), (bob.username, 50)]
    await books.assert_books_balance()


async def test_each_benefactor_awards_its_own_share_once_to_one_entry(books: Books) -> None:
    alice, bob, carol = await funded(books), await funded(books), await funded(books, 0)
    bounty, _ = await books.bounties.create(alice, spec(100), now=NOW)
    await books.bounties.contribute(bob, bounty.id, 40, now=NOW)  # type: ignore[arg-type]
    entry = await books.bounties.enter(carol, bounty.id, image_id=await books.image(carol), now=NOW)  # type: ignore[arg-type]
    await books.bounties.award(bob, bounty.id, entry.id)  # type: ignore[arg-type]
    assert await books.ledger.balance(carol.id) == 40
    with pytest.raises(Conflict, match="already awarded"):
        await books.bounties.award(bob, bounty.id, entry.id)  # type: ignore[arg-type]
    with pytest.raises(Conflict, match="already awarded"):
        await books.bounties.contribute(bob, bounty.id, 5, now=NOW)  # type: ignore[arg-type]
    view = await books.bounties.view(bounty.id)  # type: ignore[arg-type]
    assert view["pool"] == 100 and view["entries"][0]["awarded"] == 40
    await books.assert_books_balance()


async def test_only_benefactors_award_and_never_to_their_own_entry(books: Books) -> None:
    alice, bob = await funded(books), await funded(books)
    bounty, _ = await books.bounties.create(alice, spec(100), now=NOW)
    await books.bounties.contribute(bob, bounty.id, 10, now=NOW)  # type: ignore[arg-type]
    entry = await books.bounties.enter(bob, bounty.id, image_id=await books.image(bob), now=NOW)  # type: ignore[arg-type]
    stranger = await funded(books)
    with pytest.raises(Forbidden, match="only the bounty's benefactors"):
        await books.bounties.award(stranger, bounty.id, entry.id)  # type: ignore[arg-type]
    with pytest.raises(Forbidden, match="your own entry"):
        await books.bounties.award(bob, bounty.id, entry.id)  # type: ignore[arg-type]


async def test_entries_follow_the_entry_mode_the_limit_and_ownership(books: Books) -> None:
    alice, bob, carol = await funded(books), await funded(books), await funded(books)
    bounty, _ = await books.bounties.create(alice, spec(100, entry_mode="benefactors", entry_limit=1), now=NOW)
    with pytest.raises(Forbidden, match="only benefactors may enter"):
        await books.bounties.enter(bob, bounty.id, image_id=await books.image(bob), now=NOW)  # type: ignore[arg-type]
    await books.bounties.contribute(bob, bounty.id, 1, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="not an image of yours"):
        await books.bounties.enter(bob, bounty.id, image_id=await books.image(carol), now=NOW)  # type: ignore[arg-type]
    await books.bounties.enter(bob, bounty.id, image_id=await books.image(bob), now=NOW)  # type: ignore[arg-type]
    with pytest.raises(Conflict, match="limit per user"):
        await books.bounties.enter(bob, bounty.id, image_id=await books.image(bob), now=NOW)  # type: ignore[arg-type]
    open_bounty, _ = await books.bounties.create(alice, spec(10), now=NOW)
    creator = await books.user("maker", Role.CREATOR)
    model = await books.catalog.create_model(creator, name="Empty", type="LORA")
    version = await books.catalog.create_version(creator, model.id, VersionChanges(name="v1", base_model="SD 1.5"))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="is not a version of yours"):
        await books.bounties.enter(carol, open_bounty.id, version_id=version.id, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="has no files yet"):
        await books.bounties.enter(creator, open_bounty.id, version_id=version.id, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(Conflict, match="takes no more entries"):
        await books.bounties.enter(alice, bounty.id, image_id=await books.image(alice),  # type: ignore[arg-type]
                                   now=NOW + timedelta(days=8))


async def test_with_no_entries_every_benefactor_is_refunded_at_expiry(books: Books) -> None:
    alice, bob = await funded(books, 100), await funded(books, 100)
    bounty, _ = await books.bounties.create(alice, spec(60, days=1), now=NOW)
    await books.bounties.contribute(bob, bounty.id, 25, now=NOW)  # type: ignore[arg-type]
    assert await books.bounties.expire(NOW + timedelta(hours=23)) == []
    assert await books.bounties.expire(NOW + timedelta(days=1)) == [(bounty.id, "refunded")]
    assert (await books.ledger.balance(alice.id), await books.ledger.balance(bob.id)) == (100, 100)
    view = await books.bounties.view(bounty.id)  # type: ignore[arg-type]
    assert view["state"] == "refunded" and view["pool"] == 0
    with pytest.raises(Conflict, match="closed"):
        await books.bounties.contribute(bob, bounty.id, 1, now=NOW)  # type: ignore[arg-type]
    await books.assert_books_balance()


async def test_after_the_grace_period_the_unawarded_pool_goes_to_the_top_entry_by_reactions(books: Books) -> None:
    alice, bob, carol, dave = await funded(books), await funded(books), await funded(books, 0), await funded(books, 0)
    bounty, _ = await books.bounties.create(alice, spec(100, days=1), now=NOW)
    await books.bounties.contribute(bob, bounty.id, 50, now=NOW)  # type: ignore[arg-type]
    first = await books.bounties.enter(carol, bounty.id, image_id=await books.image(carol), now=NOW)  # type: ignore[arg-type]
    liked_image = await books.image(dave)
    await books.bounties.enter(dave, bounty.id, image_id=liked_image, now=NOW)  # type: ignore[arg-type]
    await books.catalog.react_to_image(alice, liked_image, "Heart")
    await books.bounties.award(bob, bounty.id, first.id)  # type: ignore[arg-type]
    # Expired but within the grace period: benefactors may still award; nothing is refunded.
    assert await books.bounties.expire(NOW + timedelta(days=2)) == []
    assert await books.bounties.expire(NOW + timedelta(days=3)) == [(bounty.id, "awarded")]
    assert (await books.ledger.balance(carol.id), await books.ledger.balance(dave.id)) == (50, 100)
    view = await books.bounties.view(bounty.id)  # type: ignore[arg-type]
    assert view["state"] == "awarded" and view["pool"] == 0
    assert {b["username"]: b["outcome"] for b in view["benefactors"]} == {alice.username: "auto", bob.username: "awarded"}
    await books.assert_books_balance()


async def test_split_mode_divides_the_unawarded_pool_in_proportion_to_reactions(books: Books) -> None:
    alice = await funded(books)
    entrants = [await funded(books, 0) for _ in range(3)]
    bounty, _ = await books.bounties.create(alice, spec(100, days=1, award_mode="split"), now=NOW)
    images = []
    for entrant in entrants:
        images.append(await books.image(entrant))
        await books.bounties.enter(entrant, bounty.id, image_id=images[-1], now=NOW)  # type: ignore[arg-type]
    for reactor in [alice, *entrants[:1]]:
        await books.catalog.react_to_image(reactor, images[0], "Like")
    await books.catalog.react_to_image(alice, images[1], "Laugh")
    assert await books.bounties.expire(NOW + timedelta(days=10)) == [(bounty.id, "awarded")]
    assert [await books.ledger.balance(e.id) for e in entrants] == [67, 33, 0]
    await books.assert_books_balance()


async def test_expiry_is_safe_to_run_twice_and_concurrently(books: Books) -> None:
    alice, bob = await funded(books), await funded(books, 0)
    refunded, _ = await books.bounties.create(alice, spec(10, days=1), now=NOW)
    awarded, _ = await books.bounties.create(alice, spec(20, days=1), now=NOW)
    await books.bounties.enter(bob, awarded.id, image_id=await books.image(bob), now=NOW)  # type: ignore[arg-type]
    later = NOW + timedelta(days=5)
    results = await asyncio.gather(*[books.bounties.expire(later) for _ in range(4)])
    assert sorted(sum(results, [])) == sorted([(refunded.id, "refunded"), (awarded.id, "awarded")])
    assert await books.bounties.expire(later) == []
    assert (await books.ledger.balance(alice.id), await books.ledger.balance(bob.id)) == (980, 20)
    await books.assert_books_balance()


async def test_replayed_bounty_requests_have_one_effect(books: Books) -> None:
    alice, bob, carol = await funded(books), await funded(books), await funded(books, 0)
    first, _ = await books.bounties.create(alice, spec(100), idempotency_key="make", now=NOW)
    again, replay = await books.bounties.create(alice, spec(100), idempotency_key="make", now=NOW)
    assert again.id == first.id and replay.replayed
    for _ in range(3):
        await books.bounties.contribute(bob, first.id, 10, idempotency_key="give", now=NOW)  # type: ignore[arg-type]
    entry = await books.bounties.enter(carol, first.id, image_id=await books.image(carol), now=NOW)  # type: ignore[arg-type]
    receipts = await asyncio.gather(*[books.bounties.award(bob, first.id, entry.id, idempotency_key="win")  # type: ignore[arg-type]
                                      for _ in range(3)])
    assert len({r.transaction.id for r in receipts}) == 1
    assert (await books.ledger.balance(alice.id), await books.ledger.balance(bob.id),
            await books.ledger.balance(carol.id)) == (900, 990, 10)
    await books.assert_books_balance()


@given(st.integers(0, 10**12), st.lists(st.integers(0, 1000), max_size=12).map(lambda ws: list(enumerate(ws, 1))))
def test_a_split_always_sums_to_the_pool_and_follows_the_weights(total: int, weights: list[tuple[int, int]]) -> None:
    parts = split_by_weight(total, weights)
    assert sum(parts.values()) == (total if weights else 0)
    whole = sum(w for _, w in weights)
    for i, w in weights:
        exact = total * w / whole if whole else total / len(weights)
        assert abs(parts.get(i, 0) - exact) < 1 + 1e-9


def test_expiry_dates_mean_the_end_of_that_day_in_utc() -> None:
    assert parse_expiry("2026-12-01") == datetime(2026, 12, 2, tzinfo=UTC)
    assert parse_expiry("2026-12-01T10:00:00+02:00") == datetime(2026, 12, 1, 8, tzinfo=UTC)
    for bad in ("tomorrow", "2026-12-01T10:00:00", "2026-13-01", 5):
        with pytest.raises(InvalidInput, match="expires"):
            parse_expiry(bad)


# -- property-based: random sequences of everything, the books checked after every step -------------


class BookKeeping(RuleBasedStateMachine):
    """Grants, tips, bounty creation, contributions, entries, awards, time passing, expiry and replays,
    in random order; after every step the books must balance (see Books.assert_books_balance) and the
    grants this run made must equal the growth of the supply."""

    books: Books
    runner: asyncio.Runner

    def __init__(self) -> None:
        super().__init__()
        self.users: list[User] = []
        self.bounties: list[int] = []
        self.entries: list[tuple[int, int]] = []  # (bounty id, entry id)
        self.now = NOW
        self.granted = 0
        self.replayable: list[tuple[str, Any]] = []
        self.benefactors: dict[int, list[int]] = {}  # bounty id -> indexes of users who paid into it

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def attempt(self, coro: Any) -> Any:
        """Run an operation that the rules may refuse; a refusal must be a clear domain error."""
        try:
            return self.run(coro)
        except AtriumError:
            return None

    @initialize()
    def start(self) -> None:
        self.supply_at_start = self.run(self.books.ledger.totals()).supply
        self.users = [self.run(self.books.user("p")) for _ in range(4)]
        for user in self.users:  # start with money, so that more of the random steps can succeed
            self.run(self.books.ledger.grant(user.username, 300, actor=OPERATOR))
            self.granted += 300

    @rule(who=st.integers(0, 3), amount=st.integers(1, 300))
    def grant(self, who: int, amount: int) -> None:
        self.run(self.books.ledger.grant(self.users[who].username, amount, actor=OPERATOR))
        self.granted += amount

    @rule(src=st.integers(0, 3), dst=st.integers(0, 3), amount=st.integers(1, 200))
    def tip(self, src: int, dst: int, amount: int) -> None:
        if src != dst:
            self.attempt(self.books.ledger.tip(self.users[src], self.users[dst].username, amount))

    @rule(who=st.integers(0, 3), amount=st.integers(1, 200), days=st.integers(1, 5),
          mode=st.sampled_from(["single", "split"]), key=st.booleans())
    def create(self, who: int, amount: int, days: int, mode: str, key: bool) -> None:
        idem = f"c{secrets.token_hex(4)}" if key else None
        new = NewBounty(name="wanted", amount=amount, expires_at=self.now + timedelta(days=days), award_mode=mode,
                        entry_limit=2)
        made = self.attempt(self.books.bounties.create(self.users[who], new, idempotency_key=idem, now=self.now))
        if made is not None:
            self.bounties.append(made[0].id)
            self.benefactors.setdefault(made[0].id, []).append(who)
            if idem:
                self.replayable.append(("create", (self.users[who], new, idem, self.now)))

    @precondition(lambda self: self.bounties)
    @rule(who=st.integers(0, 3), pick=st.integers(0, 100), amount=st.integers(1, 100))
    def contribute(self, who: int, pick: int, amount: int) -> None:
        bounty_id = self.bounties[pick % len(self.bounties)]
        idem = f"g{secrets.token_hex(4)}"
        if self.attempt(self.books.bounties.contribute(self.users[who], bounty_id, amount, idempotency_key=idem,
                                                       now=self.now)) is not None:
            self.benefactors.setdefault(bounty_id, []).append(who)
            self.replayable.append(("contribute", (self.users[who], bounty_id, amount, idem, self.now)))

    @precondition(lambda self: self.bounties)
    @rule(who=st.integers(0, 3), pick=st.integers(0, 100), reactions=st.integers(0, 2))
    def enter(self, who: int, pick: int, reactions: int) -> None:
        bounty_id = self.bounties[pick % len(self.bounties)]
        user = self.users[who]
        image_id = self.run(self.books.image(user))
        entry = self.attempt(self.books.bounties.enter(user, bounty_id, image_id=image_id, now=self.now))
        if entry is not None:
            self.entries.append((bounty_id, entry.id))
            for reactor in self.users[:reactions]:
                self.run(self.books.catalog.react_to_image(reactor, image_id, "Like"))

    @precondition(lambda self: self.entries)
    @rule(who=st.integers(0, 3), pick=st.integers(0, 100))
    def award(self, who: int, pick: int) -> None:
        bounty_id, entry_id = self.entries[pick % len(self.entries)]
        if who < 3:  # mostly a benefactor of that bounty; sometimes anyone, who may be refused
            paid = self.benefactors[bounty_id]
            who = paid[who % len(paid)]
        idem = f"a{secrets.token_hex(4)}"
        if self.attempt(self.books.bounties.award(self.users[who], bounty_id, entry_id, idempotency_key=idem)):
            self.replayable.append(("award", (self.users[who], bounty_id, entry_id, idem)))

    @rule(hours=st.integers(1, 24 * 4))
    def time_passes(self, hours: int) -> None:
        self.now += timedelta(hours=hours)

    @rule(twice=st.booleans())
    def expire(self, twice: bool) -> None:
        self.run(self.books.bounties.expire(self.now))
        if twice:
            assert self.run(self.books.bounties.expire(self.now)) == []

    @precondition(lambda self: self.replayable)
    @rule(pick=st.integers(0, 100))
    def replay(self, pick: int) -> None:
        """A request sent again with its key changes nothing and answers with the first transaction."""
        kind, args = self.replayable[pick % len(self.replayable)]
        before = self.run(self.books.ledger.totals()).by_kind
        balances = [self.run(self.books.ledger.balance(u.id)) for u in self.users]
        if kind == "create":
            user, new, idem, at = args
            _, receipt = self.run(self.books.bounties.create(user, new, idempotency_key=idem, now=at))
        elif kind == "contribute":
            user, bounty_id, amount, idem, at = args
            receipt = self.run(self.books.bounties.contribute(user, bounty_id, amount, idempotency_key=idem, now=at))
        else:
            user, bounty_id, entry_id, idem = args
            receipt = self.run(self.books.bounties.award(user, bounty_id, entry_id, idempotency_key=idem))
        assert receipt.replayed
        assert self.run(self.books.ledger.totals()).by_kind == before
        assert [self.run(self.books.ledger.balance(u.id)) for u in self.users] == balances

    @invariant()
    def books_balance(self) -> None:
        totals = self.run(self.books.assert_books_balance())
        assert totals.supply - self.supply_at_start == self.granted


async def transaction_types(books: Books) -> set[str]:
    async with books.db.read_session() as session:
        return set((await session.exec(select(LedgerTransaction.type).distinct())).all())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_random_sequences_keep_the_books_balanced(backend: str, tmp_path: Path) -> None:
    """Examples share one database (a fresh one per example would cost a migration each); every example
    makes users and bounties of its own, and the invariants are global."""
    with asyncio.Runner() as runner:
        url = f"sqlite:///{tmp_path / 'books.db'}" if backend == "sqlite" else runner.run(create_pg_database())
        try:
            books = runner.run(open_books(tmp_path, url, bounties={"grace_days": 1}))
            BookKeeping.books, BookKeeping.runner = books, runner
            try:
                run_state_machine_as_test(BookKeeping, settings=settings(
                    max_examples=25 if backend == "sqlite" else 12, stateful_step_count=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
                # The runs must have reached every kind of movement, or they proved little.
                kinds = runner.run(transaction_types(books))
                assert {"Grant", "Tip", "BountyContribution", "BountyAward", "Refund"} <= kinds, kinds
            finally:
                runner.run(books.db.close())
        finally:
            if backend == "postgresql":
                runner.run(drop_pg_database(url))
