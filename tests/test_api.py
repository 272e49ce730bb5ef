"""The HTTP API's contract: JSON errors with the right 4xx, authentication and roles on every route."""

from __future__ import annotations

from datetime import timedelta

import pytest
from aiohttp import web
from sqlmodel import select

from node.api.auth import unguarded_routes
from node.app import create_app
from node.core.config import Config
from node.core.errors import PluginLoadError
from node.core.hookspecs import hookimpl
from node.core.plugins import PluginHost
from node.core.tables import ApiToken, Role, utcnow
from tests.conftest import Api


async def error_of(response) -> tuple[int, dict]:
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error", "detail"}
    return response.status, body


async def test_health_answers_with_the_node_id_and_database_state(api: Api) -> None:
    response = await api.call("GET", "/api/node/v1/health")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["node_id"] == api.node.node_id


async def test_an_unknown_route_is_a_json_404_naming_it(api: Api) -> None:
    status, body = await error_of(await api.call("GET", "/api/v1/no-such-thing"))
    assert status == 404
    assert body == {"error": "not_found", "detail": "no route for GET /api/v1/no-such-thing"}


async def test_a_wrong_method_is_a_json_405_listing_the_allowed_ones(api: Api) -> None:
    response = await api.call("DELETE", "/api/node/v1/health")
    status, body = await error_of(response)
    assert status == 405
    assert "allowed: GET" in body["detail"]
    assert "GET" in response.headers["Allow"]


async def test_malformed_json_is_a_400_saying_where(api: Api) -> None:
    token = await api.user("alice")
    status, body = await error_of(await api.call("POST", "/api/node/v1/tokens", token, data=b'{"name": '))
    assert status == 400
    assert body["error"] == "invalid_input"
    assert body["detail"].startswith("malformed JSON: ") and "line 1 column" in body["detail"]


@pytest.mark.parametrize("payload, detail", [
    (b"", "the request body is empty; send a JSON object"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"name": "x", "colour": "red"}', "colour: unknown field"),
    (b'{"expires_in_days": 3}', "name: Field required"),
    (b"\xff\xfe", "the request body is not UTF-8 text"),
])
async def test_bodies_of_the_wrong_shape_are_400_naming_the_field(api: Api, payload: bytes, detail: str) -> None:
    token = await api.user("alice")
    status, body = await error_of(await api.call("POST", "/api/node/v1/tokens", token, data=payload))
    assert status == 400
    assert body["detail"] == detail


async def test_an_oversized_body_is_a_413_and_nothing_is_created(api: Api) -> None:
    token = await api.user("alice")
    limit = api.node.config.http.max_body_bytes
    huge = b'{"name": "' + b"x" * limit + b'"}'
    status, body = await error_of(await api.call("POST", "/api/node/v1/tokens", token, data=huge))
    assert status == 413
    assert str(limit) in body["detail"]
    tokens = await api.call("GET", "/api/node/v1/tokens", token)
    assert len((await tokens.json())["items"]) == 1  # only the fixture's


async def test_a_missing_token_is_401_with_a_hint(api: Api) -> None:
    response = await api.call("POST", "/api/node/v1/tokens", json={"name": "x"})
    status, body = await error_of(response)
    assert status == 401
    assert "Authorization: Bearer" in body["detail"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_wrong_token_is_401(api: Api) -> None:
    status, body = await error_of(await api.call("GET", "/api/node/v1/me", "atr_wrong"))
    assert (status, body["error"]) == (401, "unauthenticated")


async def test_a_malformed_authorization_header_is_401(api: Api) -> None:
    response = await api.call("GET", "/api/node/v1/me", headers={"Authorization": "Basic YTpi"})
    status, body = await error_of(response)
    assert status == 401 and "Bearer" in body["detail"]


async def test_an_expired_token_is_401(api: Api) -> None:
    token = await api.user("alice", expires_in_days=1)
    async with api.node.db.session() as session:
        for row in (await session.exec(select(ApiToken))).all():
            row.expires_at = utcnow() - timedelta(minutes=1)
            session.add(row)
        await session.commit()
    status, body = await error_of(await api.call("GET", "/api/node/v1/me", token))
    assert status == 401 and "expired" in body["detail"]


async def test_a_revoked_token_is_401(api: Api) -> None:
    token = await api.user("alice")
    items = (await (await api.call("GET", "/api/node/v1/tokens", token)).json())["items"]
    revoked = await api.call("DELETE", f"/api/node/v1/tokens/{items[0]['id']}", token)
    assert revoked.status == 200 and (await revoked.json())["revoked_at"]
    status, body = await error_of(await api.call("GET", "/api/node/v1/me", token))
    assert status == 401 and "revoked" in body["detail"]


async def test_a_token_in_the_query_string_works_like_civitai_clients_send_it(api: Api) -> None:
    token = await api.user("alice")
    response = await api.call("GET", f"/api/v1/me?token={token}")
    assert response.status == 200
    assert (await response.json())["username"] == "alice"


async def test_the_wrong_role_is_403(api: Api) -> None:
    token = await api.user("alice", Role.CREATOR)
    status, body = await error_of(await api.call("GET", "/api/node/v1/users", token))
    assert status == 403
    assert body == {"error": "forbidden", "detail": "this needs the admin role; you are creator"}
    status, _ = await error_of(await api.call("POST", "/api/node/v1/users", token, json={"username": "eve"}))
    assert status == 403


async def test_an_admin_creates_users_and_changes_their_role(api: Api) -> None:
    admin = await api.user("root", Role.ADMIN)
    created = await api.call("POST", "/api/node/v1/users", admin,
                             json={"username": "carol", "role": "creator", "password": "a long password"})
    assert created.status == 201
    assert (await created.json())["role"] == "creator"
    dup = await api.call("POST", "/api/node/v1/users", admin, json={"username": "CAROL"})
    assert dup.status == 409
    bad_role = await api.call("PATCH", "/api/node/v1/users/carol", admin, json={"role": "emperor"})
    assert bad_role.status == 400 and "unknown role 'emperor'" in (await bad_role.json())["detail"]
    patched = await api.call("PATCH", "/api/node/v1/users/carol", admin, json={"role": "moderator"})
    assert (await patched.json())["role"] == "moderator"
    missing = await api.call("PATCH", "/api/node/v1/users/nobody", admin, json={"disabled": True})
    assert missing.status == 404


async def test_login_with_a_password_returns_a_token_that_works(api: Api) -> None:
    await api.node.accounts.create_user("alice", password="correct horse battery")
    response = await api.call("POST", "/api/node/v1/auth/login",
                              json={"username": "alice", "password": "correct horse battery",
                                    "expires_in_days": 7})
    assert response.status == 201
    body = await response.json()
    assert body["expires_at"] is not None and body["prefix"] == body["token"][:10]
    me = await api.call("GET", "/api/node/v1/me", body["token"])
    assert (await me.json())["username"] == "alice"
    wrong = await api.call("POST", "/api/node/v1/auth/login", json={"username": "alice", "password": "nope"})
    assert wrong.status == 401


async def test_changing_a_password_needs_the_current_one(api: Api) -> None:
    await api.node.accounts.create_user("alice", password="correct horse battery")
    token = (await api.node.accounts.issue_token(await api.node.accounts.get_user("alice"), "t")).secret
    refused = await api.call("PUT", "/api/node/v1/me/password", token,
                             json={"current_password": "wrong one!!", "new_password": "another long one"})
    assert refused.status == 401
    changed = await api.call("PUT", "/api/node/v1/me/password", token,
                             json={"current_password": "correct horse battery", "new_password": "another long one"})
    assert changed.status == 200
    await api.node.accounts.login("alice", "another long one")


async def test_registration_is_closed_by_default(api: Api) -> None:
    response = await api.call("POST", "/api/node/v1/auth/register",
                              json={"username": "eve", "password": "a long password"})
    status, body = await error_of(response)
    assert status == 403 and "registration is closed" in body["detail"]


async def test_open_registration_creates_a_member_with_a_token(api: Api) -> None:
    api.node.config.accounts.registration = "open"
    response = await api.call("POST", "/api/node/v1/auth/register",
                              json={"username": "eve", "password": "a long password"})
    assert response.status == 201
    body = await response.json()
    assert body["user"]["role"] == "member"
    me = await api.call("GET", "/api/node/v1/me", body["token"])
    assert me.status == 200


async def test_tokens_are_listed_without_their_secrets(api: Api) -> None:
    token = await api.user("alice")
    created = await api.call("POST", "/api/node/v1/tokens", token, json={"name": "ci", "expires_in_days": 30})
    secret = (await created.json())["token"]
    listing = await api.call("GET", "/api/node/v1/tokens", token)
    text = await listing.text()
    assert secret not in text and token not in text
    assert [t["name"] for t in (await listing.json())["items"]] == ["test", "ci"]


async def test_an_unexpected_error_is_a_500_without_a_traceback(aiohttp_client, sqlite_config: Config) -> None:
    class Broken:
        @hookimpl
        def atrium_routes(self, routes: web.RouteTableDef) -> None:
            @routes.get("/api/broken/v1/boom")
            async def boom(request: web.Request) -> web.Response:
                raise RuntimeError("secret internals")

    host = PluginHost([], available={})
    host.register(Broken(), "broken")
    client = await aiohttp_client(create_app(sqlite_config, migrate=True, plugins=host))
    response = await client.get("/api/broken/v1/boom")
    status, body = await error_of(response)
    assert status == 500
    assert "secret internals" not in body["detail"] and "Traceback" not in body["detail"]
    assert response.headers["X-Request-Id"] in body["detail"]


def test_a_mutating_route_without_an_access_check_stops_the_app(sqlite_config: Config) -> None:
    class Careless:
        @hookimpl
        def atrium_routes(self, routes: web.RouteTableDef) -> None:
            @routes.post("/api/careless/v1/delete-everything")
            async def handler(request: web.Request) -> web.Response:
                return web.json_response({})

    host = PluginHost([], available={})
    host.register(Careless(), "careless")
    with pytest.raises(PluginLoadError, match="POST /api/careless/v1/delete-everything"):
        create_app(sqlite_config, plugins=host)


def test_every_mutating_route_of_the_node_checks_access(sqlite_config: Config) -> None:
    app = create_app(sqlite_config, plugins=PluginHost([], available={}))
    assert unguarded_routes(app) == []
    guarded = {f"{r.method} {r.resource.canonical}": getattr(r.handler, "__atrium_access__")
               for r in app.router.routes() if r.method in ("POST", "PUT", "PATCH", "DELETE")}
    public_routes = sorted(k for k, v in guarded.items() if v.startswith("public:"))
    # Nodes authenticate federation requests with HTTP signatures, checked in the handlers.
    assert public_routes == ["POST /api/node/v1/auth/login", "POST /api/node/v1/auth/register",
                             "POST /api/v1/model-versions/by-hash", "POST /federation/v1/followers",
                             "POST /federation/v1/inbox"]


async def test_metrics_count_requests_by_route_pattern(api: Api) -> None:
    token = await api.user("alice")
    await api.call("GET", "/api/node/v1/me", token)
    await api.call("DELETE", "/api/node/v1/tokens/999", token)
    text = await (await api.call("GET", "/metrics")).text()
    assert 'atrium_http_requests_total{method="GET",route="/api/node/v1/me",status="200"} 1.0' in text
    assert 'route="/api/node/v1/tokens/{id}",status="404"' in text
    assert "atrium_http_request_duration_seconds_bucket" in text


async def test_a_non_numeric_id_is_a_400(api: Api) -> None:
    token = await api.user("alice")
    status, body = await error_of(await api.call("DELETE", "/api/node/v1/tokens/abc", token))
    assert status == 400 and "id must be a positive integer" in body["detail"]


async def test_error_answers_carry_the_security_headers(api: Api) -> None:
    response = await api.call("GET", "/api/v1/no-such-thing")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


async def test_throttled_logins_say_when_to_retry(api: Api) -> None:
    await api.node.accounts.create_user("alice", password="correct horse battery")
    for _ in range(api.node.config.accounts.login_attempts_per_minute):
        await api.call("POST", "/api/node/v1/auth/login", json={"username": "alice", "password": "wrong guess"})
    response = await api.call("POST", "/api/node/v1/auth/login",
                              json={"username": "alice", "password": "correct horse battery"})
    status, body = await error_of(response)
    assert status == 429 and "too many failed logins" in body["detail"]
    assert 1 <= int(response.headers["Retry-After"]) <= 61


async def test_behind_a_trusted_proxy_logins_are_throttled_per_forwarded_client(api: Api) -> None:
    api.node.config.http.trusted_proxies = ["127.0.0.1"]
    api.node.config.accounts.login_attempts_per_minute = 2
    api.node.accounts.throttle.limit = 2
    for name in ("user1", "user2", "user3"):
        await api.node.accounts.create_user(name, password="correct horse battery")
    attacker = {"X-Forwarded-For": "203.0.113.7"}
    for name in ("user1", "user2"):
        await api.call("POST", "/api/node/v1/auth/login", json={"username": name, "password": "nope nope"},
                       headers=attacker)
    blocked = await api.call("POST", "/api/node/v1/auth/login",
                             json={"username": "user3", "password": "correct horse battery"}, headers=attacker)
    assert blocked.status == 429
    other = await api.call("POST", "/api/node/v1/auth/login",
                           json={"username": "user3", "password": "correct horse battery"},
                           headers={"X-Forwarded-For": "198.51.100.9"})
    assert other.status == 201


def test_a_plugin_route_that_shadows_a_node_route_stops_the_app(sqlite_config: Config) -> None:
    class Shadow:
        @hookimpl
        def atrium_routes(self, routes: web.RouteTableDef) -> None:
            @routes.get("/api/node/v1/health")
            async def fake(request: web.Request) -> web.Response:
                return web.json_response({"status": "ok"})

    host = PluginHost([], available={})
    host.register(Shadow(), "shadow")
    with pytest.raises(PluginLoadError, match="adds GET /api/node/v1/health, which is already served"):
        create_app(sqlite_config, plugins=host)


def test_an_async_routes_hook_is_refused_with_a_clear_message(sqlite_config: Config) -> None:
    class AsyncRoutes:
        @hookimpl
        async def atrium_routes(self, routes: web.RouteTableDef) -> None:
            pass

    host = PluginHost([], available={})
    host.register(AsyncRoutes(), "async_routes")
    with pytest.raises(PluginLoadError, match="atrium_routes must be a plain function"):
        create_app(sqlite_config, plugins=host)


async def test_a_plugin_that_crashes_at_startup_is_named_in_one_line(sqlite_config: Config) -> None:
    class Crashing:
        @hookimpl
        async def atrium_startup(self, node) -> None:
            raise KeyError("missing thing\nwith a second line")

    host = PluginHost([], available={})
    host.register(Crashing(), "crashing")
    runner = web.AppRunner(create_app(sqlite_config, migrate=True, plugins=host))
    try:
        with pytest.raises(PluginLoadError) as err:
            await runner.setup()
    finally:
        await runner.cleanup()
    assert err.value.detail.startswith("plugin 'crashing' failed in atrium_startup: KeyError:")
    assert "\n" not in err.value.detail
