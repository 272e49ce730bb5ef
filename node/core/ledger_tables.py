"""Ledger tables: accounts with their balances, transactions, and the postings that make them up.

Imported by node/core/tables.py so that the one metadata (and the migration check) covers them.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from node.core.tables import timestamp


class LedgerAccount(SQLModel, table=True):
    """A holder of currency: a user, the mint, or a bounty's escrow. Only the mint's balance may be
    negative: it is minus the currency in circulation."""

    __tablename__ = "ledger_accounts"
    __table_args__ = (sa.CheckConstraint("balance >= 0 OR kind = 'mint'", name="balance_not_negative"),)

    id: int | None = Field(default=None, primary_key=True)
    # "user:12", "mint", "escrow:bounty:3": unique, so concurrent first uses create one row.
    key: str = Field(max_length=64, unique=True)
    kind: str = Field(max_length=16)
    user_id: int | None = Field(default=None, foreign_key="users.id", ondelete="RESTRICT", unique=True)
    balance: int = Field(default=0, sa_type=sa.BigInteger)
    created_at: datetime = timestamp()


class LedgerTransaction(SQLModel, table=True):
    """One movement of currency: postings that sum to zero, with who did it, why, and an optional
    idempotency key (unique per actor) so that a replayed request has one effect."""

    __tablename__ = "ledger_transactions"
    __table_args__ = (sa.UniqueConstraint("actor", "idempotency_key", name="uq_ledger_transactions_actor_key"),)

    id: int | None = Field(default=None, primary_key=True)
    type: str = Field(max_length=32, index=True)
    actor: str = Field(max_length=64)  # "user:12", "operator" (the command line), "system" (grants, expiry)
    idempotency_key: str | None = Field(default=None, max_length=128)
    # SHA-256 of what the request asked for: a replay with other content is refused, not ignored.
    fingerprint: str = Field(max_length=64)
    reason: str = Field(default="", max_length=500)
    subject: str | None = Field(default=None, max_length=64, index=True)  # "bounty:5", "entry:9"
    amount: int = Field(sa_type=sa.BigInteger)  # the sum of the positive postings
    created_at: datetime = timestamp()


class LedgerPosting(SQLModel, table=True):
    """One account's side of a transaction, with the account's balance right after it."""

    __tablename__ = "ledger_postings"
    __table_args__ = (sa.Index("ix_ledger_postings_account_id_id", "account_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    transaction_id: int = Field(foreign_key="ledger_transactions.id", ondelete="RESTRICT", index=True)
    account_id: int = Field(foreign_key="ledger_accounts.id", ondelete="RESTRICT")
    amount: int = Field(sa_type=sa.BigInteger)
    balance_after: int = Field(sa_type=sa.BigInteger)
