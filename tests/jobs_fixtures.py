"""Fixtures for the job runner's tests: the app with the test job kinds (tests/plugins/jobs_testkit.py),
and a real installed distribution of that plugin for `atrium serve` and `atrium worker` subprocesses."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from node.app import create_app
from node.core.config import Config
from node.core.plugins import PluginHost
from tests.conftest import Api, wait_for
from tests.plugins import jobs_testkit

REPO = Path(__file__).parent.parent
TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


def kit_host() -> PluginHost:
    """A plugin host holding only the test job kinds."""
    host = PluginHost([], available={})
    host.register(jobs_testkit, "jobs_testkit")
    return host


@pytest.fixture
def jobs_api(config: Config, aiohttp_client: Any) -> Callable[..., Awaitable[Api]]:
    """Start the app (on each database) with the test job kinds and the given [jobs] settings."""

    async def start(**settings: Any) -> Api:
        for name, value in settings.items():
            setattr(config.jobs, name, value)
        app = create_app(config, plugins=kit_host())
        return Api(client=await aiohttp_client(app), app=app)

    return start


async def submit(api: Api, token: str, kind: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    response = await api.call("POST", "/api/node/v1/jobs", token, json={"kind": kind, "params": params or {}})
    body = await response.json()
    assert response.status == 202, body
    return body


async def job(api: Api, token: str, job_id: int) -> dict[str, Any]:
    response = await api.call("GET", f"/api/node/v1/jobs/{job_id}", token)
    body = await response.json()
    assert response.status == 200, body
    return body


async def until(api: Api, token: str, job_id: int, check: Callable[[dict[str, Any]], bool],
                timeout: float = 15.0) -> dict[str, Any]:
    """The job's JSON once `check` holds for it (polled, with a deadline)."""
    async def ready() -> dict[str, Any] | None:
        body = await job(api, token, job_id)
        return body if check(body) else None

    return await wait_for(ready, timeout=timeout)


async def finished(api: Api, token: str, job_id: int, timeout: float = 15.0) -> dict[str, Any]:
    return await until(api, token, job_id, lambda j: j["status"] in TERMINAL, timeout)


def install_testkit(root: Path) -> dict[str, str]:
    """Install the test kit as a real distribution (entry point `jobs_testkit`) under `root`; returns the
    environment a subprocess needs to find it."""
    info = root / "atrium_jobs_testkit-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: atrium-jobs-testkit\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[atrium.plugins]\njobs_testkit = tests.plugins.jobs_testkit\n")
    return {"PYTHONPATH": f"{root}:{REPO}"}


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a Server-Sent Events body."""
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith(":")]
        if not lines:
            continue
        name = next(line[len("event: "):] for line in lines if line.startswith("event: "))
        data = json.loads("".join(line[len("data: "):] for line in lines if line.startswith("data: ")))
        events.append((name, data))
    return events
