"""Books for ledger and bounty tests: a migrated database with the ledger, the bounties service, users
and images, plus the checks every test of currency ends with."""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from node.core.accounts import Accounts
from node.core.bounty_tables import BountyBenefactor
from node.core.catalog import Catalog
from node.core.db import Database
from node.core.ledger import Ledger, TxType
from node.core.ledger_tables import LedgerTransaction
from node.core.tables import Image, Role, User
from plugins.bounties.bounties import Bounties, BountySettings
from tests.conftest import make_config, write_node

_names = itertools.count(1)


@dataclass
class Books:
    """The ledger and bounties on one real database."""

    db: Database
    accounts: Accounts
    ledger: Ledger
    bounties: Bounties
    catalog: Catalog

    async def user(self, prefix: str = "u", role: Role = Role.MEMBER) -> User:
        return await self.accounts.create_user(f"{prefix}{next(_names)}_{secrets.token_hex(2)}", role=role)

    async def image(self, owner: User) -> int:
        """An image row of `owner`'s (entries only need one that exists and is theirs)."""
        async with self.db.session() as session:
            image = Image(owner_id=owner.id, sha256=secrets.token_hex(32), mime="image/png", width=8, height=8,  # type: ignore[arg-type]
                          size=100)
            session.add(image)
            await session.commit()
            return image.id  # type: ignore[return-value]

    async def assert_books_balance(self) -> Any:
        """Every invariant of the books: balances sum to zero, supply equals grants, no negative balance,
        every escrow equals its outstanding shares, and no benefactor awarded twice."""
        totals = await self.ledger.totals()
        assert totals.balance_sum == 0, totals
        assert totals.supply == totals.grants, totals
        assert totals.negative_accounts == 0, totals
        assert await self.bounties.escrow_mismatches() == []
        async with self.db.read_session() as session:
            awards = (await session.exec(
                select(LedgerTransaction.actor, LedgerTransaction.subject, func.count())
                .where(LedgerTransaction.type == TxType.BOUNTY_AWARD.value,
                       col(LedgerTransaction.actor).startswith("user:"))
                .group_by(col(LedgerTransaction.actor), col(LedgerTransaction.subject)))).all()
            assert all(n == 1 for _, _, n in awards), awards
            awarded = (await session.exec(select(func.count()).select_from(BountyBenefactor)
                                          .where(BountyBenefactor.outcome == "awarded"))).one()
            assert awarded == len(awards)
        return totals


async def open_books(tmp_path: Path, database_url: str, *, ledger: dict[str, Any] | None = None,
                     bounties: dict[str, Any] | None = None) -> Books:
    """Migrate the database at `database_url` and open the books on it (close with `books.db.close()`)."""
    data_dir = write_node(tmp_path / f"books{secrets.token_hex(3)}")
    config = make_config(data_dir, database={"url": database_url}, ledger=ledger or {})
    db = Database.from_config(config)
    await db.upgrade()
    books_ledger = Ledger(db, config.ledger)
    return Books(db=db, accounts=Accounts(db, config.accounts), ledger=books_ledger,
                 bounties=Bounties(books_ledger, BountySettings(**(bounties or {}))),
                 catalog=Catalog(db, config.node.name))
