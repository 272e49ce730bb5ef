"""The ledger: a node-local currency kept by double-entry bookkeeping.

Every movement is a transaction of postings that sum to zero. The mint is the one account allowed a
negative balance: it is minus the currency in circulation, so the balances of all accounts always sum
to zero and `-mint` equals the total of all grants. A balance column per account is updated in the same
database transaction as the postings, by a guarded UPDATE (`... WHERE balance >= :amount`) backed by a
CHECK constraint, so concurrent spenders cannot overdraw on PostgreSQL and SQLite alike. Accounts are
updated in the order of their ids (no deadlock between two transfers), and a transaction that loses a
race (deadlock, serialization failure, a locked SQLite file, a duplicate idempotency key) is retried a
bounded number of times.

An idempotency key is unique per actor: a replay returns the first transaction; a replay that asks for
something else is a Conflict.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import func, insert, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from node.core.config import LedgerSection
from node.core.db import Database
from node.core.errors import Conflict, InvalidInput, NotFound, RateLimited
from node.core.ledger_tables import LedgerAccount, LedgerPosting, LedgerTransaction
from node.core.tables import User, utcnow

T = TypeVar("T")

MINT = "mint"
# Attempts of one database transaction that lost a race before the caller is told to try again (429).
MAX_ATTEMPTS = 8
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
REASON_MAX = 500
HISTORY_MAX_LIMIT = 200
# PostgreSQL: serialization failure, deadlock detected.
RETRYABLE_SQLSTATES = {"40001", "40P01"}
IDEMPOTENCY_CONSTRAINT = "uq_ledger_transactions_actor_key"


class TxType(StrEnum):
    """What a transaction was for."""

    GRANT = "Grant"                      # new currency from the mint (admin, sign-up and daily grants)
    TIP = "Tip"                          # from one user to another
    BOUNTY_CONTRIBUTION = "BountyContribution"  # from a benefactor into a bounty's escrow
    BOUNTY_AWARD = "BountyAward"         # from a bounty's escrow to an entrant
    REFUND = "Refund"                    # from a bounty's escrow back to its benefactors


class InsufficientFunds(Conflict):
    """The paying account's balance is lower than the amount."""

    code = "insufficient_funds"


@dataclass(frozen=True)
class Actor:
    """Who asked for a transaction; idempotency keys are unique per actor."""

    key: str
    user_id: int | None = None

    @classmethod
    def of(cls, user: User) -> Actor:
        return cls(f"user:{user.id}", user.id)


OPERATOR = Actor("operator")  # the node's operator at the command line
SYSTEM = Actor("system")      # grants and bounty expiry done by the node itself


@dataclass
class Receipt:
    """A committed (or replayed) transaction with its postings (account key, amount)."""

    transaction: LedgerTransaction
    postings: list[tuple[str, int]]
    replayed: bool = False

    def json(self) -> dict[str, Any]:
        t = self.transaction
        return {"id": t.id, "type": t.type, "amount": t.amount, "reason": t.reason, "subject": t.subject,
                "actor": t.actor, "idempotency_key": t.idempotency_key, "created_at": t.created_at.isoformat(),
                "postings": [{"account": key, "amount": amount} for key, amount in self.postings]}


@dataclass
class Totals:
    """Figures that must agree: supply (= -mint) equals grants, and the balances sum to zero."""

    supply: int
    grants: int
    balance_sum: int
    negative_accounts: int
    by_kind: dict[str, int] = field(default_factory=dict)


def check_amount(value: Any, maximum: int, what: str = "amount") -> int:
    """A positive whole amount no larger than `maximum`; InvalidInput otherwise (bools, floats and
    strings are refused, not converted)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"{what} must be a whole number, got {value!r}")
    if value < 1:
        raise InvalidInput(f"{what} must be at least 1, got {value}")
    if value > maximum:
        raise InvalidInput(f"{what} must be at most {maximum:,} on this node, got {value:,}")
    return value


def check_idempotency_key(key: str | None) -> str | None:
    """An idempotency key: 1-128 printable ASCII characters without spaces, or None."""
    if key is None:
        return None
    if not isinstance(key, str) or not IDEMPOTENCY_KEY_RE.match(key):
        raise InvalidInput("Idempotency-Key must be 1-128 printable ASCII characters without spaces")
    return key


def check_reason(reason: Any) -> str:
    """A transaction's reason: text of at most REASON_MAX characters, trimmed."""
    if not isinstance(reason, str):
        raise InvalidInput("reason must be text")
    if len(reason) > REASON_MAX:
        raise InvalidInput(f"reason must be at most {REASON_MAX} characters")
    return reason.strip()


def fingerprint(*parts: Any) -> str:
    """What a request asked for, as a digest: a replayed key must come with the same content."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def is_retryable(exc: DBAPIError) -> bool:
    """A transaction that lost a race and may simply be run again."""
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if state in RETRYABLE_SQLSTATES:
        return True
    text = str(orig)
    if "database is locked" in text or "deadlock detected" in text:
        return True
    # Two requests with one idempotency key raced; the rerun finds the winner's transaction.
    return isinstance(exc, IntegrityError) and (IDEMPOTENCY_CONSTRAINT in text
                                                or "ledger_transactions.actor" in text)


def user_account_key(user_id: int) -> str:
    """The key of a user's ledger account."""
    return f"user:{user_id}"


class Ledger:
    """Accounts, transfers and history on one database."""

    def __init__(self, db: Database, settings: LedgerSection) -> None:
        self.db = db
        self.settings = settings

    # -- transactions --------------------------------------------------------------------------

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run `work(session)` in one database transaction and commit it, retrying when it lost a race.

        `work` must be safe to run again from the start: everything it did is rolled back first.
        """
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self.db.session() as session:
                    result = await work(session)
                    await session.commit()
                return result
            except PoolTimeout:
                # Every pooled connection stayed busy for the pool's timeout: the node is overloaded.
                raise RateLimited("the node's database connections are all busy; try again in a moment",
                                  retry_after=1) from None
            except DBAPIError as exc:
                if not is_retryable(exc):
                    raise
                if attempt == MAX_ATTEMPTS:
                    raise RateLimited("the ledger is busy with other requests; try again in a moment",
                                      retry_after=1) from None
                # Spread the retries, so that the same losers do not collide again at once.
                await asyncio.sleep(random.uniform(0, 0.002 * 2 ** attempt))
        raise AssertionError("unreachable")

    async def system_account(self, session: AsyncSession, key: str, kind: str) -> int:
        """The id of a system account (the mint, an escrow), created on first use."""
        return await self._account(session, key, kind, None)

    async def user_account(self, session: AsyncSession, user_id: int) -> int:
        """The id of a user's account, opened on first use; opening it pays the sign-up grant."""
        key = user_account_key(user_id)
        existing = (await session.exec(select(LedgerAccount.id).where(LedgerAccount.key == key))).first()
        if existing is not None:
            return existing
        account_id = await self._account(session, key, "user", user_id)
        if self.settings.signup_grant:
            mint = await self.system_account(session, MINT, "mint")
            fp = fingerprint("signup", user_id)
            if await self.find(session, SYSTEM, f"signup:{user_id}", fp) is None:
                await self.post(session, type=TxType.GRANT, actor=SYSTEM, fingerprint=fp,
                                postings={mint: -self.settings.signup_grant, account_id: self.settings.signup_grant},
                                reason="sign-up grant", subject=key, idempotency_key=f"signup:{user_id}")
        return account_id

    async def _account(self, session: AsyncSession, key: str, kind: str, user_id: int | None) -> int:
        found = (await session.exec(select(LedgerAccount.id).where(LedgerAccount.key == key))).first()
        if found is not None:
            return found
        # INSERT ... ON CONFLICT DO NOTHING: two first uses at once open one account.
        dialect = postgresql if self.db.dialect == "postgresql" else sqlite
        stmt = dialect.insert(LedgerAccount).values(key=key, kind=kind, user_id=user_id, balance=0,
                                                    created_at=utcnow()).on_conflict_do_nothing()
        await session.exec(stmt)  # type: ignore[call-overload]
        return (await session.exec(select(LedgerAccount.id).where(LedgerAccount.key == key))).one()

    async def find(self, session: AsyncSession, actor: Actor, key: str | None, fp: str) -> Receipt | None:
        """The transaction `actor` made with idempotency `key`, or None; Conflict when that key was used
        for a different request."""
        if key is None:
            return None
        txn = (await session.exec(select(LedgerTransaction).where(
            LedgerTransaction.actor == actor.key, LedgerTransaction.idempotency_key == key))).first()
        if txn is None:
            return None
        if txn.fingerprint != fp:
            raise Conflict(f"the idempotency key {key!r} was already used for a different request",
                           code="idempotency_key_reused")
        return Receipt(txn, await self._postings_of(session, txn.id), replayed=True)  # type: ignore[arg-type]

    async def _postings_of(self, session: AsyncSession, transaction_id: int) -> list[tuple[str, int]]:
        rows = await session.exec(
            select(LedgerAccount.key, LedgerPosting.amount)
            .join(LedgerAccount, col(LedgerAccount.id) == col(LedgerPosting.account_id))
            .where(LedgerPosting.transaction_id == transaction_id).order_by(col(LedgerPosting.id)))
        return [(k, a) for k, a in rows.all()]

    async def post(self, session: AsyncSession, *, type: TxType, actor: Actor, postings: Mapping[int, int],
                   fingerprint: str, reason: str = "", subject: str | None = None,
                   idempotency_key: str | None = None) -> Receipt:
        """Apply postings (account id -> signed amount, summing to zero) inside `session`'s transaction.

        InsufficientFunds when a paying account (other than the mint) would go below zero; nothing is
        committed here: the caller commits (or `run` does).
        """
        deltas = {account: amount for account, amount in postings.items() if amount}
        if not deltas or sum(deltas.values()) != 0:
            raise ValueError(f"postings must be non-empty and sum to zero: {dict(postings)}")
        applied: dict[int, tuple[str, int]] = {}
        for account_id in sorted(deltas):  # one global lock order: no deadlocks between transfers
            amount = deltas[account_id]
            stmt = (update(LedgerAccount).where(col(LedgerAccount.id) == account_id)
                    .values(balance=LedgerAccount.balance + amount)
                    .returning(LedgerAccount.key, LedgerAccount.balance))  # type: ignore[arg-type]
            if amount < 0:
                stmt = stmt.where(or_(col(LedgerAccount.balance) >= -amount, col(LedgerAccount.kind) == "mint"))
            row = (await session.exec(stmt)).first()  # type: ignore[call-overload]
            if row is None:
                key = (await session.exec(select(LedgerAccount.key).where(LedgerAccount.id == account_id))).first()
                if key is None:
                    raise NotFound(f"no ledger account {account_id}")
                raise InsufficientFunds(f"the balance of {key} is lower than {-amount:,}")
            applied[account_id] = (row[0], row[1])
        # Core INSERTs rather than the ORM's unit of work: a transfer is on the hot path, and each
        # statement is a round trip (to aiosqlite's thread, or to PostgreSQL).
        txn = LedgerTransaction(type=type.value, actor=actor.key, idempotency_key=idempotency_key,
                                fingerprint=fingerprint, reason=reason, subject=subject,
                                amount=sum(a for a in deltas.values() if a > 0), created_at=utcnow())
        values = txn.model_dump(exclude={"id"})
        txn.id = (await session.exec(insert(LedgerTransaction).values(**values)  # type: ignore[call-overload]
                                     .returning(LedgerTransaction.id))).scalar_one()
        order = sorted(deltas)
        await session.exec(insert(LedgerPosting), params=[  # type: ignore[call-overload]
            {"transaction_id": txn.id, "account_id": account_id, "amount": deltas[account_id],
             "balance_after": applied[account_id][1]} for account_id in order])
        return Receipt(txn, [(applied[account_id][0], deltas[account_id]) for account_id in order])

    async def transfer(self, *, type: TxType, actor: Actor, postings: Callable[[AsyncSession], Awaitable[dict[int, int]]],
                       fingerprint: str, reason: str = "", subject: str | None = None,
                       idempotency_key: str | None = None) -> Receipt:
        """One whole transaction: replay check, accounts (from `postings(session)`), postings, commit."""
        async def work(session: AsyncSession) -> Receipt:
            replay = await self.find(session, actor, idempotency_key, fingerprint)
            if replay is not None:
                return replay
            return await self.post(session, type=type, actor=actor, postings=await postings(session),
                                   fingerprint=fingerprint, reason=reason, subject=subject,
                                   idempotency_key=idempotency_key)

        return await self.run(work)

    # -- operations ----------------------------------------------------------------------------

    async def named_account(self, session: AsyncSession, username: str) -> int:
        """The account id of the user named `username` (opened on first use); NotFound for no such user."""
        if not isinstance(username, str) or not username or len(username) > 64:
            raise InvalidInput("username must be a user's name")
        row = (await session.exec(select(User.id, LedgerAccount.id)
                                  .outerjoin(LedgerAccount, col(LedgerAccount.user_id) == col(User.id))
                                  .where(User.username_key == username.lower()))).first()
        if row is None:
            raise NotFound(f"no user named {username!r}")
        user_id, account_id = row
        return account_id if account_id is not None else await self.user_account(session, user_id)

    async def grant(self, username: str, amount: int, *, actor: Actor, reason: str = "",
                    idempotency_key: str | None = None) -> Receipt:
        """New currency from the mint to a user (an administrator's decision)."""
        amount = check_amount(amount, self.settings.max_amount)
        reason = check_reason(reason)
        idempotency_key = check_idempotency_key(idempotency_key)

        async def postings(session: AsyncSession) -> dict[int, int]:
            account = await self.named_account(session, username)
            return {await self.system_account(session, MINT, "mint"): -amount, account: amount}

        return await self.transfer(type=TxType.GRANT, actor=actor, postings=postings, reason=reason or "grant",
                                   fingerprint=fingerprint("grant", username.lower(), amount, reason),
                                   subject=f"username:{username.lower()}", idempotency_key=idempotency_key)

    async def tip(self, sender: User, recipient: str, amount: int, *, reason: str = "",
                  idempotency_key: str | None = None) -> Receipt:
        """Move `amount` from `sender` to the user named `recipient`."""
        amount = check_amount(amount, self.settings.max_amount)
        reason = check_reason(reason)
        idempotency_key = check_idempotency_key(idempotency_key)
        if not isinstance(recipient, str) or not recipient:
            raise InvalidInput("to must be a user's name")
        if recipient.lower() == sender.username.lower():
            raise InvalidInput("you cannot tip yourself")

        async def postings(session: AsyncSession) -> dict[int, int]:
            to = await self.named_account(session, recipient)
            return {await self.user_account(session, sender.id): -amount, to: amount}  # type: ignore[arg-type]

        return await self.transfer(type=TxType.TIP, actor=Actor.of(sender), postings=postings, reason=reason,
                                   fingerprint=fingerprint("tip", recipient.lower(), amount, reason),
                                   subject=f"username:{recipient.lower()}", idempotency_key=idempotency_key)

    async def claim_daily(self, user: User, today: date | None = None) -> Receipt:
        """Pay the daily grant to `user`, once per UTC day; Conflict when already claimed today."""
        amount = self.settings.daily_grant
        if not amount:
            raise NotFound("this node has no daily grant ([ledger] daily_grant is 0)")
        day = (today or utcnow().date()).isoformat()
        key = f"daily:{user.id}:{day}"
        fp = fingerprint("daily", user.id, day)

        async def work(session: AsyncSession) -> Receipt:
            if await self.find(session, SYSTEM, key, fp) is not None:
                tomorrow = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1)
                raise Conflict(f"today's grant is already claimed; the next one can be claimed from "
                               f"{tomorrow.isoformat()}", code="already_claimed")
            account = await self.user_account(session, user.id)  # type: ignore[arg-type]
            mint = await self.system_account(session, MINT, "mint")
            return await self.post(session, type=TxType.GRANT, actor=SYSTEM, postings={mint: -amount, account: amount},
                                   fingerprint=fp, reason="daily grant", subject=user_account_key(user.id),  # type: ignore[arg-type]
                                   idempotency_key=key)

        return await self.run(work)

    async def balance(self, user_id: int) -> int:
        """A user's balance (opening their account, and paying the sign-up grant, on first use)."""
        async def work(session: AsyncSession) -> int:
            account = await self.user_account(session, user_id)
            return (await session.exec(select(LedgerAccount.balance).where(LedgerAccount.id == account))).one()

        async with self.db.read_session() as session:
            found = (await session.exec(select(LedgerAccount.balance)
                                        .where(LedgerAccount.key == user_account_key(user_id)))).first()
        if found is not None:
            return found
        return await self.run(work)

    async def history(self, user_id: int, *, before: int | None = None,
                      limit: int = 50) -> tuple[list[dict[str, Any]], int | None]:
        """A user's postings, newest first, `limit` at a time; the cursor for the next page (or None)."""
        if not isinstance(limit, int) or not 1 <= limit <= HISTORY_MAX_LIMIT:
            raise InvalidInput(f"limit must be 1-{HISTORY_MAX_LIMIT}")
        async with self.db.read_session() as session:
            query = (select(LedgerPosting, LedgerTransaction)
                     .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerPosting.transaction_id))
                     .join(LedgerAccount, col(LedgerAccount.id) == col(LedgerPosting.account_id))
                     .where(LedgerAccount.key == user_account_key(user_id)))
            if before is not None:
                query = query.where(col(LedgerPosting.id) < before)
            rows = (await session.exec(query.order_by(col(LedgerPosting.id).desc()).limit(limit + 1))).all()
        items = [{"cursor": p.id, "transaction_id": t.id, "type": t.type, "amount": p.amount,
                  "balance_after": p.balance_after, "reason": t.reason, "subject": t.subject, "actor": t.actor,
                  "created_at": t.created_at.isoformat()} for p, t in rows[:limit]]
        return items, (rows[limit - 1][0].id if len(rows) > limit else None)

    async def totals(self) -> Totals:
        """The ledger's books, for audits and tests: see `Totals`."""
        async with self.db.read_session() as session:
            kinds = dict((await session.exec(select(LedgerAccount.kind, func.sum(LedgerAccount.balance))
                                             .group_by(col(LedgerAccount.kind)))).all())
            grants = (await session.exec(select(func.coalesce(func.sum(LedgerTransaction.amount), 0))
                                         .where(LedgerTransaction.type == TxType.GRANT.value))).one()
            negative = (await session.exec(select(func.count()).select_from(LedgerAccount).where(
                col(LedgerAccount.balance) < 0, col(LedgerAccount.kind) != "mint"))).one()
        by_kind = {k: int(v or 0) for k, v in kinds.items()}
        return Totals(supply=-by_kind.get("mint", 0), grants=int(grants), balance_sum=sum(by_kind.values()),
                      negative_accounts=int(negative), by_kind=by_kind)

    def currency(self) -> dict[str, str]:
        """The currency's name and symbol, as API answers show them."""
        return {"name": self.settings.currency_name, "symbol": self.settings.currency_symbol}
