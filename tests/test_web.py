"""The web pages over plain HTTP: what they show, escaping, sessions and cookies, CSRF, the
Content-Security-Policy, browsing levels, fingerprinted assets and page weight."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest

from node.core.sessions import hash_secret
from node.core.tables import BrowserSession, Role
from node.web.sessions import CONTENT_SECURITY_POLICY, SESSION_COOKIE
from tests.catalog_fixtures import A1111_PARAMETERS, png_with_parameters, safetensors_bytes
from tests.conftest import Api
from tests.test_catalog import Creator

PASSWORD = "correct horse battery"
HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
PAGE_WEIGHT_LIMIT = 300 * 1024

CSRF_RE = re.compile(r'<meta name="csrf-token" content="([0-9a-f]+)">')
ASSET_RE = re.compile(r'(?:href|src)="(/static/[^"]+)"')


class Browser:
    """A visitor with a cookie jar, reading pages and posting their forms."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.client = api.client

    async def get(self, path: str, expect: int = 200) -> str:
        response = await self.client.get(path, headers={"Accept": "text/html"}, allow_redirects=False)
        text = await response.text()
        assert response.status == expect, (response.status, text[:2000])
        return text

    async def csrf(self, path: str = "/") -> str:
        match = CSRF_RE.search(await self.get(path))
        assert match
        return match.group(1)

    async def post(self, path: str, data: dict[str, str], expect: int = 303, csrf: bool = True) -> Any:
        fields = dict(data)
        if csrf:
            fields["csrf_token"] = await self.csrf()
        response = await self.client.post(path, data=fields, allow_redirects=False)
        assert response.status == expect, (response.status, (await response.text())[:2000])
        return response

    async def sign_in(self, username: str, password: str = PASSWORD) -> None:
        response = await self.post("/signin", {"username": username, "password": password, "next": "/account"})
        assert response.headers["Location"] == "/account"


async def published_with_image(api: Api, creator: Creator, *, name: str = "Cat Style", description: str = "",
                               tags: list[str] | None = None, image_level: int = 1,
                               prompt_extra: str = "") -> tuple[dict, dict, dict, dict]:
    model, version, file = await creator.published(safetensors_bytes(), name=name, description=description,
                                                   tags=tags or ["cats"])
    parameters = A1111_PARAMETERS.format(model_hash="6ce0161689", lora_hash=file["hashes"]["AutoV3"].lower())
    png = png_with_parameters(parameters.replace("a cat in a hat", "a cat in a hat" + prompt_extra, 1))
    image = await creator.json("POST", f"/api/node/v1/versions/{version['id']}/images?nsfw_level={image_level}",
                               201, data=png)
    return model, version, file, image


@pytest.fixture
async def creator(api: Api) -> Creator:
    token = await api.user("maker", Role.CREATOR, password=PASSWORD)
    return Creator(api, token)


async def test_home_lists_recent_images_and_new_models(api: Api, creator: Creator) -> None:
    model, _, _, image = await published_with_image(api, creator)
    page = await Browser(api).get("/")
    assert f'href="/images/{image["id"]}"' in page and f'href="/models/{model["id"]}"' in page
    assert "Cat Style" in page and "Recent images" in page and "Most downloaded models" in page


async def test_model_page_shows_versions_files_hashes_trigger_words_licence_and_distribution_links(
        api: Api, creator: Creator) -> None:
    model, version, file, image = await published_with_image(api, creator)
    page = await Browser(api).get(f"/models/{model['id']}")
    assert "catstyle" in page and 'data-copy="word-1"' in page
    assert file["hashes"]["SHA256"] in page and file["hashes"]["AutoV2"] in page
    assert f'/api/download/models/{version["id"]}?fileId={file["id"]}' in page
    assert f'/api/node/v1/files/{file["id"]}/torrent' in page and f'/api/node/v1/files/{file["id"]}/magnet' in page
    assert f'/api/node/v1/versions/{version["id"]}/manifest' in page
    assert f'href="/images/{image["id"]}"' in page  # the gallery
    assert "Use the model without crediting the creator" in page and "SafeTensor" in page


async def test_image_page_shows_generation_data_and_links_the_model_it_used(api: Api, creator: Creator) -> None:
    model, version, _, image = await published_with_image(api, creator)
    page = await Browser(api).get(f"/images/{image['id']}")
    assert "a cat in a hat, masterpiece" in page and "blurry, lowres" in page and "DPM++ 2M Karras" in page
    assert 'data-copy="generation-text"' in page
    assert f'href="/models/{model["id"]}?version={version["id"]}"' in page


async def test_search_finds_a_model_by_name_and_filters_by_type(api: Api, creator: Creator) -> None:
    model, *_ = await published_with_image(api, creator, name="Watercolor Foxes")
    browser = Browser(api)
    assert f'/models/{model["id"]}"' in await browser.get("/models?query=watercolor")
    assert f'/models/{model["id"]}"' not in await browser.get("/models?query=watercolor&type=Checkpoint")
    assert f'/models/{model["id"]}"' in await browser.get("/models?tag=cats&base_model=SD+1.5&sort=Most+Downloaded")


async def test_creator_page_lists_their_models(api: Api, creator: Creator) -> None:
    model, *_ = await published_with_image(api, creator)
    assert f'/models/{model["id"]}"' in await Browser(api).get("/creators/maker")


@pytest.mark.parametrize("path", ["/models/abc", "/models?sort=Loudest", "/models?type=Banana",
                                  "/models?base_model=Nope", "/models?level=Z", "/images/99999999999999999999",
                                  "/models?cursor=%%%"])
async def test_bad_input_is_answered_with_a_4xx_page_not_a_500(api: Api, path: str) -> None:
    response = await api.client.get(path, headers={"Accept": "text/html"})
    assert 400 <= response.status < 500
    assert "text/html" in response.headers["Content-Type"]
    assert 'role="alert"' in await response.text()


async def test_unknown_pages_and_models_are_404_pages(api: Api) -> None:
    browser = Browser(api)
    assert "There is no page at /no-such-page" in await browser.get("/no-such-page", 404)
    assert "no model 12345" in await browser.get("/models/12345", 404)


async def test_user_supplied_html_is_escaped_everywhere(api: Api, creator: Creator) -> None:
    model, version, _, image = await published_with_image(
        api, creator, name="Evil " + HOSTILE, description="About " + HOSTILE, tags=["it's #1"],
        prompt_extra=HOSTILE)
    browser = Browser(api)
    for path in ("/", f"/models/{model['id']}", f"/images/{image['id']}", "/models?query=evil",
                 "/creators/maker", "/models?tag=it%27s+%231&query=%3Cscript%3E"):
        page = await browser.get(path)
        assert "<script>window.pwned" not in page and "<img src=x" not in page and "it's" not in page, path
    page = await browser.get(f"/models/{model['id']}")
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in page and "it&#39;s #1" in page


async def test_pages_carry_a_content_security_policy_without_inline_script(api: Api, creator: Creator) -> None:
    model, *_ = await published_with_image(api, creator)
    for path in ("/", "/models", f"/models/{model['id']}", "/signin", "/no-such-page"):
        response = await api.client.get(path, headers={"Accept": "text/html"})
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert "unsafe-inline" not in CONTENT_SECURITY_POLICY and "script-src 'self'" in CONTENT_SECURITY_POLICY
        page = await response.text()
        assert "<script>" not in page and " style=" not in page and " onclick=" not in page


async def test_a_form_without_a_valid_csrf_token_is_refused_with_a_message(api: Api, creator: Creator) -> None:
    browser = Browser(api)
    await browser.csrf()  # the visitor has a session cookie
    for data in ({"username": "maker", "password": PASSWORD},
                 {"username": "maker", "password": PASSWORD, "csrf_token": "0" * 64}):
        response = await api.client.post("/signin", data=data, allow_redirects=False)
        assert response.status == 403
        assert "security token is missing or out of date" in await response.text()
    # A signed-in visitor's forms too.
    await browser.sign_in("maker")
    response = await api.client.post("/account/tokens", data={"name": "sneaky"}, allow_redirects=False)
    assert response.status == 403
    assert await api.node.accounts.list_tokens(await api.node.accounts.get_user("maker")) != []  # only "test"
    assert all(t.name != "sneaky" for t in await api.node.accounts.list_tokens(await api.node.accounts.get_user("maker")))


async def test_session_cookie_is_httponly_samesite_lax_and_stored_hashed(api: Api, creator: Creator) -> None:
    browser = Browser(api)
    fields = {"username": "maker", "password": PASSWORD, "csrf_token": await browser.csrf()}
    response = await api.client.post("/signin", data=fields, allow_redirects=False)
    assert response.status == 303
    cookie = response.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and not cookie["secure"]
    secret = cookie.value
    async with api.node.db.session() as session:
        from sqlmodel import select

        rows = (await session.exec(select(BrowserSession))).all()
    assert [r.secret_hash for r in rows if r.user_id is not None] == [hash_secret(secret)]
    assert all(secret not in (r.secret_hash,) for r in rows) and hash_secret(secret) == hashlib.sha256(
        secret.encode()).hexdigest()
    assert "maker" in await browser.get("/account")


async def test_signing_in_changes_the_session_secret_and_signing_out_ends_it(api: Api, creator: Creator) -> None:
    browser = Browser(api)
    await browser.csrf()
    before = api.client.session.cookie_jar.filter_cookies(api.client.make_url("/"))[SESSION_COOKIE].value
    await browser.sign_in("maker")
    after = api.client.session.cookie_jar.filter_cookies(api.client.make_url("/"))[SESSION_COOKIE].value
    assert before != after
    await browser.post("/signout", {})
    assert await api.node.accounts.get_user("maker")
    response = await api.client.get("/account", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"].startswith("/signin")
    # The old secret signs nobody in any more.
    api.client.session.cookie_jar.update_cookies({SESSION_COOKIE: after})
    response = await api.client.get("/account", allow_redirects=False)
    assert response.status == 303


async def test_cookies_are_secure_when_the_node_is_reached_over_https(aiohttp_client: Any, tmp_path: Any) -> None:
    from node.app import create_app
    from node.core.plugins import PluginHost
    from tests.conftest import make_config, write_node

    config = make_config(write_node(tmp_path / "node"), node={"public_url": "https://models.example.org"})
    client = await aiohttp_client(create_app(config, migrate=True, plugins=PluginHost([], available={})))
    response = await client.get("/", headers={"Accept": "text/html"})
    assert response.cookies[SESSION_COOKIE]["secure"]


async def test_wrong_password_shows_the_form_again_and_the_login_throttle_applies(api: Api, creator: Creator) -> None:
    browser = Browser(api)
    response = await browser.post("/signin", {"username": "maker", "password": "wrong password!"}, expect=401)
    assert "wrong username or password" in await response.text()
    for _ in range(12):
        fields = {"username": "maker", "password": "wrong again!!", "csrf_token": await browser.csrf()}
        response = await api.client.post("/signin", data=fields, allow_redirects=False)
    assert response.status == 429 and "too many failed logins" in await response.text()


async def test_sign_in_never_redirects_to_another_site(api: Api, creator: Creator) -> None:
    browser = Browser(api)
    response = await browser.post("/signin", {"username": "maker", "password": PASSWORD,
                                              "next": "//evil.example/steal"})
    assert response.headers["Location"] == "/"


async def test_anonymous_visitors_see_pg_only_and_may_not_choose_r(api: Api, creator: Creator) -> None:
    model, version, _, image = await published_with_image(api, creator, image_level=4)
    browser = Browser(api)
    assert f'/images/{image["id"]}"' not in await browser.get("/")
    assert f'/images/{image["id"]}"' not in await browser.get(f"/models/{model['id']}")
    assert "Hidden by your browsing level" in await browser.get(f"/images/{image['id']}")
    response = await browser.post("/browsing-level", {"level": "R"}, expect=400)
    assert "sign in to browse at R" in await response.text()
    await browser.post("/browsing-level", {"level": "PG-13"})
    assert 'value="PG-13" selected' in await browser.get("/")


async def test_a_signed_in_browsing_level_is_saved_on_the_user(api: Api, creator: Creator) -> None:
    model, version, _, image = await published_with_image(api, creator, image_level=4)
    await api.node.accounts.create_user("viewer", password=PASSWORD)
    browser = Browser(api)
    await browser.sign_in("viewer")
    await browser.post("/browsing-level", {"level": "R"})
    assert f'/images/{image["id"]}"' in await browser.get("/")
    assert "a cat in a hat" in await browser.get(f"/images/{image['id']}")
    await browser.post("/signout", {})
    assert f'/images/{image["id"]}"' not in await browser.get("/")
    await browser.sign_in("viewer")  # a new session, the same choice
    assert 'value="R" selected' in await browser.get("/")
    response = await browser.post("/browsing-level", {"level": "nonsense"}, expect=400)
    assert "choose one of" in await response.text()


async def test_account_page_creates_lists_and_revokes_tokens(api: Api, creator: Creator) -> None:
    browser = Browser(api)
    await browser.sign_in("maker")
    response = await browser.post("/account/tokens", {"name": "laptop", "expires_in_days": "30"}, expect=201)
    page = await response.text()
    secret = re.search(r'<code id="new-token">(atr_[^<]+)</code>', page).group(1)  # type: ignore[union-attr]
    check = await api.client.get("/api/node/v1/me", headers={"Authorization": f"Bearer {secret}"})
    assert check.status == 200
    page = await browser.get("/account")
    assert "laptop" in page and secret not in page  # shown once
    token_id = next(t.id for t in await api.node.accounts.list_tokens(await api.node.accounts.get_user("maker"))
                    if t.name == "laptop")
    await browser.post(f"/account/tokens/{token_id}/revoke", {})
    check = await api.client.get("/api/node/v1/me", headers={"Authorization": f"Bearer {secret}"})
    assert check.status == 401
    await browser.post("/account/tokens", {"name": ""}, expect=400)
    await browser.post("/account/tokens", {"name": "x", "expires_in_days": "soon"}, expect=400)


async def test_reactions_and_reviews_from_the_model_page(api: Api, creator: Creator) -> None:
    model, version, _, _ = await published_with_image(api, creator)
    await api.node.accounts.create_user("fan", password=PASSWORD)
    browser = Browser(api)
    await browser.sign_in("fan")
    await browser.post(f"/models/{model['id']}/react", {"reaction": "Like"})
    await browser.post(f"/versions/{version['id']}/review", {"rating": "5", "text": "Lovely <i>cats</i>"})
    page = await browser.get(f"/models/{model['id']}")
    assert "Lovely &lt;i&gt;cats&lt;/i&gt;" in page and "👍 1" in page
    await browser.post(f"/versions/{version['id']}/review", {"rating": "9"}, expect=400)
    await browser.post(f"/models/{model['id']}/react", {"reaction": "Shrug"}, expect=400)


async def test_forms_that_need_an_account_send_anonymous_visitors_to_sign_in(api: Api, creator: Creator) -> None:
    model, *_ = await published_with_image(api, creator)
    browser = Browser(api)
    response = await browser.post(f"/models/{model['id']}/react", {"reaction": "Like"}, expect=401)
    assert "sign in" in (await response.text()).lower()
    assert (await api.client.get("/publish", allow_redirects=False)).headers["Location"] == "/signin?next=%2Fpublish"


async def test_page_scripts_use_the_api_with_the_session_and_its_csrf_token(api: Api, creator: Creator) -> None:
    browser = Browser(api)
    await browser.sign_in("maker")
    token = await browser.csrf()
    body = {"name": "From the page", "type": "LORA"}
    assert (await api.client.post("/api/node/v1/models", json=body)).status == 401  # no CSRF header: no session
    response = await api.client.post("/api/node/v1/models", json=body, headers={"X-CSRF-Token": "f" * 64})
    assert response.status == 403 and (await response.json())["error"] == "csrf"
    response = await api.client.post("/api/node/v1/models", json=body, headers={"X-CSRF-Token": token})
    assert response.status == 201


async def test_publish_form_creates_a_draft_and_publishes_it(api: Api, creator: Creator) -> None:
    browser = Browser(api)
    await browser.sign_in("maker")
    response = await browser.post("/publish", {"name": "Draft Cats", "type": "LORA", "description": "d",
                                                "tags": "cats, style", "nsfw_level": "1", "version_name": "v1",
                                                "base_model": "SD 1.5", "trained_words": "catstyle",
                                                "allow_no_credit": "on", "use_Image": "on"})
    draft = response.headers["Location"]
    model_id = int(draft.rsplit("/", 1)[1])
    page = await browser.get(draft)
    version_id = int(re.search(r'data-version-id="(\d+)"', page).group(1))  # type: ignore[union-attr]
    response = await browser.post(f"/publish/{model_id}/publish", {}, expect=409)
    assert "upload a file first" in await response.text()
    await creator.upload(version_id, safetensors_bytes())
    await browser.post(f"/publish/{model_id}/publish", {})
    assert "Draft Cats" in await Browser(api).get(f"/models/{model_id}")
    response = await browser.post("/publish", {"name": "", "type": "LORA", "version_name": "v1",
                                               "base_model": "SD 1.5"}, expect=400)
    assert "name: this field is required" in await response.text()


async def test_admin_pages_need_the_admin_role_and_change_roles(api: Api, creator: Creator) -> None:
    browser = Browser(api)
    await browser.sign_in("maker")
    await browser.get("/admin", 403)
    await api.node.accounts.create_user("boss", role=Role.ADMIN, password=PASSWORD)
    boss = Browser(api)
    await boss.post("/signout", {})
    await boss.sign_in("boss")
    assert "maker" in await boss.get("/admin")
    await boss.post("/admin/users/maker", {"role": "moderator", "disabled": "no"})
    assert (await api.node.accounts.get_user("maker")).role == "moderator"
    await boss.post("/admin/users", {"username": "newbie", "role": "member", "password": ""})
    assert (await api.node.accounts.get_user("newbie")).role == "member"
    response = await boss.post("/admin/users/maker", {"role": "emperor"}, expect=400)
    assert "unknown role" in await response.text()


async def test_the_admin_page_follows_nodes_and_manages_followers(api: Api) -> None:
    await api.node.accounts.create_user("boss", role=Role.ADMIN, password=PASSWORD)
    boss = Browser(api)
    await boss.sign_in("boss")
    page = await boss.get("/admin")
    assert "This node follows no other node yet." in page and "No node follows this one yet." in page
    await boss.post("/admin/peers", {"url": "http://127.0.0.1:9/"})
    (status,) = await api.node.federation.peers.statuses()
    assert status.url == "http://127.0.0.1:9" and "http://127.0.0.1:9" in await boss.get("/admin")
    response = await boss.post("/admin/peers", {"url": "ftp://nowhere"}, expect=400)
    assert "not a node URL" in await response.text()
    await boss.post(f"/admin/peers/{status.id}/unfollow", {})
    assert await api.node.federation.peers.statuses() == []
    follower = await api.node.federation.followers.register("z6MkFollower", "http://127.0.0.1:10", "z6MkFollower")
    assert "http://127.0.0.1:10" in await boss.get("/admin")
    await boss.post(f"/admin/followers/{follower.id}", {"state": "blocked"})
    assert (await api.node.federation.followers.list())[0].state == "blocked"
    await boss.post(f"/admin/followers/{follower.id}", {"state": "friend"}, expect=400)


async def test_static_assets_are_fingerprinted_and_cached_for_a_year(api: Api) -> None:
    page = await Browser(api).get("/")
    urls = ASSET_RE.findall(page)
    assert len(urls) >= 2
    for url in urls:
        assert re.search(r"\.[0-9a-f]{12}\.(css|js)$", url)
        response = await api.client.get(url)
        assert response.status == 200
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert (await api.client.get("/static/site.000000000000.css")).status == 404


async def test_no_page_weighs_more_than_300_kb_of_html_css_and_javascript(api: Api, creator: Creator) -> None:
    model, version, _, image = await published_with_image(api, creator)
    browser = Browser(api)
    pages = [await browser.get("/signin")]
    await browser.sign_in("maker")
    for path in ("/", "/models", f"/models/{model['id']}", f"/images/{image['id']}", "/creators/maker",
                 "/account", "/publish", f"/publish/{model['id']}"):
        pages.append(await browser.get(path))
    for page in pages:
        weight = len(page.encode())
        for url in set(ASSET_RE.findall(page)):
            weight += len(await (await api.client.get(url)).read())
        assert weight < PAGE_WEIGHT_LIMIT, (page[:300], weight)


def test_every_mutating_web_route_checks_csrf(api: Api) -> None:
    from node.api.auth import ACCESS_ATTR

    # Every form route of the pages (not the APIs, nor the node-to-node federation routes, which are
    # signed with node keys) checks the session and its CSRF token.
    for route in api.app.router.routes():
        path = route.resource.canonical  # type: ignore[union-attr]
        if route.method == "POST" and not path.startswith(("/api/", "/federation/")):
            assert getattr(route.handler, ACCESS_ATTR).startswith("session:"), path


async def test_stale_while_revalidate_answers_old_values_while_one_task_refreshes() -> None:
    import asyncio

    from node.web.pages import StaleWhileRevalidate

    calls = []
    release = asyncio.Event()

    async def compute() -> int:
        calls.append(1)
        if len(calls) > 1:
            await release.wait()
        return len(calls)

    cache = StaleWhileRevalidate(fresh=0.0)
    assert await cache.get("k", compute) == 1          # the first request waits for the value
    assert await cache.get("k", compute) == 1          # stale: answered at once, one refresh started
    await asyncio.sleep(0)
    assert await cache.get("k", compute) == 1 and len(calls) == 2  # no second refresh while one runs
    release.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert await cache.get("k", compute) == 2
    await cache.close()


async def test_anonymous_page_views_touch_no_session_row_until_a_level_is_saved(api: Api) -> None:
    from sqlmodel import func, select

    browser = Browser(api)
    for _ in range(3):
        await browser.get("/")
    async with api.node.db.session() as session:
        assert (await session.exec(select(func.count()).select_from(BrowserSession))).one() == 0
    before = api.client.session.cookie_jar.filter_cookies(api.client.make_url("/"))[SESSION_COOKIE].value
    await browser.post("/browsing-level", {"level": "PG-13"})
    after = api.client.session.cookie_jar.filter_cookies(api.client.make_url("/"))[SESSION_COOKIE].value
    assert before != after  # a stored session gets a secret of its own
    async with api.node.db.session() as session:
        [stored] = (await session.exec(select(BrowserSession))).all()
    assert stored.secret_hash == hash_secret(after) and stored.browsing_level == 2 and stored.user_id is None
    assert 'value="PG-13" selected' in await browser.get("/")
