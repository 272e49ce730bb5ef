"""Text-to-image and image-to-image with diffusers: checkpoints and LoRAs from the catalog by AIR.

Adds the job kind `generate` and `POST /api/node/v1/generate` (docs/generation.md). Needs the 'ml'
extra; torch and diffusers are imported only when a generation runs.
"""

from __future__ import annotations

from typing import Any

from node.core.plugins import require_modules

require_modules("generation")

from aiohttp import web  # noqa: E402 - after the check, so a missing extra is reported in one line

from node.api.auth import current_user, requires  # noqa: E402
from node.api.bodies import read_json  # noqa: E402
from node.api.jobs import render  # noqa: E402
from node.api.keys import NODE  # noqa: E402
from node.core.errors import InvalidInput  # noqa: E402
from node.core.hookspecs import hookimpl  # noqa: E402
from node.core.tables import Role  # noqa: E402
from plugins.generation.job import GENERATE, KIND, configure  # noqa: E402
from plugins.generation.settings import load_settings  # noqa: E402


@hookimpl
def atrium_startup(node: Any) -> None:
    configure(load_settings(node.config.plugin_table("generation")))


@hookimpl
def atrium_job_kinds(register: Any) -> None:
    register(GENERATE)


@hookimpl
def atrium_routes(routes: web.RouteTableDef) -> None:
    @routes.post("/api/node/v1/generate")
    @requires(Role.MEMBER)
    async def generate(request: web.Request) -> web.Response:
        """Queue a generation: 202 with the job; 4xx naming the field or rule when refused."""
        body = await read_json(request)
        if not isinstance(body, dict):
            raise InvalidInput("expected a JSON object with at least model and prompt")
        job = await request.app[NODE].jobs.submit(current_user(request), KIND, body)
        return web.json_response(await render(request, job), status=202)
