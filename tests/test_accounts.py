"""Accounts on SQLite and PostgreSQL: passwords hashed with Argon2id, tokens stored hashed and shown once."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text

from node.core.accounts import Accounts, hash_token
from node.core.config import AccountsSection, Config
from node.core.db import Database
from node.core.errors import Conflict, InvalidInput, NotFound, RateLimited, Unauthenticated
from node.core.tables import ApiToken, Role, utcnow


@pytest.fixture
async def accounts(config: Config):
    db = Database.from_config(config)
    try:
        yield Accounts(db, config.accounts)
    finally:
        await db.close()


async def test_passwords_are_stored_as_argon2id_hashes_never_in_clear(accounts: Accounts) -> None:
    await accounts.create_user("alice", password="correct horse battery")
    async with accounts.db.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT password_hash FROM users"))).scalar()
    assert stored.startswith("$argon2id$")
    assert "correct horse battery" not in stored


async def test_the_default_kdf_settings_are_memory_hard() -> None:
    settings = AccountsSection()
    assert settings.argon2_memory_kib >= 65536 and settings.argon2_time_cost >= 2


async def test_login_with_the_right_password_returns_the_user(accounts: Accounts) -> None:
    await accounts.create_user("alice", password="correct horse battery")
    user = await accounts.login("ALICE", "correct horse battery")
    assert user.username == "alice"


async def test_login_with_a_wrong_password_or_unknown_user_says_the_same(accounts: Accounts) -> None:
    await accounts.create_user("alice", password="correct horse battery")
    with pytest.raises(Unauthenticated, match="wrong username or password"):
        await accounts.login("alice", "wrong horse battery")
    with pytest.raises(Unauthenticated, match="wrong username or password"):
        await accounts.login("nobody", "correct horse battery")


async def test_repeated_failed_logins_are_throttled(accounts: Accounts) -> None:
    await accounts.create_user("alice", password="correct horse battery")
    for _ in range(accounts.settings.login_attempts_per_minute):
        with pytest.raises(Unauthenticated):
            await accounts.login("alice", "guess", client="10.9.9.9")
    with pytest.raises(RateLimited, match="too many failed logins"):
        await accounts.login("alice", "correct horse battery", client="10.9.9.9")


async def test_usernames_are_unique_regardless_of_case(accounts: Accounts) -> None:
    await accounts.create_user("Alice")
    with pytest.raises(Conflict, match="taken"):
        await accounts.create_user("alice")


@pytest.mark.parametrize("name", ["ab", "-lead", "has space", "x" * 40, "semi;colon", ""])
async def test_malformed_usernames_are_refused(accounts: Accounts, name: str) -> None:
    with pytest.raises(InvalidInput, match="username must be"):
        await accounts.create_user(name)


async def test_short_passwords_are_refused(accounts: Accounts) -> None:
    with pytest.raises(InvalidInput, match="at least 10 characters"):
        await accounts.create_user("alice", password="short")


async def test_a_token_is_stored_only_as_its_hash_and_authenticates_its_user(accounts: Accounts) -> None:
    user = await accounts.create_user("alice")
    issued = await accounts.issue_token(user, "laptop")
    async with accounts.db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM api_tokens"))).mappings().all()
    assert all(issued.secret not in str(dict(row)) for row in rows)
    assert rows[0]["token_hash"] == hash_token(issued.secret)
    assert (await accounts.authenticate(issued.secret)).username == "alice"


@pytest.mark.parametrize("secret, message", [
    (None, "needs an API token"),
    ("", "needs an API token"),
    ("atr_not-a-real-token", "not valid"),
    ("garbage", "not valid"),
    ("atr_" + "x" * 500, "not valid"),
])
async def test_missing_or_unknown_tokens_are_refused(accounts: Accounts, secret, message: str) -> None:
    with pytest.raises(Unauthenticated, match=message):
        await accounts.authenticate(secret)


async def test_an_expired_token_is_refused(accounts: Accounts) -> None:
    user = await accounts.create_user("alice")
    issued = await accounts.issue_token(user, "short-lived", expires_in_days=1)
    async with accounts.db.session() as session:
        token = await session.get(ApiToken, issued.record.id)
        token.expires_at = utcnow() - timedelta(seconds=1)
        session.add(token)
        await session.commit()
    with pytest.raises(Unauthenticated, match="expired"):
        await accounts.authenticate(issued.secret)


async def test_a_revoked_token_is_refused_and_revoking_again_is_harmless(accounts: Accounts) -> None:
    user = await accounts.create_user("alice")
    issued = await accounts.issue_token(user, "laptop")
    await accounts.revoke_token(issued.record.id, actor=user)
    await accounts.revoke_token(issued.record.id, actor=user)
    with pytest.raises(Unauthenticated, match="revoked"):
        await accounts.authenticate(issued.secret)


async def test_users_cannot_revoke_other_users_tokens_but_admins_can(accounts: Accounts) -> None:
    alice = await accounts.create_user("alice")
    bob = await accounts.create_user("bob")
    admin = await accounts.create_user("root", role=Role.ADMIN)
    issued = await accounts.issue_token(alice, "laptop")
    with pytest.raises(NotFound):
        await accounts.revoke_token(issued.record.id, actor=bob)
    await accounts.revoke_token(issued.record.id, actor=admin)
    with pytest.raises(Unauthenticated):
        await accounts.authenticate(issued.secret)


async def test_a_disabled_users_tokens_stop_working(accounts: Accounts) -> None:
    await accounts.create_user("root", role=Role.ADMIN)
    user = await accounts.create_user("alice")
    issued = await accounts.issue_token(user, "laptop")
    await accounts.update_user("alice", disabled=True)
    with pytest.raises(Unauthenticated, match="disabled"):
        await accounts.authenticate(issued.secret)


async def test_the_last_active_admin_cannot_be_demoted_or_disabled(accounts: Accounts) -> None:
    await accounts.create_user("root", role=Role.ADMIN)
    with pytest.raises(Conflict, match="last active admin"):
        await accounts.update_user("root", role=Role.MEMBER)
    with pytest.raises(Conflict, match="last active admin"):
        await accounts.update_user("root", disabled=True)
    await accounts.create_user("second", role=Role.ADMIN)
    assert (await accounts.update_user("root", role=Role.MEMBER)).role == "member"


async def test_token_lifetimes_respect_the_node_maximum(accounts: Accounts) -> None:
    accounts.settings.token_max_days = 30
    user = await accounts.create_user("alice")
    with pytest.raises(InvalidInput, match="at most 30 days"):
        await accounts.issue_token(user, "long", expires_in_days=31)
    issued = await accounts.issue_token(user, "ok", expires_in_days=30)
    assert issued.record.expires_at is not None


async def test_concurrent_sign_ups_for_one_name_create_one_user(accounts: Accounts) -> None:
    results = await asyncio.gather(*(accounts.create_user("alice") for _ in range(5)), return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, Exception))
    assert [u.username for u in await accounts.list_users()] == ["alice"]


def test_roles_are_ordered_admin_over_moderator_over_creator_over_member() -> None:
    assert Role.ADMIN.includes(Role.MODERATOR) and Role.MODERATOR.includes(Role.CREATOR)
    assert Role.CREATOR.includes(Role.MEMBER) and not Role.MEMBER.includes(Role.CREATOR)


async def test_with_a_maximum_lifetime_new_tokens_get_it_by_default(accounts: Accounts) -> None:
    accounts.settings.token_max_days = 30
    user = await accounts.create_user("alice")
    issued = await accounts.issue_token(user, "default")
    lifetime = issued.record.expires_at - issued.record.created_at
    assert lifetime == timedelta(days=30)
