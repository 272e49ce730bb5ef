"""Tables of the bounties plugin (plugins/bounties). They live beside the core tables because the node has
one schema and one migration history; only the plugin reads or writes them."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from node.core.tables import json_column, timestamp


class Bounty(SQLModel, table=True):
    """A request for a model, LoRA, data set or image, paid from an escrow account on the ledger."""

    __tablename__ = "bounties"

    id: int | None = Field(default=None, primary_key=True)
    creator_id: int = Field(foreign_key="users.id", ondelete="RESTRICT", index=True)
    name: str = Field(max_length=255)
    description: str = Field(default="", sa_type=sa.Text)
    type: str = Field(max_length=32)
    nsfw_level: int = Field(default=1)
    tags: list[str] = json_column(list)
    reference_image_ids: list[int] = json_column(list)
    entry_mode: str = Field(default="open", max_length=16)
    entry_limit: int = Field(default=1)
    award_mode: str = Field(default="single", max_length=16)
    escrow_account_id: int = Field(foreign_key="ledger_accounts.id", ondelete="RESTRICT", unique=True)
    state: str = Field(default="open", max_length=16, index=True)  # open, awarded, refunded
    starts_at: datetime = timestamp()
    expires_at: datetime = timestamp(index=True)
    closed_at: datetime | None = timestamp(nullable=True)
    created_at: datetime = timestamp()


class BountyEntry(SQLModel, table=True):
    """A submission to a bounty: an image and/or a model version of the entrant's."""

    __tablename__ = "bounty_entries"

    id: int | None = Field(default=None, primary_key=True)
    bounty_id: int = Field(foreign_key="bounties.id", ondelete="RESTRICT", index=True)
    user_id: int = Field(foreign_key="users.id", ondelete="RESTRICT")
    image_id: int | None = Field(default=None, foreign_key="images.id", ondelete="SET NULL")
    version_id: int | None = Field(default=None, foreign_key="model_versions.id", ondelete="SET NULL")
    note: str = Field(default="", max_length=1000)
    awarded: int = Field(default=0, sa_type=sa.BigInteger)
    created_at: datetime = timestamp()


class BountyBenefactor(SQLModel, table=True):
    """One user's share of a bounty's pool and what became of it (outcome: null while outstanding,
    then `awarded`, `auto` (given to the top entry at close) or `refunded`)."""

    __tablename__ = "bounty_benefactors"

    bounty_id: int = Field(foreign_key="bounties.id", ondelete="RESTRICT", primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="RESTRICT", primary_key=True, index=True)
    amount: int = Field(sa_type=sa.BigInteger)
    outcome: str | None = Field(default=None, max_length=16)
    entry_id: int | None = Field(default=None, foreign_key="bounty_entries.id", ondelete="RESTRICT")
    decided_at: datetime | None = timestamp(nullable=True)
    created_at: datetime = timestamp()

