"""Shared fixtures: data directories, databases (SQLite and a throwaway PostgreSQL database), the app,
users with tokens, and a real `atrium serve` process."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from node.app import create_app
from node.core.config import Config, config_from_mapping
from node.core.db import Database
from node.core.identity import create_identity
from node.core.plugins import PluginHost
from node.core.tables import Role

# PostgreSQL runs on 127.0.0.1:5432 with trust auth here and in CI. Tests never skip it.
PG_ADMIN_DSN = os.environ.get("ATRIUM_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
# Fast password hashing in tests (the defaults are tested in test_accounts).
FAST_ACCOUNTS = {"argon2_memory_kib": 8192, "argon2_time_cost": 1}
# The swarm of every test node: loopback only, a free port, nothing that contacts other hosts.
TEST_SWARM = {"host": "127.0.0.1", "port": 0, "dht": False, "lsd": False, "upnp": False, "natpmp": False}
TEST_SWARM_ENV = {f"ATRIUM_SWARM_{k.upper()}": str(v).lower() for k, v in TEST_SWARM.items()}


def require_debian_tool(path: str, package: str) -> str:
    """The path of a tool a test drives (chromium, aria2c). Missing on a developer's machine: the test
    is skipped with the install command. Missing on CI (`CI` set; .ci/run installs them): the test
    fails, so CI never passes without having run it."""
    import shutil

    found = shutil.which(path)
    if found is None:
        message = f"{path} is not installed: apt-get install -y {package}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run this test)", pytrace=False)
        pytest.skip(message)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def create_pg_database() -> str:
    """Create a database with a random name; returns its asyncpg URL."""
    name = f"atrium_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    return f"{base}/{name}"


async def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database (postgresql://...), dropped afterwards."""
    url = await create_pg_database()
    try:
        yield url
    finally:
        await drop_pg_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Run the test once on SQLite and once on PostgreSQL; yields the configured (non-async) URL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    url = await create_pg_database()
    try:
        yield url
    finally:
        await drop_pg_database(url)


def make_config(data_dir: Path, **sections: dict[str, Any]) -> Config:
    """A Config for `data_dir` with the given sections (no environment overrides)."""
    raw: dict[str, Any] = {"accounts": dict(FAST_ACCOUNTS), "swarm": dict(TEST_SWARM)}
    for name, table in sections.items():
        raw.setdefault(name, {}).update(table)
    return config_from_mapping(data_dir, raw, env={})


def write_node(data_dir: Path, toml: str = "", *, key: bool = True) -> Path:
    """A data directory with the given node.toml text and, by default, a key."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "node.toml").write_text(toml)
    if key and not (data_dir / "node.key").exists():
        create_identity(data_dir / "node.key")
    return data_dir


@pytest.fixture
async def config(tmp_path: Path, database_url: str) -> Config:
    """A migrated node configuration on each database backend."""
    data_dir = write_node(tmp_path / "node")
    cfg = make_config(data_dir, database={"url": database_url})
    db = Database.from_config(cfg)
    try:
        await db.upgrade()
    finally:
        await db.close()
    return cfg


@pytest.fixture
def sqlite_config(tmp_path: Path) -> Config:
    """A node configuration on SQLite (not yet migrated: use `client`, which migrates)."""
    return make_config(write_node(tmp_path / "node"))


@dataclass
class Api:
    """A test client of a running app, with helpers for authenticated calls."""

    client: Any
    app: Any

    @property
    def node(self) -> Any:
        from node.api.keys import NODE

        return self.app[NODE]

    async def user(self, name: str, role: Role = Role.MEMBER, password: str | None = None,
                   expires_in_days: int | None = None) -> str:
        """Create a user and return a fresh API token for it."""
        accounts = self.node.accounts
        user = await accounts.create_user(name, role=role, password=password)
        return (await accounts.issue_token(user, "test", expires_in_days=expires_in_days)).secret

    async def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self.client.request(method, path, headers=headers, **kwargs)


@pytest.fixture
async def api(aiohttp_client: Any, sqlite_config: Config) -> Api:
    """The real app on SQLite, started (and migrated) by the test client."""
    plugins = PluginHost([], available={})
    app = create_app(sqlite_config, migrate=True, plugins=plugins)
    client = await aiohttp_client(app)
    return Api(client=client, app=app)


@pytest.fixture
async def api_on(config: Config, aiohttp_client: Any) -> Api:
    """The real app on each database backend (already migrated). `config` comes first so that the
    database outlives the app: fixtures are torn down in the reverse order of their setup."""
    app = create_app(config, plugins=PluginHost([], available={}))
    client = await aiohttp_client(app)
    return Api(client=client, app=app)


def atrium(*args: str, data: Path | None = None, stdin: str | None = None, env: dict[str, str] | None = None,
           timeout: float = 60, demo: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the `atrium` command in a subprocess, as a user would.

    `atrium init` gets `--no-demo` unless `demo` is set: most tests want an empty catalog.
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    full_env.update(TEST_SWARM_ENV)
    full_env.update(env or {})
    if args and args[0] == "init" and not demo:
        args = (*args, "--no-demo")
    cmd = [sys.executable, "-m", "node", *args]
    if data is not None:
        cmd += ["--data", str(data)]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=full_env, timeout=timeout)


@dataclass
class ServeProcess:
    proc: subprocess.Popen[str]
    url: str
    started_at: float

    def stop(self, sig: int) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=20)
        return self.proc.returncode, out, err


def start_serve(data: Path, *extra: str, env: dict[str, str] | None = None) -> ServeProcess:
    """Start `atrium serve` on a free port on 127.0.0.1 (the caller stops it)."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    full_env.update(TEST_SWARM_ENV)
    full_env.update(env or {})
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "node", "serve", "--data", str(data), "--host", "127.0.0.1",
                             "--port", str(port), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=full_env)
    return ServeProcess(proc=proc, url=f"http://127.0.0.1:{port}", started_at=started)


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start `atrium serve` processes; any still running at the end are killed."""
    running: list[ServeProcess] = []

    def start(data: Path, *extra: str, env: dict[str, str] | None = None) -> ServeProcess:
        process = start_serve(data, *extra, env=env)
        running.append(process)
        return process

    yield start
    for process in running:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.communicate(timeout=10)


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll an async predicate until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def http_json(method: str, url: str, body: Any = None, token: str | None = None,
              timeout: float = 5.0) -> tuple[int, Any]:
    """A blocking HTTP call returning (status, decoded JSON body), for tests of a served node."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_healthy(server: ServeProcess, deadline: float = 20.0) -> float:
    """Poll the health route of a started server; seconds from process start to the first 200."""
    while time.monotonic() - server.started_at < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"atrium serve exited with {server.proc.returncode}: {server.proc.stderr.read()}")
        try:
            status, _ = http_json("GET", server.url + "/api/node/v1/health", timeout=0.5)
            if status == 200:
                return time.monotonic() - server.started_at
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"no healthy answer within {deadline} s")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Three served nodes sharing one file through the swarm (tests/swarm_fixtures.py), for the swarm
    and pull tests; stopped at the end of the session."""
    from tests.swarm_fixtures import make_cluster

    made = make_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield made
    finally:
        for node in (made.alpha, made.beta, made.gamma):
            node.stop()
