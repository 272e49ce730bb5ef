"""Accounts: users, roles, passwords (Argon2id) and API tokens (stored as SHA-256, shown once)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from node.core.config import AccountsSection
from node.core.db import Database
from node.core.errors import Conflict, Forbidden, InvalidInput, NotFound, RateLimited, Unauthenticated
from node.core.tables import ApiToken, Role, User, utcnow

USERNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{2,38}$")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}$")
TOKEN_PREFIX = "atr_"
TOKEN_BYTES = 32
TOKEN_NAME_MAX = 100
MAX_PASSWORD_LENGTH = 1024
# Writing last_used_at on every request would turn every read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)
LOGIN_WINDOW_SECONDS = 60.0


def hash_token(token: str) -> str:
    """The stored form of an API token. Tokens are 256-bit random, so a fast hash is enough."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_role(text: str) -> Role:
    """A Role from its name; InvalidInput listing the roles otherwise."""
    try:
        return Role(text.strip().lower())
    except ValueError:
        raise InvalidInput(f"unknown role {text!r}: use one of {', '.join(r.value for r in Role)}") from None


@dataclass(frozen=True)
class IssuedToken:
    """A freshly created token: `secret` is shown to the user once and never stored."""

    secret: str
    record: ApiToken


class LoginThrottle:
    """Counts failed logins per key in a sliding window, in memory (per process)."""

    def __init__(self, limit: int, window: float = LOGIN_WINDOW_SECONDS) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def check(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            failures = self._failures.get(key)
            if failures is None:
                continue
            while failures and now - failures[0] > self.window:
                failures.popleft()
            if len(failures) >= self.limit:
                wait = int(self.window - (now - failures[0])) + 1
                raise RateLimited(f"too many failed logins; try again in {wait} s", retry_after=wait)

    def fail(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            self._failures.setdefault(key, deque()).append(now)
        if len(self._failures) > 100_000:  # bound memory under a spray of random names
            self._failures.clear()

    def succeed(self, key: str) -> None:
        self._failures.pop(key, None)


class Accounts:
    """User and token operations on one database."""

    def __init__(self, db: Database, settings: AccountsSection) -> None:
        self.db = db
        self.settings = settings
        self.hasher = PasswordHasher(time_cost=settings.argon2_time_cost,
                                     memory_cost=settings.argon2_memory_kib, parallelism=1)
        self.throttle = LoginThrottle(settings.login_attempts_per_minute)
        self._dummy_hash: str | None = None

    # -- users ---------------------------------------------------------------------------------

    def check_username(self, username: str) -> str:
        if not isinstance(username, str) or not USERNAME_RE.match(username):
            raise InvalidInput("username must be 3-39 characters: letters, digits, '_', '-' and '.', "
                               "not starting with '-' or '.'")
        return username

    def check_password_rules(self, password: str) -> None:
        if not isinstance(password, str):
            raise InvalidInput("password must be a string")
        if len(password) < self.settings.min_password_length:
            raise InvalidInput(f"password must be at least {self.settings.min_password_length} characters")
        if len(password) > MAX_PASSWORD_LENGTH:
            raise InvalidInput(f"password must be at most {MAX_PASSWORD_LENGTH} characters")

    async def hash_password(self, password: str) -> str:
        """Argon2id hash of a password (in a worker thread: it takes tens of milliseconds on purpose)."""
        self.check_password_rules(password)
        return await asyncio.to_thread(self.hasher.hash, password)

    async def create_user(self, username: str, *, role: Role = Role.MEMBER, password: str | None = None,
                          email: str | None = None) -> User:
        """Create a user; Conflict when the name is taken (in any letter case)."""
        self.check_username(username)
        if email is not None and (not isinstance(email, str) or not EMAIL_RE.match(email)):
            raise InvalidInput("email is not a valid address")
        password_hash = await self.hash_password(password) if password is not None else None
        user = User(username=username, username_key=username.lower(), role=Role(role).value,
                    password_hash=password_hash, email=email)
        async with self.db.session() as session:
            session.add(user)
            try:
                await session.commit()
            except IntegrityError:
                raise Conflict(f"the username {username!r} is taken") from None
            await session.refresh(user)
        return user

    async def get_user(self, username: str) -> User:
        async with self.db.session() as session:
            user = (await session.exec(select(User).where(User.username_key == str(username).lower()))).first()
        if user is None:
            raise NotFound(f"no user named {username!r}")
        return user

    async def list_users(self) -> list[User]:
        async with self.db.session() as session:
            return list((await session.exec(select(User).order_by(col(User.id)))).all())

    async def update_user(self, username: str, *, role: Role | None = None, disabled: bool | None = None,
                          password: str | None = None) -> User:
        """Change a user's role, disabled flag or password. Refuses to remove the last active admin."""
        password_hash = await self.hash_password(password) if password is not None else None
        async with self.db.session() as session:
            user = (await session.exec(select(User).where(User.username_key == username.lower()))).first()
            if user is None:
                raise NotFound(f"no user named {username!r}")
            demoting = (role is not None and role != Role.ADMIN) or disabled is True
            if demoting and user.role == Role.ADMIN and not user.disabled:
                admins = (await session.exec(select(User).where(User.role == Role.ADMIN.value,
                                                                col(User.disabled).is_(False)))).all()
                if len(admins) <= 1:
                    raise Conflict(f"{user.username} is the last active admin; make another admin first")
            if role is not None:
                user.role = Role(role).value
            if disabled is not None:
                user.disabled = disabled
            if password_hash is not None:
                user.password_hash = password_hash
            session.add(user)
            await session.commit()
            await session.refresh(user)
        return user

    async def login(self, username: str, password: str, *, client: str = "") -> User:
        """The user whose password this is; Unauthenticated otherwise (same message either way)."""
        if not isinstance(username, str) or not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
            raise Unauthenticated("wrong username or password")
        keys = (f"user:{username.lower()}", f"addr:{client}")
        self.throttle.check(*keys)
        try:
            user = await self.get_user(username)
        except NotFound:
            user = None
        stored = user.password_hash if user is not None else None
        ok = await asyncio.to_thread(self._verify, stored, password)
        if user is None or not ok:
            self.throttle.fail(*keys)
            raise Unauthenticated("wrong username or password")
        if user.disabled:
            raise Unauthenticated("this account is disabled")
        self.throttle.succeed(keys[0])
        if self.hasher.check_needs_rehash(stored):  # type: ignore[arg-type]
            await self.update_user(user.username, password=password)
        return user

    def _verify(self, stored: str | None, password: str) -> bool:
        if stored is None:
            # Spend the same time as a real check, so response times do not reveal which names exist.
            if self._dummy_hash is None:
                self._dummy_hash = self.hasher.hash(secrets.token_hex(16))
            stored, password = self._dummy_hash, ""
            try:
                self.hasher.verify(stored, password)
            except (VerificationError, InvalidHashError):
                pass
            return False
        try:
            return self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    # -- tokens --------------------------------------------------------------------------------

    async def issue_token(self, user: User, name: str = "api", *, expires_in_days: int | None = None) -> IssuedToken:
        """Create an API token for `user`; its secret is returned once and only its hash is stored."""
        if not isinstance(name, str) or not name.strip() or len(name) > TOKEN_NAME_MAX:
            raise InvalidInput(f"token name must be 1-{TOKEN_NAME_MAX} characters")
        max_days = self.settings.token_max_days
        if expires_in_days is not None:
            if not isinstance(expires_in_days, int) or isinstance(expires_in_days, bool) or expires_in_days < 1:
                raise InvalidInput("expires_in_days must be a whole number of days, at least 1")
            if expires_in_days > 36500:
                raise InvalidInput("expires_in_days must be at most 36500")
        if max_days and expires_in_days is None:
            expires_in_days = max_days  # the longest this node allows
        if max_days and expires_in_days > max_days:  # type: ignore[operator]
            raise InvalidInput(f"this node allows tokens of at most {max_days} days")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        now = utcnow()
        record = ApiToken(user_id=user.id, name=name.strip(), token_hash=hash_token(secret),
                          prefix=secret[: len(TOKEN_PREFIX) + 6], created_at=now,
                          expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None)
        async with self.db.session() as session:
            session.add(record)
            await session.commit()
            await session.refresh(record)
        return IssuedToken(secret=secret, record=record)

    async def authenticate(self, secret: str | None, *, allow_disabled: bool = False) -> User:
        """The user a token belongs to; Unauthenticated when it is missing, unknown, expired or revoked,
        or its account is disabled (unless `allow_disabled`: a banned member appealing their ban)."""
        if not secret:
            raise Unauthenticated("this needs an API token: send `Authorization: Bearer <token>` "
                                  "or `?token=<token>`")
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 128:
            raise Unauthenticated("the API token is not valid")
        async with self.db.read_session() as session:
            row = (await session.exec(
                select(ApiToken, User).join(User, col(User.id) == col(ApiToken.user_id))
                .where(ApiToken.token_hash == hash_token(secret)))).first()
        if row is None:
            raise Unauthenticated("the API token is not valid")
        token, user = row
        now = utcnow()
        if token.revoked_at is not None:
            raise Unauthenticated("the API token was revoked")
        if token.expires_at is not None and token.expires_at <= now:
            raise Unauthenticated("the API token has expired")
        if user.disabled and not allow_disabled:
            raise Unauthenticated("this account is disabled")
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            async with self.db.session() as session:
                await session.exec(update(ApiToken).where(col(ApiToken.id) == token.id)  # type: ignore[call-overload]
                                   .values(last_used_at=now))
                await session.commit()
        return user

    async def list_tokens(self, user: User) -> list[ApiToken]:
        async with self.db.session() as session:
            return list((await session.exec(
                select(ApiToken).where(ApiToken.user_id == user.id).order_by(col(ApiToken.id)))).all())

    async def revoke_token(self, token_id: int, *, actor: User | None = None) -> ApiToken:
        """Revoke a token. An `actor` revokes their own tokens (admins: anyone's); no actor is the
        node's operator at the command line. Revoking twice is harmless."""
        async with self.db.session() as session:
            token = await session.get(ApiToken, token_id)
            if token is None or (actor is not None and token.user_id != actor.id
                                 and not Role(actor.role).includes(Role.ADMIN)):
                raise NotFound(f"no token {token_id}")
            if token.revoked_at is None:
                token.revoked_at = utcnow()
                session.add(token)
                await session.commit()
                await session.refresh(token)
        return token


def require_role(user: User, role: Role) -> None:
    """Forbidden unless `user` has at least `role`."""
    if not Role(user.role).includes(role):
        raise Forbidden(f"this needs the {role.value} role; you are {user.role}")
