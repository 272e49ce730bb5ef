"""Database tables (SQLModel). Every change here needs an Alembic migration in node/core/migrations;
tests/test_migrations.py fails when the two disagree."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

metadata = SQLModel.metadata
metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (SQLite keeps no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def timestamp(*, nullable: bool = False, index: bool = False) -> Any:
    """A UTC timestamp column; defaults to now when not nullable."""
    kwargs: dict[str, Any] = {"sa_type": UTCDateTime, "nullable": nullable, "index": index}
    if nullable:
        return Field(default=None, **kwargs)
    return Field(default_factory=utcnow, **kwargs)


class Role(StrEnum):
    """What a user may do. Each role includes the powers of the ones after it."""

    ADMIN = "admin"          # runs the node: users, plugins, federation, everything
    MODERATOR = "moderator"  # reviews reports, hides and takes down content
    CREATOR = "creator"      # publishes models and images
    MEMBER = "member"        # downloads, reviews, reacts, generates

    @property
    def rank(self) -> int:
        return list(reversed(Role)).index(self)

    def includes(self, other: Role) -> bool:
        """True when this role has at least the powers of `other`."""
        return self.rank >= other.rank


class User(SQLModel, table=True):
    """A person with an account on this node."""

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=39)
    # Lower-cased username: names are unique regardless of case.
    username_key: str = Field(max_length=39, unique=True)
    role: str = Field(default=Role.MEMBER.value, max_length=16)
    password_hash: str | None = Field(default=None, max_length=255)
    email: str | None = Field(default=None, max_length=254)
    disabled: bool = Field(default=False)
    created_at: datetime = timestamp()


class ApiToken(SQLModel, table=True):
    """An API token. Only its SHA-256 is stored; the token itself is shown once, at creation."""

    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    name: str = Field(max_length=100)
    token_hash: str = Field(max_length=64, unique=True)
    # The first characters of the token, so a user can tell tokens apart in a list.
    prefix: str = Field(max_length=16)
    created_at: datetime = timestamp()
    expires_at: datetime | None = timestamp(nullable=True)
    last_used_at: datetime | None = timestamp(nullable=True)
    revoked_at: datetime | None = timestamp(nullable=True)
