"""Remote workers and restarts: the worker API and its tokens, a real `atrium worker` process, and a real
`atrium serve` killed mid-job."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from node.core.tables import Role
from tests.conftest import TEST_SWARM_ENV, atrium, http_json, wait_healthy
from tests.jobs_fixtures import finished, job, jobs_api, submit, install_testkit, until  # noqa: F401

CLAIM = "/api/node/v1/worker/claim"


def worker_env(site: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    env.update(TEST_SWARM_ENV)
    env.update(site)
    return env


async def store_blob(api: Any, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    temp = api.node.blobs.new_temp_path()
    temp.write_bytes(data)
    api.node.blobs.commit(temp, sha)
    return sha


async def test_a_remote_worker_claims_and_completes_jobs_with_files_and_blobs(jobs_api: Any, tmp_path: Path) -> None:
    api = await jobs_api(workers=0)
    token = await api.user("alice")
    issued = await api.node.jobs.worker_tokens.add("gpu-box")
    sha = await store_blob(api, b"weights the worker needs" * 1000)
    url = str(api.client.make_url("")).rstrip("/")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node", "worker", "--node", url, "--token", issued.secret, "--plugins", "jobs_testkit",
        "--kinds", "write,count", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=worker_env(install_testkit(tmp_path / "site")))
    try:
        done = await finished(api, token, (await submit(api, token, "write", {"text": "from afar", "blobs": [sha]}))["id"],
                              timeout=30)
        assert done["status"] == "succeeded", done
        assert done["result"][sha] == {"size": 24000, "sha256": sha}, "the blob arrived whole"
        response = await api.call("GET", done["files"][0]["url"].removeprefix(url), token)
        assert await response.read() == b"from afar"
        stored = await api.node.jobs.load(done["id"])
        assert stored.worker.startswith("gpu-box/")

        cancelled = await submit(api, token, "count", {"n": 100_000, "delay": 0.01})
        await until(api, token, cancelled["id"], lambda j: j["status"] == "running" and j["progress"] > 0, timeout=20)
        await api.call("POST", f"/api/node/v1/jobs/{cancelled['id']}/cancel", token)
        assert (await finished(api, token, cancelled["id"], timeout=10))["status"] == "cancelled"

        running = await submit(api, token, "count", {"n": 100_000, "delay": 0.01})
        await until(api, token, running["id"], lambda j: j["status"] == "running" and j["progress"] > 0, timeout=20)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=20)
        assert proc.returncode == 0, err.decode()
        assert "stopped after" in out.decode()
        back = await job(api, token, running["id"])
        assert (back["status"], back["attempts"]) == ("pending", 0), "a stopped worker hands its job back at once"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_worker_routes_take_only_worker_tokens_and_the_current_lease(jobs_api: Any) -> None:
    api = await jobs_api(workers=0, lease_seconds=1, max_file_bytes=1024)
    user = await api.user("alice")
    worker = (await api.node.jobs.worker_tokens.add("box")).secret
    sha = await store_blob(api, b"listed")

    response = await api.call("POST", CLAIM, user, json={"kinds": ["write"]})
    assert response.status == 401 and "not a user's API token" in (await response.json())["detail"]
    assert (await api.call("POST", CLAIM, json={"kinds": ["write"]})).status == 401
    assert (await api.call("POST", "/api/node/v1/jobs", worker, json={"kind": "echo"})).status == 401
    bad = await api.call("POST", CLAIM, worker, json={"kinds": []})
    assert bad.status == 400 and "kinds" in (await bad.json())["detail"]
    unknown = await api.call("POST", CLAIM, worker, json={"kinds": ["paint"]})
    assert unknown.status == 400 and "runs none of the kinds 'paint'" in (await unknown.json())["detail"]
    assert (await api.call("POST", CLAIM, worker, json={"kinds": ["write"]})).status == 204

    queued = await submit(api, user, "write", {"text": "x", "blobs": [sha]})
    claimed = await (await api.call("POST", CLAIM, worker, json={"kinds": ["write"], "wait": 1})).json()
    assert claimed["id"] == queued["id"] and claimed["params"]["blobs"] == [sha] and claimed["attempt"] == 1
    base = f"/api/node/v1/worker/jobs/{claimed['id']}"
    lease = {"X-Atrium-Lease": claimed["lease"]}
    no_lease = await api.call("POST", f"{base}/heartbeat", worker, json={"progress": 0.5})
    assert no_lease.status == 400 and "X-Atrium-Lease" in (await no_lease.json())["detail"]
    wrong = await api.call("POST", f"{base}/heartbeat", worker, json={"progress": 0.5},
                           headers={"X-Atrium-Lease": "not-the-lease"})
    assert wrong.status == 409
    beat = await api.call("POST", f"{base}/heartbeat", worker, json={"progress": 0.5, "message": "half"}, headers=lease)
    assert beat.status == 200 and (await beat.json())["cancelled"] is False
    assert (await api.call("POST", f"{base}/heartbeat", worker, json={"progress": 2}, headers=lease)).status == 400
    huge = await api.call("POST", f"{base}/heartbeat", worker, json={"detail": {"x": "y" * 5000}}, headers=lease)
    assert huge.status == 400 and "at most 4096 bytes" in (await huge.json())["detail"]
    long_kind = await api.call("POST", CLAIM, worker, json={"kinds": ["k" * 65]})
    assert long_kind.status == 400
    assert (await api.call("PUT", f"{base}/files/.hidden", worker, data=b"x", headers=lease)).status == 400
    big = await api.call("PUT", f"{base}/files/big.bin", worker, data=b"x" * 2048, headers=lease)
    assert big.status == 413 and "max_file_bytes" in (await big.json())["detail"]
    unlisted = await api.call("GET", f"{base}/blobs/{'0' * 64}", worker, headers=lease)
    assert unlisted.status == 400 and "not listed" in (await unlisted.json())["detail"]
    fetched = await api.call("GET", f"{base}/blobs/{sha}", worker, headers=lease)
    assert await fetched.read() == b"listed"
    missing = await api.call("POST", f"{base}/complete", worker, json={"result": {}, "files": [{"name": "a.png"}]},
                             headers=lease)
    assert missing.status == 400 and "was not uploaded" in (await missing.json())["detail"]
    assert (await api.call("POST", f"{base}/complete", worker, data=b"[1,", headers=lease)).status == 400

    # The worker goes quiet past its lease: the job is claimed again, and the stale worker is refused.
    await until(api, user, queued["id"], lambda j: j["status"] == "pending", timeout=10)
    again = await (await api.call("POST", CLAIM, worker, json={"kinds": ["write"], "wait": 1})).json()
    assert again["attempt"] == 2
    for action, body in (("complete", {"result": {"stale": True}}), ("fail", {"error": "stale"})):
        stale = await api.call("POST", f"{base}/{action}", worker, json=body, headers=lease)
        assert stale.status == 409, action
        assert "no longer holds job" in (await stale.json())["detail"]
    fresh = {"X-Atrium-Lease": again["lease"]}
    assert (await api.call("PUT", f"{base}/files/out.txt", worker, data=b"fresh", headers=fresh)).status == 200
    ok = await api.call("POST", f"{base}/complete", worker, headers=fresh,
                        json={"result": {"fresh": True}, "files": [{"name": "out.txt", "content_type": "text/plain"}]})
    assert ok.status == 200
    done = await job(api, user, queued["id"])
    assert done["status"] == "succeeded" and done["result"] == {"fresh": True} and done["files"][0]["size"] == 5


async def test_admins_manage_worker_tokens_and_a_revoked_token_stops_working(jobs_api: Any) -> None:
    api = await jobs_api(workers=0)
    admin = await api.user("root", Role.ADMIN)
    member = await api.user("alice")
    assert (await api.call("POST", "/api/node/v1/workers", member, json={"name": "box"})).status == 403
    created = await api.call("POST", "/api/node/v1/workers", admin, json={"name": "box"})
    assert created.status == 201
    secret = (await created.json())["token"]
    assert secret.startswith("atw_")
    taken = await api.call("POST", "/api/node/v1/workers", admin, json={"name": "box"})
    assert taken.status == 409
    assert (await api.call("POST", "/api/node/v1/workers", admin, json={"name": "../x"})).status == 400
    assert (await api.call("POST", CLAIM, secret, json={"kinds": ["echo"]})).status == 204
    listed = await (await api.call("GET", "/api/node/v1/workers", admin)).json()
    assert [w["name"] for w in listed["items"]] == ["box"] and "token" not in listed["items"][0]
    assert listed["items"][0]["last_seen_at"] is not None
    assert (await api.call("DELETE", "/api/node/v1/workers/box", admin)).status == 200
    assert (await api.call("DELETE", "/api/node/v1/workers/nobody", admin)).status == 404
    refused = await api.call("POST", CLAIM, secret, json={"kinds": ["echo"]})
    assert refused.status == 401 and "was revoked" in (await refused.json())["detail"]


def test_workers_are_added_listed_and_revoked_at_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "node"
    assert atrium("init", str(data)).returncode == 0
    added = atrium("workers", "add", "gpu-box", data=data)
    assert added.returncode == 0, added.stderr
    secret = added.stdout.splitlines()[-1]
    assert secret.startswith("atw_")
    listed = atrium("workers", "list", data=data)
    assert "gpu-box" in listed.stdout and "active" in listed.stdout and secret not in listed.stdout
    again = atrium("workers", "add", "gpu-box", data=data)
    assert again.returncode == 1 and "already a worker named 'gpu-box'" in again.stderr
    assert atrium("workers", "revoke", "gpu-box", data=data).returncode == 0
    assert "revoked" in atrium("workers", "list", data=data).stdout
    missing = atrium("workers", "revoke", "nobody", data=data)
    assert missing.returncode == 1 and "no worker named 'nobody'" in missing.stderr
    no_token = atrium("worker", "--node", "http://127.0.0.1:9")
    assert no_token.returncode == 2 and "--token" in no_token.stderr
    no_plugin = atrium("worker", "--node", "http://127.0.0.1:9", "--token", secret, "--plugins", "nope")
    assert no_plugin.returncode == 1 and "--plugins: nope not installed here" in no_plugin.stderr
    no_kind = atrium("worker", "--node", "http://127.0.0.1:9", "--token", secret, "--kinds", "paint")
    assert no_kind.returncode == 1 and "no loaded plugin provides the job kind(s) paint" in no_kind.stderr


def _poll(check: Any, deadline: float = 20.0) -> Any:
    """Call `check` until it returns something truthy; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {deadline} s")


def test_a_node_killed_mid_job_completes_the_job_after_restart_exactly_once(tmp_path: Path, serve: Any,
                                                                            database_url: str) -> None:
    data = tmp_path / "node"
    env = {**install_testkit(tmp_path / "site"), "ATRIUM_PLUGINS_ENABLED": "jobs_testkit",
           "ATRIUM_JOBS_LEASE_SECONDS": "2", "ATRIUM_JOBS_POLL_SECONDS": "1", "ATRIUM_DATABASE_URL": database_url}
    assert atrium("init", str(data), env=env).returncode == 0
    token = atrium("users", "add", "alice", data=data, env=env).stdout.splitlines()[-1]
    server = serve(data, env=env)
    wait_healthy(server)
    marker = tmp_path / "marker.txt"
    status, queued = http_json("POST", server.url + "/api/node/v1/jobs",
                               {"kind": "count", "params": {"n": 30, "delay": 0.1, "marker": str(marker)}}, token)
    assert status == 202, queued
    job_url = f"{server.url}/api/node/v1/jobs/{queued['id']}"
    _poll(lambda: http_json("GET", job_url, token=token)[1]["progress"] > 0)
    waiter = subprocess.Popen([sys.executable, "-m", "node", "jobs", "wait", str(queued["id"]), "--node", server.url,
                               "--token", token, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=worker_env(install_testkit(tmp_path / "site")))
    try:
        server.proc.kill()
        server.proc.communicate(timeout=10)
        port = server.url.rsplit(":", 1)[1]
        again = serve(data, "--port", port, env=env)
        again.url = server.url
        wait_healthy(again)
        done = _poll(lambda: (lambda j: j if j["status"] not in ("pending", "running") else None)(
            http_json("GET", job_url, token=token)[1]), deadline=30)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2, "the attempt that died with the node is counted"
        assert done["result"] == {"counted": 30, "device": "cpu", "finished": True}
        assert marker.read_text().splitlines() == [f"run {done['id']}", f"run {done['id']}", f"finish {done['id']}"]
        out, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 0, err
        assert json.loads(out) == done["result"], "`atrium jobs wait` followed the job across the restart"
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()


@pytest.mark.parametrize("kind, message", [("fail", "job {id} failed: RuntimeError: the fail kind fails on purpose")])
def test_jobs_wait_exits_1_with_the_jobs_error(tmp_path: Path, serve: Any, kind: str, message: str) -> None:
    data = tmp_path / "node"
    env = {**install_testkit(tmp_path / "site"), "ATRIUM_PLUGINS_ENABLED": "jobs_testkit"}
    assert atrium("init", str(data), env=env).returncode == 0
    token = atrium("users", "add", "alice", data=data, env=env).stdout.splitlines()[-1]
    server = serve(data, env=env)
    wait_healthy(server)
    _status, queued = http_json("POST", server.url + "/api/node/v1/jobs", {"kind": kind, "params": {}}, token)
    waited = atrium("jobs", "wait", str(queued["id"]), "--node", server.url, "--token", token, env=env)
    assert waited.returncode == 1
    assert message.format(id=queued["id"]) in waited.stderr
    listed = atrium("jobs", "list", "--node", server.url, "--token", token, env=env)
    assert listed.returncode == 0 and kind in listed.stdout and "failed" in listed.stdout
    shown = atrium("jobs", "show", str(queued["id"]), "--node", server.url, "--token", token, env=env)
    assert "error:    RuntimeError" in shown.stdout
    cancelled = atrium("jobs", "cancel", str(queued["id"]), "--node", server.url, "--token", token, env=env)
    assert cancelled.returncode == 1 and "already ended (failed)" in cancelled.stderr


def test_a_node_stopped_cleanly_hands_its_running_job_back_and_ends_event_streams(tmp_path: Path, serve: Any) -> None:
    import sqlite3

    data = tmp_path / "node"
    env = {**install_testkit(tmp_path / "site"), "ATRIUM_PLUGINS_ENABLED": "jobs_testkit"}
    assert atrium("init", str(data), env=env).returncode == 0
    token = atrium("users", "add", "alice", data=data, env=env).stdout.splitlines()[-1]
    server = serve(data, env=env)
    wait_healthy(server)
    _status, queued = http_json("POST", server.url + "/api/node/v1/jobs",
                                {"kind": "count", "params": {"n": 100_000, "delay": 0.01}}, token)
    job_url = f"{server.url}/api/node/v1/jobs/{queued['id']}"
    _poll(lambda: http_json("GET", job_url, token=token)[1]["progress"] > 0)
    waiter = subprocess.Popen([sys.executable, "-m", "node", "jobs", "wait", str(queued["id"]), "--node", server.url,
                               "--token", token], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=worker_env(install_testkit(tmp_path / "site")))
    try:
        assert waiter.stderr is not None
        assert f"job {queued['id']}:" in waiter.stderr.readline(), "the waiter follows the event stream"
        started = time.monotonic()
        code, _out, err = server.stop(signal.SIGTERM)
        assert code == 0, err
        assert time.monotonic() - started < 10, "an open event stream does not hold up the stop"
    finally:
        waiter.kill()
        waiter.communicate()
    with sqlite3.connect(data / "atrium.db") as db:
        status, attempts = db.execute("SELECT status, attempts FROM jobs WHERE id = ?", (queued["id"],)).fetchone()
    assert (status, attempts) == ("pending", 0)


def test_a_remote_worker_keeps_trying_while_the_node_is_down_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    from tests.conftest import free_port

    proc = subprocess.Popen([sys.executable, "-m", "node", "worker", "--node", f"http://127.0.0.1:{free_port()}",
                             "--token", "atw_unused", "--plugins", "jobs_testkit"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=worker_env(install_testkit(tmp_path / "site")))
    try:
        lines: list[str] = []
        assert proc.stderr is not None
        _poll(lambda: lines.append(proc.stderr.readline()) or "trying again in 2 s" in lines[-1], deadline=30)
        assert any("connection refused; trying again in 1 s" in line for line in lines)
        proc.send_signal(signal.SIGINT)
        out, _err = proc.communicate(timeout=15)
        assert proc.returncode == 0 and "stopped after 0 jobs" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
