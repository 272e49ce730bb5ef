"""Served nodes for the swarm and pull tests: each an `atrium serve` process with its own data directory,
a swarm on 127.0.0.1 and a free port, an admin and (on publishing nodes) a creator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.catalog_fixtures import safetensors_bytes
from tests.conftest import TEST_SWARM_ENV, ServeProcess, atrium, free_port, http_json, wait_healthy

MIB = 1024 * 1024


def model_bytes(seed: int, mib: int = 8) -> bytes:
    """A valid safetensors file of about `mib` MiB (float16 tensors of 1024 x 1024, 2 MiB each)."""
    return safetensors_bytes(seed=seed, tensors=max(1, mib // 2), size=1024)


@dataclass
class ServedNode:
    name: str
    data: Path
    server: ServeProcess
    admin: str
    creator: str
    env: dict[str, str] | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def get(self, path: str) -> Any:
        status, body = http_json("GET", self.url + path, timeout=30)
        assert status == 200, body
        return body

    def call(self, method: str, path: str, body: Any = None, token: str | None = None,
             timeout: float = 60) -> tuple[int, Any]:
        return http_json(method, self.url + path, body, token=token, timeout=timeout)

    def raw(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return response.read()

    def publish(self, path: Path, name: str, model_type: str = "LORA") -> str:
        """Publish a file with `atrium publish`; returns the AIR."""
        result = atrium("publish", str(path), "--name", name, "--type", model_type, "--base-model", "SD 1.5",
                        "--node", self.url, "--token", self.creator, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()[-1]

    def swarm_of_file(self, file_id: int) -> dict[str, Any]:
        return self.get(f"/api/node/v1/files/{file_id}/swarm")

    def swarm_of(self, info_hash: str) -> dict[str, Any]:
        return self.get(f"/api/node/v1/swarm/torrents/{info_hash}")

    def stop(self) -> None:
        if self.server.proc.poll() is None:
            self.server.proc.kill()
            self.server.proc.wait(timeout=20)


def make_node(root: Path, name: str, env: dict[str, str] | None = None) -> ServedNode:
    data = root / name
    created = atrium("init", str(data), "--name", name)
    assert created.returncode == 0, created.stderr
    tokens = []
    for user, role in (("root", "admin"), ("maker", "creator")):
        added = atrium("users", "add", user, "--role", role, data=data)
        assert added.returncode == 0, added.stderr
        tokens.append(added.stdout.splitlines()[-1])
    server = serve_logged(data, env=env)
    wait_healthy(server, deadline=60)
    return ServedNode(name=name, data=data, server=server, admin=tokens[0], creator=tokens[1], env=env)


def serve_logged(data: Path, env: dict[str, str] | None = None) -> ServeProcess:
    """`atrium serve` on a free port with its output in DATA/serve.log (a pipe nobody reads would fill up
    and stop the node)."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    full_env.update(TEST_SWARM_ENV)
    full_env.update(env or {})
    log = open(data / "serve.log", "a")  # noqa: SIM115 - the child keeps it open
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "node", "serve", "--data", str(data), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, text=True, env=full_env)
    log.close()
    return ServeProcess(proc=proc, url=f"http://127.0.0.1:{port}", started_at=started)


def make_nodes(root: Path, names: list[str], envs: dict[str, dict[str, str]] | None = None) -> list[ServedNode]:
    """Several nodes, set up side by side."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(names)) as pool:
        return list(pool.map(lambda n: make_node(root, n, (envs or {}).get(n)), names))


def log_of(node: ServedNode) -> str:
    return (node.data / "serve.log").read_text(errors="replace")


def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll a blocking predicate until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(interval)


def pull_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`atrium pull ...` in the background (the caller waits for it or kills it)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    full_env.update(TEST_SWARM_ENV)
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "node", "pull", "--listen", "127.0.0.1:0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)


def version_of(node: ServedNode, air: str) -> dict[str, Any]:
    from urllib.parse import quote

    return node.get("/api/node/v1/air/" + quote(air))


def dump(value: Any) -> str:
    return json.dumps(value, indent=1)



# The origin's upload cap in the cluster: low enough that a client plainly gets most bytes elsewhere.
ORIGIN_UPLOAD_CAP = 1 * MIB


@dataclass
class Cluster:
    """Three nodes: alpha published `data` (its upload capped); beta and gamma fetched it from the swarm."""

    alpha: ServedNode
    beta: ServedNode
    gamma: ServedNode
    air: str
    version: dict[str, Any]
    data: bytes

    @property
    def file(self) -> dict[str, Any]:
        return self.version["files"][0]

    @property
    def info_hash(self) -> str:
        return self.alpha.swarm_of_file(self.file["id"])["infoHashV2"]

    def restart(self, node: ServedNode) -> None:
        """Kill a node and serve its data directory again (new HTTP port, same everything else)."""
        node.stop()
        node.server = serve_logged(node.data, env=node.env)
        wait_healthy(node.server, deadline=60)


def make_cluster(root: Path) -> Cluster:
    alpha, beta, gamma = make_nodes(root, ["alpha", "beta", "gamma"],
                                    {"alpha": {"ATRIUM_SWARM_UPLOAD_RATE_LIMIT": str(ORIGIN_UPLOAD_CAP)}})
    try:
        data = model_bytes(seed=1)
        path = root / "catstyle.safetensors"
        path.write_bytes(data)
        air = alpha.publish(path, "Cat Style")
        version = version_of(alpha, air)
        file_id = version["files"][0]["id"]
        wait_until(lambda: alpha.swarm_of_file(file_id)["seeding"], what="alpha seeds the published file")
        for node in (beta, gamma):
            status, body = node.call("POST", "/api/node/v1/swarm/fetch",
                                     {"node": alpha.url, "versionId": version["id"]}, token=node.admin)
            assert status == 200, body
        return Cluster(alpha, beta, gamma, air, version, data)
    except BaseException:
        for node in (alpha, beta, gamma):
            node.stop()
        raise
