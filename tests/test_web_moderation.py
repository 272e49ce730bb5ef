"""The Report forms on model and image pages and the moderator queue page, over plain HTTP."""

from __future__ import annotations

import pytest

from node.core.tables import Model, Role
from tests.conftest import Api
from tests.test_catalog import Creator
from tests.test_web import PASSWORD, Browser, published_with_image


@pytest.fixture
async def creator(api: Api) -> Creator:
    return Creator(api, await api.user("maker", Role.CREATOR, password=PASSWORD))


async def test_a_member_reports_from_the_model_and_image_pages(api: Api, creator: Creator) -> None:
    model, _version, _file, image = await published_with_image(api, creator)
    await api.node.accounts.create_user("alice", password=PASSWORD)
    alice = Browser(api)
    await alice.sign_in("alice")
    page = await alice.get(f"/models/{model['id']}")
    assert f'action="/models/{model["id"]}/report"' in page and "Ownership claims only" in page
    response = await alice.post(f"/models/{model['id']}/report", {"reason": "Spam", "details": "an advert"}, 201)
    assert "is open" in await response.text()
    response = await alice.post(f"/models/{model['id']}/report", {"reason": "Spam"}, 409)
    assert "already have an open report" in await response.text()
    response = await alice.post(f"/images/{image['id']}/report",
                                {"reason": "Ownership", "details": "mine", "claimant_name": "Alice"}, 400)
    assert "claimant_email" in await response.text()
    await alice.post(f"/images/{image['id']}/report",
                     {"reason": "Ownership", "claimant_name": "Alice", "claimant_email": "alice@example.org",
                      "evidence": "https://example.org/alice"}, 201)
    # The owner sees no Report form on their own model; visitors must sign in to report.
    owner = Browser(api)
    await owner.sign_in("maker")
    assert "/report" not in await owner.get(f"/models/{model['id']}")
    await owner.post("/signout", {})
    stranger = Browser(api)
    response = await stranger.post(f"/models/{model['id']}/report", {"reason": "Spam"}, 401)
    assert "sign in" in (await response.text()).lower()


async def test_the_moderator_queue_page_acts_on_reports_and_decides_appeals(api: Api, creator: Creator) -> None:
    model, _version, _file, _image = await published_with_image(api, creator)
    member = await api.user("alice")
    await api.call("POST", "/api/node/v1/reports", member, json={"target": f"model:{model['id']}", "reason": "NSFW",
                                                                 "details": "<b>nudity</b>"})
    await api.node.accounts.create_user("mod", role=Role.MODERATOR, password=PASSWORD)
    mod = Browser(api)
    await mod.sign_in("mod")
    page = await mod.get("/moderation")
    assert "&lt;b&gt;nudity&lt;/b&gt;" in page and 'href="/moderation"' in page
    (report,) = (await api.node.reports.queue()).items
    response = await mod.post(f"/moderation/reports/{report.id}", {"action": "relabel", "level": "", "reason": ""}, 400)
    assert "relabel needs the new level" in await response.text()
    await mod.post(f"/moderation/reports/{report.id}", {"action": "lock_level", "level": "R", "reason": "nudity"})
    async with api.node.db.read_session() as session:
        row = await session.get(Model, model["id"])
    assert row is not None and row.nsfw_level == 4 and row.level_locked
    page = await mod.get("/moderation")
    assert "No open reports." in page and "lock_level R" in page
    (action,) = (await api.node.reports.actions()).items
    await api.node.reports.appeal(await api.node.accounts.get_user("maker"), action.id, "it is PG")  # type: ignore[arg-type]
    assert "it is PG" in await mod.get("/moderation")
    (appeal,) = (await api.node.reports.appeals()).items
    await mod.post(f"/moderation/appeals/{appeal.id}", {"decision": "grant", "reason": "fair"})
    async with api.node.db.read_session() as session:
        row = await session.get(Model, model["id"])
    assert row is not None and row.nsfw_level == 1 and not row.level_locked
    # Members get 403 pages.
    await api.node.accounts.create_user("bob", password=PASSWORD)
    await mod.post("/signout", {})
    bob = Browser(api)
    await bob.sign_in("bob")
    await bob.get("/moderation", 403)
    await bob.post(f"/moderation/appeals/{appeal.id}", {"decision": "grant"}, 403)
