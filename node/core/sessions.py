"""Browser sessions of the web pages: who is signed in and which content levels they browse at.

A session is a random secret the browser keeps in a cookie; the database holds only its SHA-256, so
a copy of the database signs nobody in. Anonymous visitors get a secret too (for their CSRF token),
but a row only once they save something (a browsing level), so crawlers never fill the table.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import col, select

from node.core.db import Database
from node.core.errors import InvalidInput
from node.core.tables import BrowserSession, User, UserPreference, utcnow
from node.core.vocabulary import NsfwLevel

SESSION_BYTES = 32
# Secrets of visitors with nothing stored start with this, so their page views need no database lookup.
UNSTORED_PREFIX = "a_"
SESSION_LIFETIME = timedelta(days=30)
# Writing last_seen_at on every page view would turn every read into a write.
LAST_SEEN_RESOLUTION = timedelta(hours=1)
# Levels a visitor who is not signed in may choose: the safe ones. R and above need an account.
ANONYMOUS_MAX_LEVEL = NsfwLevel.PG13
BROWSING_LEVELS = (NsfwLevel.PG, NsfwLevel.PG13, NsfwLevel.R, NsfwLevel.X, NsfwLevel.XXX)
LEVEL_LABELS = {NsfwLevel.PG: "PG", NsfwLevel.PG13: "PG-13", NsfwLevel.R: "R", NsfwLevel.X: "X",
                NsfwLevel.XXX: "XXX"}


def hash_secret(secret: str) -> str:
    """The stored form of a session secret (256-bit random, so a fast hash is enough)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def csrf_token_for(secret: str) -> str:
    """The CSRF token of a session: derived from its secret, so it needs no storage and changes with it."""
    return hmac.new(secret.encode("utf-8"), b"atrium-csrf", hashlib.sha256).hexdigest()


def level_mask(level: int) -> int:
    """The mask of every level up to and including `level` (a single flag): R -> PG | PG-13 | R."""
    return (int(level) << 1) - 1


def parse_level(text: str | int | None, *, signed_in: bool) -> NsfwLevel:
    """A browsing level from its label ("PG-13") or flag value ("2"); InvalidInput otherwise, and for
    levels above PG-13 when nobody is signed in."""
    chosen = None
    for level in BROWSING_LEVELS:
        if str(text).strip().upper() in (LEVEL_LABELS[level], str(int(level))):
            chosen = level
    if chosen is None:
        raise InvalidInput("browsing level: choose one of " + ", ".join(LEVEL_LABELS.values()))
    if not signed_in and chosen > ANONYMOUS_MAX_LEVEL:
        raise InvalidInput(f"sign in to browse at {LEVEL_LABELS[chosen]}; visitors who are not signed in "
                           f"may choose PG or PG-13")
    return chosen


@dataclass
class Visitor:
    """Who is behind a browser: their session (None until one is stored), user and browsing level."""

    secret: str
    session: BrowserSession | None
    user: User | None
    browsing_level: int

    @property
    def csrf_token(self) -> str:
        return csrf_token_for(self.secret)

    @property
    def levels(self) -> int:
        """The mask of content levels this visitor sees."""
        return level_mask(self.browsing_level)


class BrowserSessions:
    """Session and preference operations on one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def new_secret(*, stored: bool = True) -> str:
        """A new session secret; one for a visitor with nothing stored yet is marked as such."""
        return ("" if stored else UNSTORED_PREFIX) + secrets.token_urlsafe(SESSION_BYTES)

    @staticmethod
    def anonymous(secret: str | None = None) -> Visitor:
        """A visitor who is not signed in and has nothing stored (a new secret unless one is given)."""
        return Visitor(secret=secret or BrowserSessions.new_secret(stored=False), session=None, user=None,
                       browsing_level=NsfwLevel.PG)

    async def visitor(self, secret: str | None) -> Visitor | None:
        """The visitor a cookie's secret belongs to; None for an unknown or expired secret (an
        anonymous visitor with nothing saved looks the same: the caller keeps its secret)."""
        if not secret or len(secret) > 128 or secret.startswith(UNSTORED_PREFIX):
            return None
        async with self.db.read_session() as session:
            row = (await session.exec(
                select(BrowserSession, User, UserPreference)
                .join(User, col(User.id) == col(BrowserSession.user_id), isouter=True)
                .join(UserPreference, col(UserPreference.user_id) == col(BrowserSession.user_id), isouter=True)
                .where(BrowserSession.secret_hash == hash_secret(secret)))).first()
        if row is None:
            return None
        stored, user, preference = row
        now = utcnow()
        if stored.expires_at <= now or (user is not None and user.disabled):
            return None
        if now - stored.last_seen_at > LAST_SEEN_RESOLUTION:
            async with self.db.session() as session:
                await session.exec(sa.update(BrowserSession).where(col(BrowserSession.id) == stored.id)  # type: ignore[call-overload]
                                   .values(last_seen_at=now, expires_at=now + SESSION_LIFETIME))
                await session.commit()
        level = stored.browsing_level
        if user is not None and preference is not None:
            level = preference.browsing_level
        return Visitor(secret=secret, session=stored, user=user, browsing_level=level)

    async def sign_in(self, user: User, *, previous: Visitor | None = None) -> Visitor:
        """A new session for `user` (a new secret: a secret known before signing in is never promoted,
        which defeats session fixation). The previous anonymous session is removed."""
        secret = self.new_secret()
        now = utcnow()
        async with self.db.session() as session:
            # Expired sessions go when someone signs in, so the table needs no separate chore.
            await session.exec(sa.delete(BrowserSession).where(col(BrowserSession.expires_at) <= now))  # type: ignore[call-overload]
            if previous is not None and previous.session is not None:
                await session.exec(sa.delete(BrowserSession)  # type: ignore[call-overload]
                                   .where(col(BrowserSession.id) == previous.session.id))
            preference = await session.get(UserPreference, user.id)
            level = preference.browsing_level if preference is not None else NsfwLevel.PG
            stored = BrowserSession(secret_hash=hash_secret(secret), user_id=user.id, browsing_level=level,
                                    created_at=now, last_seen_at=now, expires_at=now + SESSION_LIFETIME)
            session.add(stored)
            await session.commit()
            await session.refresh(stored)
        return Visitor(secret=secret, session=stored, user=user, browsing_level=level)

    async def sign_out(self, visitor: Visitor) -> None:
        """Forget the visitor's session (its secret then signs nobody in)."""
        async with self.db.session() as session:
            await session.exec(sa.delete(BrowserSession)  # type: ignore[call-overload]
                               .where(BrowserSession.secret_hash == hash_secret(visitor.secret)))
            await session.commit()

    async def set_browsing_level(self, visitor: Visitor, level: NsfwLevel) -> Visitor:
        """Save a browsing level: on the user for a signed-in visitor, else on the anonymous session
        (created now if it did not exist, with a new secret: the old one said nothing was stored)."""
        now = utcnow()
        if visitor.secret.startswith(UNSTORED_PREFIX):
            visitor = Visitor(secret=self.new_secret(), session=None, user=visitor.user,
                              browsing_level=visitor.browsing_level)
        async with self.db.session() as session:
            if visitor.user is not None:
                preference = await session.get(UserPreference, visitor.user.id)
                if preference is None:
                    preference = UserPreference(user_id=visitor.user.id)  # type: ignore[arg-type]
                preference.browsing_level = int(level)
                session.add(preference)
            stored = (await session.exec(select(BrowserSession).where(
                BrowserSession.secret_hash == hash_secret(visitor.secret)))).first()
            if stored is None:
                stored = BrowserSession(secret_hash=hash_secret(visitor.secret), user_id=None, created_at=now,
                                        last_seen_at=now, expires_at=now + SESSION_LIFETIME)
            stored.browsing_level = int(level)
            session.add(stored)
            await session.commit()
            await session.refresh(stored)
        return Visitor(secret=visitor.secret, session=stored, user=visitor.user, browsing_level=int(level))
