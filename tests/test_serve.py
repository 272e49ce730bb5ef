"""`atrium serve` as a user runs it: a real process on a free port of 127.0.0.1."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from node.core.identity import load_identity
from tests.conftest import atrium, http_json, wait_healthy

STARTUP_TARGET_SECONDS = 2.0


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    assert atrium("init", str(data), "--name", "served").returncode == 0
    return data


def test_serve_answers_its_first_health_check_within_two_seconds(node_dir: Path, serve) -> None:
    # The machine is shared: a start can be slowed by other work, so the node gets three tries and
    # the fastest counts (bench/startup.py measures it against a baseline).
    times = []
    for _ in range(3):
        server = serve(node_dir)
        times.append(wait_healthy(server))
        server.stop(signal.SIGTERM)
        if times[-1] < STARTUP_TARGET_SECONDS:
            break
    print(f"first health check answered {min(times):.2f} s after start (tries: {times})")
    assert min(times) < STARTUP_TARGET_SECONDS


def test_serve_prints_url_data_dir_node_id_and_plugins_then_stops_cleanly_on_sigterm(node_dir: Path, serve) -> None:
    server = serve(node_dir)
    wait_healthy(server)
    code, out, err = server.stop(signal.SIGTERM)
    assert code == 0, err
    node_id = load_identity(node_dir / "node.key").node_id
    assert f"url:      {server.url}" in out
    assert f"data:     {node_dir.resolve()}" in out
    assert f"node id:  {node_id}" in out
    assert "plugins:  none" in out
    assert "Traceback" not in err


def test_serve_stops_cleanly_on_sigint(node_dir: Path, serve) -> None:
    server = serve(node_dir)
    wait_healthy(server)
    code, _out, err = server.stop(signal.SIGINT)
    assert code == 0
    assert "Traceback" not in err


def test_the_node_document_names_the_node_and_its_key(node_dir: Path, serve) -> None:
    server = serve(node_dir)
    wait_healthy(server)
    status, doc = http_json("GET", server.url + "/.well-known/atrium-node")
    assert status == 200
    identity = load_identity(node_dir / "node.key")
    assert doc["id"] == identity.node_id
    assert doc["name"] == "served"
    assert doc["software"] == {"name": "atrium-node", "version": doc["software"]["version"]}
    assert doc["plugins"] == []
    assert doc["public_key"]["did"] == f"did:key:{identity.node_id}"


def test_log_json_writes_one_json_object_per_line_and_hides_tokens(node_dir: Path, serve) -> None:
    token = atrium("users", "add", "ann", data=node_dir).stdout.strip().splitlines()[-1]
    server = serve(node_dir, "--log-json")
    wait_healthy(server)
    status, me = http_json("GET", f"{server.url}/api/v1/me?token={token}")
    assert status == 200 and me["username"] == "ann"
    _code, _out, err = server.stop(signal.SIGTERM)
    records = [json.loads(line) for line in err.strip().splitlines()]
    access = [r for r in records if r["logger"] == "atrium.access"]
    assert any(r["path"] == "/api/v1/me?token=***" and r["status"] == 200 for r in access)
    assert token not in err


def test_serve_refuses_a_database_without_the_current_schema_unless_migrate(tmp_path: Path, serve) -> None:
    data = tmp_path / "data"
    assert atrium("init", str(data)).returncode == 0
    (data / "atrium.db").unlink()  # a new, empty database: no schema at all
    refused = atrium("serve", "--port", "0", data=data, timeout=30)
    assert refused.returncode == 1
    assert "atrium db upgrade" in refused.stderr and "--migrate" in refused.stderr
    server = serve(data, "--migrate")
    wait_healthy(server)
    assert atrium("db", "status", data=data).returncode == 0


def test_serve_on_a_busy_port_says_so(node_dir: Path, serve) -> None:
    server = serve(node_dir)
    wait_healthy(server)
    port = server.url.rsplit(":", 1)[1]
    result = atrium("serve", "--port", port, data=node_dir, timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
