"""Accounts API: sign-in, registration, the caller's profile and tokens, and user administration."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import Field

from node.api.auth import current_user, public, requires
from node.api.bodies import Body, int_param, read_body
from node.api.keys import NODE
from node.core.accounts import parse_role
from node.core.errors import Forbidden
from node.core.tables import ApiToken, Role, User

routes = web.RouteTableDef()


def user_json(user: User, *, private: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {"id": user.id, "username": user.username, "role": user.role,
                            "created_at": user.created_at.isoformat()}
    if private:
        data.update(email=user.email, disabled=user.disabled, has_password=user.password_hash is not None)
    return data


def token_json(token: ApiToken) -> dict[str, Any]:
    def when(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {"id": token.id, "name": token.name, "prefix": token.prefix, "created_at": when(token.created_at),
            "expires_at": when(token.expires_at), "last_used_at": when(token.last_used_at),
            "revoked_at": when(token.revoked_at)}


def client_address(request: web.Request) -> str:
    """The client's IP: the peer, or for a trusted proxy the last address it appended to X-Forwarded-For."""
    peer = request.remote or "unknown"
    if peer in request.app[NODE].config.http.trusted_proxies:
        forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",") if part.strip()]
        if forwarded:
            return forwarded[-1]
    return peer


class LoginBody(Body):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)
    token_name: str = Field(default="login", max_length=100)
    expires_in_days: int | None = None


class RegisterBody(Body):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)
    email: str | None = Field(default=None, max_length=254)


class TokenBody(Body):
    name: str = Field(max_length=100)
    expires_in_days: int | None = None


class NewUserBody(Body):
    username: str = Field(max_length=64)
    role: str = Role.MEMBER.value
    password: str | None = Field(default=None, max_length=1024)
    email: str | None = Field(default=None, max_length=254)


class UserPatchBody(Body):
    role: str | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, max_length=1024)


class PasswordBody(Body):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


@routes.post("/api/node/v1/auth/login")
@public("exchanges a username and password for a token")
async def login(request: web.Request) -> web.Response:
    body = await read_body(request, LoginBody)
    accounts = request.app[NODE].accounts
    user = await accounts.login(body.username, body.password, client=client_address(request))
    issued = await accounts.issue_token(user, body.token_name, expires_in_days=body.expires_in_days)
    return web.json_response({"token": issued.secret, "user": user_json(user), **token_json(issued.record)},
                             status=201)


@routes.post("/api/node/v1/auth/register")
@public("creates an account when [accounts] registration is open")
async def register(request: web.Request) -> web.Response:
    node = request.app[NODE]
    if node.config.accounts.registration != "open":
        raise Forbidden("registration is closed on this node; ask an administrator for an account")
    body = await read_body(request, RegisterBody)
    user = await node.accounts.create_user(body.username, password=body.password, email=body.email)
    issued = await node.accounts.issue_token(user, "registration")
    return web.json_response({"token": issued.secret, "user": user_json(user, private=True)}, status=201)


@routes.get("/api/node/v1/me")
@requires(Role.MEMBER)
async def me(request: web.Request) -> web.Response:
    return web.json_response(user_json(current_user(request), private=True))


@routes.get("/api/v1/me")
@requires(Role.MEMBER)
async def civitai_me(request: web.Request) -> web.Response:
    """Civitai's `GET /api/v1/me`, which clients use to check a token."""
    user = current_user(request)
    return web.json_response({"id": user.id, "username": user.username, "tier": "free", "status": "active",
                              "isMember": False, "subscriptions": []})


@routes.put("/api/node/v1/me/password")
@requires(Role.MEMBER)
async def change_password(request: web.Request) -> web.Response:
    body = await read_body(request, PasswordBody)
    accounts = request.app[NODE].accounts
    user = current_user(request)
    await accounts.login(user.username, body.current_password, client=client_address(request))
    await accounts.update_user(user.username, password=body.new_password)
    return web.json_response({"status": "password changed"})


@routes.get("/api/node/v1/tokens")
@requires(Role.MEMBER)
async def list_tokens(request: web.Request) -> web.Response:
    tokens = await request.app[NODE].accounts.list_tokens(current_user(request))
    return web.json_response({"items": [token_json(t) for t in tokens]})


@routes.post("/api/node/v1/tokens")
@requires(Role.MEMBER)
async def create_token(request: web.Request) -> web.Response:
    body = await read_body(request, TokenBody)
    issued = await request.app[NODE].accounts.issue_token(current_user(request), body.name,
                                                          expires_in_days=body.expires_in_days)
    return web.json_response({"token": issued.secret, **token_json(issued.record)}, status=201)


@routes.delete("/api/node/v1/tokens/{id}")
@requires(Role.MEMBER)
async def revoke_token(request: web.Request) -> web.Response:
    token_id = int_param(request, "id")
    token = await request.app[NODE].accounts.revoke_token(token_id, actor=current_user(request))
    return web.json_response(token_json(token))


@routes.get("/api/node/v1/users")
@requires(Role.ADMIN)
async def list_users(request: web.Request) -> web.Response:
    users = await request.app[NODE].accounts.list_users()
    return web.json_response({"items": [user_json(u, private=True) for u in users]})


@routes.post("/api/node/v1/users")
@requires(Role.ADMIN)
async def create_user(request: web.Request) -> web.Response:
    body = await read_body(request, NewUserBody)
    user = await request.app[NODE].accounts.create_user(body.username, role=parse_role(body.role),
                                                        password=body.password, email=body.email)
    return web.json_response(user_json(user, private=True), status=201)


@routes.patch("/api/node/v1/users/{username}")
@requires(Role.ADMIN)
async def update_user(request: web.Request) -> web.Response:
    body = await read_body(request, UserPatchBody)
    user = await request.app[NODE].accounts.update_user(
        request.match_info["username"], role=parse_role(body.role) if body.role is not None else None,
        disabled=body.disabled, password=body.password)
    return web.json_response(user_json(user, private=True))


