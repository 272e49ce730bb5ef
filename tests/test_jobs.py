"""The job runner in one node process, on SQLite and PostgreSQL: submit, run, progress, cancel, leases,
queue limits, output files, GPU slots and stopping."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col

from node.core.db import Database
from node.core.errors import InvalidInput
from node.core.jobs import JobOutput, JobStatus, LeaseLost
from node.core.tables import Job, Role, utcnow
from tests.conftest import wait_for
from tests.jobs_fixtures import finished, job, jobs_api, sse_events, submit, until  # noqa: F401


async def test_a_submitted_job_runs_and_succeeds(jobs_api: Any) -> None:
    api = await jobs_api()
    token = await api.user("alice")
    queued = await submit(api, token, "echo", {"text": "hello"})
    assert queued["kind"] == "echo" and queued["owner"] == "alice"
    assert queued["params"] == {"text": "hello"}, "keys starting with _ are private to the job kind"
    done = await finished(api, token, queued["id"])
    assert done["status"] == "succeeded"
    assert done["result"] == {"echo": "hello", "device": "cpu"}
    assert done["attempts"] == 1 and done["progress"] == 1.0
    assert done["started_at"] and done["finished_at"] and done["error"] is None


async def test_progress_is_streamed_as_server_sent_events_until_the_job_ends(jobs_api: Any) -> None:
    api = await jobs_api()
    token = await api.user("alice")
    queued = await submit(api, token, "count", {"n": 8, "delay": 0.05})
    response = await api.call("GET", f"/api/node/v1/jobs/{queued['id']}/events", token)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(await asyncio.wait_for(response.text(), timeout=15))
    names = [name for name, _ in events]
    assert names[0] == "status" and names[-1] == "status"
    assert events[-1][1]["status"] == "succeeded" and events[-1][1]["result"]["finished"] is True
    progress = [data["progress"] for name, data in events if name == "progress"]
    assert len(progress) >= 2 and progress == sorted(progress)
    details = [data["detail"] for name, data in events if name == "progress" and data["detail"].get("step")]
    assert details and all(d["odd"] in ("{0}", "{1}") for d in details), "details that are not JSON arrive as text"


async def test_a_job_that_raises_fails_with_its_error(jobs_api: Any) -> None:
    api = await jobs_api()
    token = await api.user("alice")
    done = await finished(api, token, (await submit(api, token, "fail"))["id"])
    assert done["status"] == "failed"
    assert done["error"] == "RuntimeError: the fail kind fails on purpose"
    assert done["attempts"] == 1, "a run that fails is not retried; only lost leases are"


async def test_a_pending_job_is_cancelled_at_once(jobs_api: Any) -> None:
    api = await jobs_api(workers=0)
    token = await api.user("alice")
    queued = await submit(api, token, "echo", {"text": "x"})
    response = await api.call("POST", f"/api/node/v1/jobs/{queued['id']}/cancel", token)
    assert response.status == 200
    assert (await response.json())["status"] == "cancelled"
    again = await api.call("POST", f"/api/node/v1/jobs/{queued['id']}/cancel", token)
    assert again.status == 409
    assert "already ended (cancelled)" in (await again.json())["detail"]


@pytest.mark.parametrize("thread", [False, True], ids=["async", "thread"])
async def test_a_running_job_stops_when_cancelled(jobs_api: Any, thread: bool) -> None:
    api = await jobs_api()
    token = await api.user("alice")
    queued = await submit(api, token, "count", {"n": 100_000, "delay": 0.01, "thread": thread})
    await until(api, token, queued["id"], lambda j: j["status"] == "running" and j["progress"] > 0)
    response = await api.call("POST", f"/api/node/v1/jobs/{queued['id']}/cancel", token)
    assert response.status == 200
    done = await finished(api, token, queued["id"], timeout=5)
    assert done["status"] == "cancelled"
    assert done["result"] is None


async def test_expired_lease_is_retried_up_to_the_limit_then_the_job_expires(jobs_api: Any) -> None:
    api = await jobs_api(workers=0, lease_seconds=1, max_attempts=2)
    token = await api.user("alice")
    jobs = api.node.jobs
    queued = await submit(api, token, "echo", {"text": "x"})
    first = await jobs.claim("a-worker-that-dies", ["echo"])
    assert first is not None and first.job.attempts == 1
    retried = await until(api, token, queued["id"], lambda j: j["status"] == "pending", timeout=10)
    assert retried["attempts"] == 1 and "lease" in retried["message"]
    second = await jobs.claim("another-worker-that-dies", ["echo"])
    assert second is not None and second.job.attempts == 2
    expired = await until(api, token, queued["id"], lambda j: j["status"] in ("expired", "pending"), timeout=10)
    assert expired["status"] == "expired"
    assert "gave up after 2 attempts" in expired["error"] and "another-worker-that-dies" in expired["error"]


async def test_a_worker_that_lost_its_lease_cannot_report(jobs_api: Any) -> None:
    api = await jobs_api(workers=0, lease_seconds=1)
    token = await api.user("alice")
    jobs = api.node.jobs
    queued = await submit(api, token, "echo", {"text": "x"})
    stale = await jobs.claim("slow-worker", ["echo"])
    await until(api, token, queued["id"], lambda j: j["status"] == "pending", timeout=10)
    current = await jobs.claim("fresh-worker", ["echo"])
    assert current is not None and stale is not None
    for report in (jobs.complete(queued["id"], stale.lease, JobOutput({"from": "stale"})),
                   jobs.heartbeat(queued["id"], stale.lease, 0.5),
                   jobs.fail(queued["id"], stale.lease, "stale")):
        with pytest.raises(LeaseLost):
            await report
    done = await jobs.complete(queued["id"], current.lease, JobOutput({"from": "fresh"}))
    assert done.status == JobStatus.SUCCEEDED and done.result == {"from": "fresh"}
    with pytest.raises(LeaseLost):
        await jobs.complete(queued["id"], current.lease, JobOutput({"from": "twice"}))
    assert (await job(api, token, queued["id"]))["result"] == {"from": "fresh"}


async def test_the_queue_limit_per_user_answers_429_and_admins_are_exempt(jobs_api: Any) -> None:
    api = await jobs_api(workers=0, max_queued_per_user=2)
    token = await api.user("alice")
    admin = await api.user("root", Role.ADMIN)
    first = await submit(api, token, "echo")
    await submit(api, token, "echo")
    response = await api.call("POST", "/api/node/v1/jobs", token, json={"kind": "echo", "params": {}})
    assert response.status == 429
    body = await response.json()
    assert "you have 2 jobs pending or running" in body["detail"] and "max_queued_per_user = 2" in body["detail"]
    assert response.headers["Retry-After"]
    for _ in range(3):
        await submit(api, admin, "echo")
    await api.call("POST", f"/api/node/v1/jobs/{first['id']}/cancel", token)
    await submit(api, token, "echo")  # a cancelled job frees its place


async def test_jobs_of_other_users_are_not_found_and_admins_see_all(jobs_api: Any) -> None:
    api = await jobs_api(workers=0)
    alice = await api.user("alice")
    bob = await api.user("bob")
    admin = await api.user("root", Role.ADMIN)
    mine = await submit(api, alice, "echo")
    await submit(api, bob, "echo")
    for method, path in (("GET", f"/api/node/v1/jobs/{mine['id']}"), ("POST", f"/api/node/v1/jobs/{mine['id']}/cancel"),
                         ("GET", f"/api/node/v1/jobs/{mine['id']}/events")):
        response = await api.call(method, path, bob)
        assert response.status == 404, path
        assert (await response.json())["detail"] == f"no job {mine['id']}"
    assert (await job(api, admin, mine["id"]))["owner"] == "alice"
    listed = await (await api.call("GET", "/api/node/v1/jobs", alice)).json()
    assert [j["id"] for j in listed["items"]] == [mine["id"]]
    everyone = await (await api.call("GET", "/api/node/v1/jobs?all=1", admin)).json()
    assert {j["owner"] for j in everyone["items"]} == {"alice", "bob"}
    refused = await api.call("GET", "/api/node/v1/jobs?all=1", alice)
    assert refused.status == 403
    filtered = await (await api.call("GET", "/api/node/v1/jobs?status=succeeded", alice)).json()
    assert filtered["items"] == []


@pytest.mark.parametrize("body, status, message", [
    ({"kind": "nope", "params": {}}, 400, "unknown job kind 'nope' (this node runs: count, echo, fail, fetch, gpu_count, write)"),
    ({"kind": "echo", "params": []}, 400, "params: Input should be a valid dictionary"),
    ({"kind": "count", "params": {"n": 0}}, 400, "params.n must be a whole number from 1 to 100000; got 0"),
    ({"kind": "echo", "extra": 1}, 400, "extra: unknown field"),
    ({"params": {}}, 400, "kind: Field required"),
])
async def test_bad_submissions_get_400_saying_what_is_wrong(jobs_api: Any, body: Any, status: int,
                                                            message: str) -> None:
    api = await jobs_api(workers=0)
    token = await api.user("alice")
    response = await api.call("POST", "/api/node/v1/jobs", token, json=body)
    assert response.status == status
    assert message in (await response.json())["detail"]


async def test_job_routes_need_a_token_and_well_formed_ids(jobs_api: Any) -> None:
    api = await jobs_api(workers=0)
    token = await api.user("alice")
    assert (await api.call("POST", "/api/node/v1/jobs", json={"kind": "echo"})).status == 401
    assert (await api.call("GET", "/api/node/v1/jobs")).status == 401
    assert (await api.call("GET", "/api/node/v1/jobs/abc", token)).status == 400
    assert (await api.call("GET", "/api/node/v1/jobs/999", token)).status == 404
    assert (await api.call("GET", "/api/node/v1/jobs?status=weird", token)).status == 400
    assert (await api.call("GET", "/api/node/v1/jobs?limit=100000", token)).status == 400
    malformed = await api.call("POST", "/api/node/v1/jobs", token, data=b"{not json",
                               headers={"Content-Type": "application/json"})
    assert malformed.status == 400 and "malformed JSON" in (await malformed.json())["detail"]


async def test_output_files_are_stored_with_the_job_and_served_to_its_owner(jobs_api: Any) -> None:
    api = await jobs_api()
    token = await api.user("alice")
    other = await api.user("bob")
    data = b"blob bytes for the job"
    sha = hashlib.sha256(data).hexdigest()
    temp = api.node.blobs.new_temp_path()
    temp.write_bytes(data)
    api.node.blobs.commit(temp, sha)
    done = await finished(api, token, (await submit(api, token, "write", {"text": "out", "blobs": [sha]}))["id"])
    assert done["status"] == "succeeded", done
    assert done["result"][sha] == {"size": len(data), "sha256": sha}
    [described] = done["files"]
    assert described["name"] == "out.txt" and described["size"] == 3 and described["content_type"] == "text/plain"
    path = f"/api/node/v1/jobs/{done['id']}/files/out.txt"
    assert described["url"].endswith(path)
    response = await api.call("GET", path, token)
    assert response.status == 200 and await response.read() == b"out"
    assert (await api.call("GET", path, other)).status == 404
    assert (await api.call("GET", f"/api/node/v1/jobs/{done['id']}/files/other.txt", token)).status == 404
    stored = api.node.config.jobs_path / str(done["id"])
    assert sorted(p.name for p in stored.iterdir()) == ["files"], "no staging or work directory is left"


async def test_an_output_file_with_a_path_for_a_name_fails_the_job(jobs_api: Any) -> None:
    api = await jobs_api()
    token = await api.user("alice")
    done = await finished(api, token, (await submit(api, token, "write", {"text": "x", "name": "../evil"}))["id"])
    assert done["status"] == "failed"
    assert "the run's output was refused: output file name '../evil' is not allowed" in done["error"]
    assert not (api.node.config.jobs_path / "evil").exists()


async def test_a_run_may_fetch_only_the_blobs_its_params_list(jobs_api: Any) -> None:
    api = await jobs_api()
    token = await api.user("alice")
    done = await finished(api, token, (await submit(api, token, "fetch", {"sha256": "ab" * 32}))["id"])
    assert done["status"] == "failed"
    assert "is not listed in this job's params[\"blobs\"]" in done["error"]


async def test_gpu_jobs_run_one_at_a_time_per_device(jobs_api: Any) -> None:
    api = await jobs_api(workers=3)
    token = await api.user("alice")
    ids = [(await submit(api, token, "gpu_count", {"n": 4, "delay": 0.05}))["id"] for _ in range(3)]
    cpu = await submit(api, token, "count", {"n": 4, "delay": 0.05})
    done = [await finished(api, token, job_id) for job_id in ids]
    assert all(j["status"] == "succeeded" and j["result"]["device"] == "cpu" for j in done)
    spans = sorted((j["started_at"], j["finished_at"]) for j in done)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"two GPU jobs ran at once on one device: {spans}"
    cpu_done = await finished(api, token, cpu["id"])
    assert cpu_done["started_at"] < spans[-1][0], "a CPU job does not wait for the GPU queue"


async def test_stopping_the_node_puts_its_running_job_back_to_pending(jobs_api: Any) -> None:
    api = await jobs_api()
    token = await api.user("alice")
    queued = await submit(api, token, "count", {"n": 100_000, "delay": 0.01})
    await until(api, token, queued["id"], lambda j: j["status"] == "running" and j["progress"] > 0)
    config = api.node.config
    await api.client.close()
    db = Database.from_config(config)
    try:
        async with db.read_session() as session:
            stored = await session.get(Job, queued["id"])
    finally:
        await db.close()
    assert stored is not None
    assert (stored.status, stored.attempts, stored.lease_hash) == ("pending", 0, None)


async def test_finished_jobs_and_their_files_are_deleted_after_keep_days(jobs_api: Any) -> None:
    api = await jobs_api(keep_days=2)
    token = await api.user("alice")
    old = await finished(api, token, (await submit(api, token, "write", {"text": "old"}))["id"])
    recent = await finished(api, token, (await submit(api, token, "write", {"text": "new"}))["id"])
    async with api.node.db.session() as session:
        await session.exec(update(Job).where(col(Job.id) == old["id"])  # type: ignore[call-overload]
                           .values(finished_at=utcnow() - timedelta(days=3)))
        await session.commit()
    assert await api.node.jobs.delete_old() == 1
    assert (await api.call("GET", f"/api/node/v1/jobs/{old['id']}", token)).status == 404
    assert not (api.node.config.jobs_path / str(old["id"])).exists()
    assert (await job(api, token, recent["id"]))["files"]


async def test_events_of_a_finished_job_end_at_once(jobs_api: Any) -> None:
    api = await jobs_api()
    token = await api.user("alice")
    done = await finished(api, token, (await submit(api, token, "echo", {"text": "x"}))["id"])
    events = await wait_for(lambda: _collect(api.node.jobs.events(done["id"])), timeout=5)
    assert events == [("status", "succeeded")]
    waited = await api.node.jobs.wait(done["id"], timeout=1)
    assert waited.status == "succeeded"


async def _collect(events: Any) -> list[tuple[str, str]]:
    return [(e["event"], e["data"]["status"]) async for e in events]


async def test_prepare_refusals_reach_the_submitter_unchanged(jobs_api: Any) -> None:
    api = await jobs_api(workers=0)
    user = await api.node.accounts.create_user("carol")
    with pytest.raises(InvalidInput, match="params.text must be a string"):
        await api.node.jobs.submit(user, "echo", {"text": 5})


async def test_concurrent_claims_from_two_processes_never_share_a_job(config: Any) -> None:
    from node.core.jobs import Jobs
    from node.core.tables import User

    databases = [Database.from_config(config) for _ in range(2)]
    try:
        async with databases[0].session() as session:
            owner = User(username="alice", username_key="alice")
            session.add(owner)
            await session.commit()
            session.add_all([Job(kind="echo", owner_id=owner.id, status="pending", params={}) for _ in range(40)])
            await session.commit()
        services = [Jobs(db, config) for db in databases]
        claims = await asyncio.gather(*(services[i % 2].claim(f"worker-{i}", ["echo"]) for i in range(60)))
        taken = [c.job.id for c in claims if c is not None]
        assert len(taken) == 40 and len(set(taken)) == 40, "every job claimed exactly once"
        assert sum(c is None for c in claims) == 20
    finally:
        for db in databases:
            await db.close()


@pytest.mark.parametrize("table, message", [
    ({"lease_seconds": 0}, "node.toml: jobs.lease_seconds: must be at least 1; got 0"),
    ({"workers": "two"}, "node.toml: jobs.workers: expected an integer, got 'two'"),
    ({"max_queued": 3}, "node.toml: jobs.max_queued: unknown key (known: workers, lease_seconds"),
])
def test_bad_jobs_settings_are_config_errors_naming_the_key(tmp_path: Any, table: dict[str, Any], message: str) -> None:
    from node.core.config import config_from_mapping
    from node.core.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        config_from_mapping(tmp_path, {"jobs": table}, env={})
    assert message in caught.value.detail


def test_two_plugins_registering_one_job_kind_stop_the_node_naming_both() -> None:
    from node.core.errors import PluginLoadError
    from node.core.hookspecs import hookimpl
    from node.core.jobs import JobKind, collect_kinds
    from node.core.plugins import PluginHost

    class Twin:
        @hookimpl
        def atrium_job_kinds(self, register: Any) -> None:
            register(JobKind("echo", run=None, prepare=None))  # type: ignore[arg-type]

    host = PluginHost([], available={})
    host.register(Twin(), "first")
    host.register(Twin(), "second")
    with pytest.raises(PluginLoadError, match="plugin 'second' registers the job kind 'echo', which plugin 'first' "
                                              "already registers"):
        collect_kinds(host)
