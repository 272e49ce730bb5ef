"""Reports, the moderator queue, moderator actions and appeals: over HTTP, on SQLite and PostgreSQL,
and from the command line."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlmodel import select

from node.core.tables import LogEntry, Model, Role
from tests.catalog_fixtures import png_with_parameters, safetensors_bytes
from tests.conftest import Api
from tests.test_catalog import Creator

OWNERSHIP = {"reason": "Ownership", "details": "my style", "claimant_name": "Ada Artist",
             "claimant_email": "ada@example.org", "evidence": "https://example.org/portfolio"}


class People:
    """A creator with a published model, two members and a moderator on one node."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def setup(self) -> People:
        self.owner = Creator(self.api, await self.api.user("maker", Role.CREATOR))
        self.model, self.version, _file = await self.owner.published(safetensors_bytes(seed=3), name="Cats")
        self.alice = await self.api.user("alice")
        self.bob = await self.api.user("bob")
        self.mod = await self.api.user("mod", Role.MODERATOR)
        return self

    async def call(self, method: str, path: str, token: str | None, expect: int, **kwargs: Any) -> Any:
        response = await self.api.call(method, path, token, **kwargs)
        body = await response.json()
        assert response.status == expect, body
        return body

    async def report(self, token: str, target: str | None = None, expect: int = 201, **body: Any) -> Any:
        body.setdefault("reason", "TOSViolation")
        return await self.call("POST", "/api/node/v1/reports", token, expect,
                               json={"target": target or f"model:{self.model['id']}", **body})

    async def act(self, target: str, action: str, expect: int = 201, **body: Any) -> Any:
        return await self.call("POST", "/api/node/v1/moderation/actions", self.mod, expect,
                               json={"target": target, "action": action, **body})

    async def model_row(self) -> Model:
        async with self.api.node.db.read_session() as session:
            row = await session.get(Model, self.model["id"])
        assert row is not None
        return row

    async def log_kinds(self) -> list[str]:
        async with self.api.node.db.read_session() as session:
            rows = (await session.exec(select(LogEntry.kind).where(LogEntry.origin == self.api.node.node_id)
                                       .order_by(LogEntry.seq))).all()
        return list(rows)


@pytest.fixture
async def people(api_on: Api) -> People:
    return await People(api_on).setup()


async def test_a_members_report_waits_in_the_moderator_queue(people: People) -> None:
    filed = await people.report(people.alice, details="stolen art")
    assert filed["status"] == "open" and filed["target"] == f"model:{people.model['id']}"
    assert "reporterId" not in filed  # the reporter's own copy, without queue-only fields
    queue = await people.call("GET", "/api/node/v1/moderation/reports", people.mod, 200)
    assert [r["id"] for r in queue["items"]] == [filed["id"]]
    assert queue["items"][0]["details"] == "stolen art" and queue["items"][0]["reason"] == "TOSViolation"
    one = await people.call("GET", f"/api/node/v1/moderation/reports/{filed['id']}", people.mod, 200)
    assert one["reporterId"] is not None
    # Members and strangers do not see the queue.
    assert (await people.call("GET", "/api/node/v1/moderation/reports", people.alice, 403))["error"] == "forbidden"
    assert (await people.call("GET", "/api/node/v1/moderation/reports", None, 401))["error"] == "unauthenticated"
    response = await people.api.call("POST", "/api/node/v1/reports", None, json={"target": "model:1", "reason": "Spam"})
    assert response.status == 401


async def test_one_open_report_per_reporter_and_target(people: People) -> None:
    first = await people.report(people.alice)
    again = await people.report(people.alice, reason="Spam", expect=409)
    assert "already have an open report" in again["detail"]
    await people.report(people.bob)  # another member may
    await people.report(people.alice, f"version:{people.version['id']}")  # and another target
    await people.act(f"model:{people.model['id']}", "dismiss", reason="not a violation")
    report = await people.call("GET", f"/api/node/v1/moderation/reports/{first['id']}", people.mod, 200)
    assert report["status"] == "dismissed" and report["resolvedAt"]
    await people.report(people.alice)  # resolved: a new report may be filed


async def test_an_ownership_claim_needs_the_artists_name_contact_and_evidence(people: People) -> None:
    missing = await people.report(people.alice, reason="Ownership", details="mine", expect=400)
    assert "claimant_name" in missing["detail"]
    bad_mail = await people.report(people.alice, **{**OWNERSHIP, "claimant_email": "not-an-address"}, expect=400)
    assert "claimant_email" in bad_mail["detail"]
    no_evidence = await people.report(people.alice, **{**OWNERSHIP, "evidence": " "}, expect=400)
    assert "evidence" in no_evidence["detail"]
    stray = await people.report(people.alice, reason="Spam", claimant_email="a@b.c", expect=400)
    assert "Ownership reports only" in stray["detail"]
    filed = await people.report(people.alice, **OWNERSHIP)
    assert "claimantEmail" not in filed
    (queued,) = (await people.call("GET", "/api/node/v1/moderation/reports?reason=Ownership", people.mod, 200))["items"]
    assert queued["claimantName"] == "Ada Artist" and queued["claimantEmail"] == "ada@example.org"
    assert queued["evidence"] == "https://example.org/portfolio"


async def test_bad_reports_answer_4xx_saying_what_is_wrong(people: People) -> None:
    assert "unknown value 'Rude'" in (await people.report(people.alice, reason="Rude", expect=400))["detail"]
    assert "expected model:ID" in (await people.report(people.alice, "model", expect=400))["detail"]
    assert "positive whole number" in (await people.report(people.alice, "model:abc", expect=400))["detail"]
    assert (await people.report(people.alice, "model:999999", expect=404))["error"] == "not_found"
    assert (await people.report(people.alice, "user:nobody", expect=404))["detail"] == "no user named 'nobody'"
    assert "yours" in (await people.report(people.owner.token, expect=400))["detail"]
    assert "details" in (await people.report(people.alice, details="x" * 6000, expect=400))["detail"]
    assert "unknown field" in (await people.report(people.alice, colour="red", expect=400))["detail"]
    response = await people.api.call("POST", "/api/node/v1/reports", people.alice, data=b"{not json",
                                     headers={"Content-Type": "application/json"})
    assert response.status == 400 and "malformed JSON" in (await response.json())["detail"]
    # A draft is not visible to others, so it cannot be reported by them either.
    draft = await people.owner.model("Secret Draft")
    assert (await people.report(people.alice, f"model:{draft['id']}", expect=404))["error"] == "not_found"
    bad_queue = await people.call("GET", "/api/node/v1/moderation/reports?status=weird", people.mod, 400)
    assert "status" in bad_queue["detail"]
    assert "limit" in (await people.call("GET", "/api/node/v1/moderation/reports?limit=0", people.mod, 400))["detail"]
    assert "unknown query" in (await people.call("GET", "/api/node/v1/moderation/reports?x=1", people.mod, 400))["detail"]


async def test_reports_are_rate_limited_per_member(people: People) -> None:
    people.api.node.reports.reports_per_hour = 2
    await people.report(people.alice, f"model:{people.model['id']}")
    await people.report(people.alice, f"version:{people.version['id']}")
    limited = await people.report(people.alice, "user:maker", expect=429)
    assert "2 reports an hour" in limited["detail"]
    await people.report(people.bob, "user:maker")  # each member has their own allowance


async def test_a_takedown_from_the_queue_resolves_every_open_report_and_is_recorded(people: People) -> None:
    first = await people.report(people.alice)
    second = await people.report(people.bob, f"version:{people.version['id']}", reason="NSFW")
    action = await people.call("POST", f"/api/node/v1/moderation/reports/{first['id']}/action", people.mod, 201,
                               json={"action": "takedown", "reason": "copies an artist"})
    assert action["action"] == "takedown" and action["target"] == f"model:{people.model['id']}"
    assert sorted(action["reportIds"]) == sorted([first["id"], second["id"]])
    assert action["previous"]["mode"] is None
    assert (await people.model_row()).mode == "TakenDown"
    assert (await people.log_kinds())[-1] == "model.takedown"  # followers remove it (federation/sync.py)
    queue = await people.call("GET", "/api/node/v1/moderation/reports", people.mod, 200)
    assert queue["items"] == []
    done = await people.call("GET", "/api/node/v1/moderation/reports?status=actioned", people.mod, 200)
    assert {r["id"] for r in done["items"]} == {first["id"], second["id"]}
    again = await people.call("POST", f"/api/node/v1/moderation/reports/{first['id']}/action", people.mod, 409,
                              json={"action": "takedown"})
    assert "already actioned" in again["detail"]
    log = await people.call("GET", "/api/node/v1/moderation/log", people.mod, 200)
    assert [a["id"] for a in log["items"]] == [action["id"]]
    assert log["items"][0]["reason"] == "copies an artist"
    restored = await people.act(f"model:{people.model['id']}", "restore")
    assert restored["action"] == "restore" and (await people.model_row()).mode is None
    log = await people.call("GET", f"/api/node/v1/moderation/log?target=model:{people.model['id']}", people.mod, 200)
    assert [a["action"] for a in log["items"]] == ["restore", "takedown"]


async def test_a_locked_level_cannot_be_changed_by_the_owner(people: People) -> None:
    model_path = f"/api/node/v1/models/{people.model['id']}"
    locked = await people.act(f"model:{people.model['id']}", "lock_level", level="R", reason="nudity")
    assert locked["level"] == 4 and locked["levelName"] == "R" and locked["previous"]["level"] == 1
    row = await people.model_row()
    assert row.nsfw_level == 4 and row.level_locked
    refused = await people.owner.json("PATCH", model_path, 409, json={"nsfw_level": 1})
    assert refused["error"] == "level_locked" and "locked" in refused["detail"] and "appeal" in refused["detail"]
    # Other edits, and sending the locked level unchanged, still work.
    await people.owner.json("PATCH", model_path, json={"name": "Cats II", "nsfw_level": 4})
    # Even a moderator changes a locked level only by a recorded action.
    await people.call("PATCH", model_path, people.mod, 409, json={"nsfw_level": 2})
    await people.act(f"model:{people.model['id']}", "relabel", level="PG-13")
    assert (await people.model_row()).nsfw_level == 2
    await people.act(f"model:{people.model['id']}", "unlock_level")
    await people.owner.json("PATCH", model_path, json={"nsfw_level": 8})
    kinds = await people.log_kinds()
    assert kinds.count("label") == 2  # R, then PG-13: each relabel is a signed label entry


async def test_bad_actions_answer_4xx(people: People) -> None:
    target = f"model:{people.model['id']}"
    assert "relabel needs the new level" in (await people.act(target, "relabel", expect=400))["detail"]
    assert "must be one of PG" in (await people.act(target, "relabel", level="NC-17", expect=400))["detail"]
    assert "must be one of PG" in (await people.act(target, "relabel", level=3, expect=400))["detail"]
    assert "only relabel and lock_level" in (await people.act(target, "takedown", level="R", expect=400))["detail"]
    assert "does not apply to model targets" in (await people.act(target, "ban", expect=400))["detail"]
    assert "unknown value 'smite'" in (await people.act(target, "smite", expect=400))["detail"]
    assert "no open report" in (await people.act(target, "dismiss", expect=409))["detail"]
    assert "nothing to restore" in (await people.act(target, "restore", expect=409))["detail"]
    await people.owner.json("POST", f"/api/node/v1/models/{people.model['id']}/unpublish")
    assert "its owner unpublished it" in (await people.act(target, "restore", expect=409))["detail"]
    await people.owner.json("POST", f"/api/node/v1/models/{people.model['id']}/publish")
    assert (await people.act("image:424242", "takedown", expect=404))["error"] == "not_found"
    assert "remote:ORIGIN:ID" in (await people.act("remote:12", "relabel", level="R", expect=400))["detail"]
    member = await people.call("POST", "/api/node/v1/moderation/actions", people.alice, 403,
                               json={"target": target, "action": "takedown"})
    assert "moderator" in member["detail"]


async def test_an_appeal_granted_reverts_the_action_and_both_are_recorded(people: People) -> None:
    takedown = await people.act(f"model:{people.model['id']}", "takedown", reason="looks stolen")
    mine = await people.call("GET", "/api/node/v1/moderation/actions/mine", people.owner.token, 200)
    assert [a["id"] for a in mine["items"]] == [takedown["id"]]
    assert (await people.call("GET", "/api/node/v1/moderation/actions/mine", people.alice, 200))["items"] == []
    stranger = await people.call("POST", "/api/node/v1/appeals", people.alice, 403,
                                 json={"action_id": takedown["id"], "text": "free the cats"})
    assert "only the owner" in stranger["detail"]
    appeal = await people.call("POST", "/api/node/v1/appeals", people.owner.token, 201,
                               json={"action_id": takedown["id"], "text": "I drew these myself; see my sketches"})
    assert appeal["status"] == "open"
    twice = await people.call("POST", "/api/node/v1/appeals", people.owner.token, 409,
                              json={"action_id": takedown["id"], "text": "again"})
    assert "already been appealed" in twice["detail"]
    queue = await people.call("GET", "/api/node/v1/moderation/appeals", people.mod, 200)
    assert [a["id"] for a in queue["items"]] == [appeal["id"]]
    decided = await people.call("POST", f"/api/node/v1/moderation/appeals/{appeal['id']}", people.mod, 200,
                                json={"decision": "grant", "reason": "sketches convince"})
    assert decided["status"] == "granted" and decided["decision"] == "sketches convince"
    assert (await people.model_row()).mode is None
    assert (await people.log_kinds())[-1] == "model.restored"
    log = (await people.call("GET", "/api/node/v1/moderation/log", people.mod, 200))["items"]
    assert log[0]["action"] == "restore" and log[0]["appealId"] == appeal["id"]
    assert log[0]["previous"] == {"reverts": takedown["id"]} and "appeal" in log[0]["reason"]
    late = await people.call("POST", f"/api/node/v1/moderation/appeals/{appeal['id']}", people.mod, 409,
                             json={"decision": "deny"})
    assert "already granted" in late["detail"]
    own = await people.call("GET", "/api/node/v1/appeals", people.owner.token, 200)
    assert [a["status"] for a in own["items"]] == ["granted"]


async def test_a_denied_appeal_changes_nothing_and_a_relabel_appeal_restores_the_level(people: People) -> None:
    relabel = await people.act(f"model:{people.model['id']}", "lock_level", level="X")
    unpublish = await people.act(f"model:{people.model['id']}", "unpublish")
    assert (await people.model_row()).status == "Unpublished"
    denied = await people.call("POST", "/api/node/v1/appeals", people.owner.token, 201,
                               json={"action_id": unpublish["id"], "text": "please"})
    await people.call("POST", f"/api/node/v1/moderation/appeals/{denied['id']}", people.mod, 200,
                      json={"decision": "deny", "reason": "spam"})
    assert (await people.model_row()).status == "Unpublished"
    granted = await people.call("POST", "/api/node/v1/appeals", people.owner.token, 201,
                                json={"action_id": relabel["id"], "text": "it is PG"})
    await people.call("POST", f"/api/node/v1/moderation/appeals/{granted['id']}", people.mod, 200,
                      json={"decision": "grant"})
    row = await people.model_row()
    assert row.nsfw_level == 1 and not row.level_locked
    bad = await people.call("POST", f"/api/node/v1/moderation/appeals/{granted['id']}", people.mod, 400,
                            json={"decision": "maybe"})
    assert "grant or deny" in bad["detail"]
    dismiss_target = await people.report(people.alice, "user:maker")
    dismissed = await people.call("POST", f"/api/node/v1/moderation/reports/{dismiss_target['id']}/action",
                                  people.mod, 201, json={"action": "dismiss"})
    cannot = await people.call("POST", "/api/node/v1/appeals", people.owner.token, 400,
                               json={"action_id": dismissed["id"], "text": "?"})
    assert "cannot be appealed" in cannot["detail"]


async def test_a_ban_disables_the_user_and_hides_their_models_until_unbanned(people: People) -> None:
    second, _v, _f = await people.owner.published(safetensors_bytes(seed=4), name="Dogs")
    ban = await people.act("user:maker", "ban", reason="spam account")
    assert sorted(ban["previous"]["unpublished_models"]) == sorted([people.model["id"], second["id"]])
    response = await people.api.call("GET", f"/api/node/v1/models/{second['id']}", people.owner.token)
    assert response.status == 401 and "disabled" in (await response.json())["detail"]
    listing = await (await people.api.call("GET", "/api/v1/models")).json()
    assert listing["items"] == []
    assert (await people.log_kinds())[-2:] == ["model.unpublished", "model.unpublished"]
    assert "already banned" in (await people.act("user:maker", "ban", expect=409))["detail"]
    await people.act("user:maker", "unban")
    listing = await (await people.api.call("GET", "/api/v1/models")).json()
    assert sorted(m["id"] for m in listing["items"]) == sorted([people.model["id"], second["id"]])
    assert (await people.call("GET", "/api/node/v1/moderation/actions/mine", people.owner.token, 200))["items"]


async def test_a_banned_member_may_appeal_the_ban_and_nothing_else(people: People) -> None:
    relabel = await people.act(f"model:{people.model['id']}", "relabel", level="R")
    ban = await people.act("user:maker", "ban", reason="spam account")
    mine = await people.call("GET", "/api/node/v1/moderation/actions/mine", people.owner.token, 200)
    assert [a["id"] for a in mine["items"]] == [ban["id"], relabel["id"]]
    refused = await people.call("POST", "/api/node/v1/appeals", people.owner.token, 403,
                                json={"action_id": relabel["id"], "text": "it is PG"})
    assert "may appeal its ban, nothing else" in refused["detail"]
    appeal = await people.call("POST", "/api/node/v1/appeals", people.owner.token, 201,
                               json={"action_id": ban["id"], "text": "I am not a spammer"})
    assert (await people.call("POST", "/api/node/v1/appeals", None, 401,
                              json={"action_id": ban["id"], "text": "x"}))["error"] == "unauthenticated"
    await people.call("POST", f"/api/node/v1/moderation/appeals/{appeal['id']}", people.mod, 200,
                      json={"decision": "grant"})
    listing = await (await people.api.call("GET", "/api/v1/models")).json()
    assert [m["id"] for m in listing["items"]] == [people.model["id"]]
    assert (await people.call("GET", f"/api/node/v1/models/{people.model['id']}", people.owner.token, 200))
    log = (await people.call("GET", "/api/node/v1/moderation/log?target=user:maker", people.mod, 200))["items"]
    assert [(a["action"], a["appealId"]) for a in log] == [("unban", appeal["id"]), ("ban", None)]


async def test_moderators_cannot_ban_admins_other_moderators_or_themselves(people: People) -> None:
    await people.api.user("root", Role.ADMIN)
    await people.api.user("othermod", Role.MODERATOR)
    assert "admin" in (await people.act("user:root", "ban", expect=403))["detail"]
    assert "only admins ban moderators" in (await people.act("user:othermod", "ban", expect=403))["detail"]
    assert "yourself" in (await people.act("user:mod", "ban", expect=400))["detail"]


async def test_an_image_can_be_relabelled_taken_down_and_restored(people: People) -> None:
    response = await people.api.call("POST", f"/api/node/v1/versions/{people.version['id']}/images",
                                     people.owner.token, data=png_with_parameters("a cat"))
    image = await response.json()
    assert response.status == 201, image
    report = await people.report(people.alice, f"image:{image['id']}", reason="NSFW")
    relabel = await people.call("POST", f"/api/node/v1/moderation/reports/{report['id']}/action", people.mod, 201,
                                json={"action": "relabel", "level": "X"})
    assert relabel["target"] == f"image:{image['id']}" and relabel["level"] == 8
    shown = await (await people.api.call("GET", f"/api/v1/images?modelVersionId={people.version['id']}&nsfw=X")).json()
    assert [i["nsfwLevel"] for i in shown["items"]] == [8]
    await people.act(f"image:{image['id']}", "takedown")
    assert (await people.api.call("GET", f"/api/node/v1/images/{image['id']}/file")).status == 404
    await people.act(f"image:{image['id']}", "restore")
    assert (await people.api.call("GET", f"/api/node/v1/images/{image['id']}/file")).status == 200
    async with people.api.node.db.read_session() as session:
        from node.core.tables import Image

        row = await session.get(Image, image["id"])
    assert row is not None and row.nsfw_level == 8  # the level before the takedown
    assert "does not apply to image targets" in (await people.act(f"image:{image['id']}", "unpublish", expect=400))["detail"]


async def test_the_moderation_commands_talk_to_the_node(people: People, capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli import main

    base = str(people.api.client.make_url("")).rstrip("/")

    async def atrium(*args: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, [*args, "--node", base])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, err = await atrium("report", f"model:{people.model['id']}", "--reason", "Spam", "--details",
                                  "ads", "--token", people.alice)
    assert code == 0, err
    assert "report" in out and "open" in out
    code, out, err = await atrium("moderation", "queue", "--token", people.mod)
    assert code == 0 and "Spam" in out and f"model:{people.model['id']}" in out
    report_id = out.splitlines()[1].split()[0]
    code, out, err = await atrium("moderation", "action", report_id, "relabel", "--level", "R", "--reason",
                                  "nudity", "--token", people.mod)
    assert code == 0, err
    assert "relabel" in out
    code, out, err = await atrium("moderation", "log", "--json", "--token", people.mod)
    assert code == 0 and json.loads(out)["items"][0]["levelName"] == "R"
    action_id = str(json.loads(out)["items"][0]["id"])
    code, out, err = await atrium("appeal", action_id, "--text", "it is PG", "--token", people.owner.token)
    assert code == 0, err
    code, out, err = await atrium("moderation", "appeals", "--token", people.mod)
    assert code == 0 and "it is PG" in out
    appeal_id = out.splitlines()[1].split()[0]
    code, out, err = await atrium("moderation", "appeals", "--grant", appeal_id, "--token", people.mod)
    assert code == 0 and "granted" in out
    assert (await people.model_row()).nsfw_level == 1
    code, out, err = await atrium("moderation", "target", f"model:{people.model['id']}", "takedown",
                                  "--token", people.mod)
    assert code == 0 and (await people.model_row()).mode == "TakenDown"
    code, out, err = await atrium("moderation", "queue", "--token", people.alice)
    assert code == 1 and "moderator" in err
    code, out, err = await atrium("report", "model:1", "--reason", "Spam")
    assert code != 0 and "token" in err


async def test_the_image_scorer_raises_an_uploads_level_and_never_lowers_it(tmp_path: Any,
                                                                           aiohttp_client: Any) -> None:
    from node.app import create_app
    from node.core.plugins import PluginHost
    from node.core.scoring import ImageScorer
    from tests.conftest import make_config, write_node

    image = png_with_parameters("a cat", size=(96, 96))
    # Thresholds at 0: whatever the real model says about an orange square, it is X at least.
    config = make_config(write_node(tmp_path / "node"), moderation={
        "image_scorer": "opennsfw", "scorer_pg13_at": 0.0, "scorer_r_at": 0.0, "scorer_x_at": 0.0})
    app = create_app(config, migrate=True, plugins=PluginHost([], available={}))
    api = Api(client=await aiohttp_client(app), app=app)
    scorer = api.node.ingest.scorer
    assert isinstance(scorer, ImageScorer)
    score = await asyncio.to_thread(scorer.score, image)
    assert 0.0 <= score < 0.2  # a plain orange square is safe for work
    member = await api.user("painter")
    response = await api.call("POST", "/api/node/v1/images?nsfw_level=1", member, data=image)
    assert response.status == 201 and (await response.json())["nsfwLevel"] == 8
    response = await api.call("POST", "/api/node/v1/images?nsfw_level=16", member, data=image)
    assert (await response.json())["nsfwLevel"] == 16  # the uploader's higher choice stands
    # With the default thresholds the same square keeps the uploader's level.
    scorer.pg13_at, scorer.r_at, scorer.x_at = 0.2, 0.5, 0.85
    response = await api.call("POST", "/api/node/v1/images?nsfw_level=2", member, data=image)
    assert (await response.json())["nsfwLevel"] == 2


def test_scorer_thresholds_that_decrease_are_refused(tmp_path: Any) -> None:
    from node.core.errors import ConfigError
    from node.core.scoring import load_scorer
    from tests.conftest import make_config

    config = make_config(tmp_path, moderation={"image_scorer": "opennsfw", "scorer_r_at": 0.9, "scorer_x_at": 0.5})
    with pytest.raises(ConfigError, match="must not decrease"):
        load_scorer(config.moderation)
