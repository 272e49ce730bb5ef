"""Remote worker tokens: the credential of an `atrium worker` process. A worker token is not a user's API
token: it may only claim jobs and report on the jobs it holds (node/api/workers.py). Like API tokens it
is 256-bit random, shown once, and stored as its SHA-256."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from node.core.accounts import hash_token
from node.core.db import Database
from node.core.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from node.core.tables import WorkerToken, utcnow

WORKER_TOKEN_PREFIX = "atw_"
WORKER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Writing last_seen_at on every heartbeat would double the writes of a busy worker.
LAST_SEEN_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class IssuedWorkerToken:
    """A new worker token: `secret` is shown once and never stored."""

    secret: str
    record: WorkerToken


class WorkerTokens:
    """Create, list, revoke and check worker tokens."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, name: str) -> IssuedWorkerToken:
        """A token for a new worker named `name`; Conflict when the name is taken."""
        if not isinstance(name, str) or not WORKER_NAME_RE.match(name):
            raise InvalidInput("a worker's name must be 1-64 letters, digits, '_', '-' and '.', starting with a "
                               "letter or digit")
        secret = WORKER_TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = WorkerToken(name=name, token_hash=hash_token(secret), prefix=secret[:len(WORKER_TOKEN_PREFIX) + 6])
        async with self.db.session() as session:
            session.add(record)
            try:
                await session.commit()
            except IntegrityError:
                raise Conflict(f"there is already a worker named {name!r}; revoke it first or choose another "
                               "name") from None
            await session.refresh(record)
        return IssuedWorkerToken(secret=secret, record=record)

    async def list(self) -> list[WorkerToken]:
        async with self.db.read_session() as session:
            return list((await session.exec(select(WorkerToken).order_by(col(WorkerToken.id)))).all())

    async def revoke(self, name: str) -> WorkerToken:
        """Revoke a worker's token (its name stays taken, so a list shows what was revoked). Revoking twice
        is harmless."""
        async with self.db.session() as session:
            record = (await session.exec(select(WorkerToken).where(WorkerToken.name == name))).first()
            if record is None:
                raise NotFound(f"no worker named {name!r}")
            if record.revoked_at is None:
                record.revoked_at = utcnow()
                session.add(record)
                await session.commit()
                await session.refresh(record)
        return record

    async def authenticate(self, secret: str | None) -> WorkerToken:
        """The worker a token belongs to; Unauthenticated when it is missing, unknown or revoked."""
        if not secret:
            raise Unauthenticated("this route is for remote workers: send `Authorization: Bearer <worker token>` "
                                  "(an admin creates one with `atrium workers add NAME`)")
        if not secret.startswith(WORKER_TOKEN_PREFIX) or len(secret) > 128:
            raise Unauthenticated("this route needs a worker token (atw_...), not a user's API token")
        async with self.db.read_session() as session:
            record = (await session.exec(select(WorkerToken).where(
                WorkerToken.token_hash == hash_token(secret)))).first()
        if record is None:
            raise Unauthenticated("the worker token is not valid")
        if record.revoked_at is not None:
            raise Unauthenticated(f"the token of worker {record.name!r} was revoked")
        now = utcnow()
        if record.last_seen_at is None or now - record.last_seen_at > LAST_SEEN_RESOLUTION:
            async with self.db.session() as session:
                await session.exec(update(WorkerToken).where(col(WorkerToken.id) == record.id)  # type: ignore[call-overload]
                                   .values(last_seen_at=now))
                await session.commit()
        return record
