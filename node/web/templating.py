"""The Jinja2 environment of the pages: autoescaping on for every template, the base context (visitor,
CSRF token, asset URLs, browsing levels) and the filters the templates use."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from node.api.keys import NODE
from node.core.sessions import ANONYMOUS_MAX_LEVEL, BROWSING_LEVELS, LEVEL_LABELS
from node.core.vocabulary import NsfwLevel
from node.web.assets import Assets
from node.web.sessions import CSRF_FIELD, VISITOR

ASSETS = web.AppKey("web_assets", Assets)


def human_size(size: int | float | None) -> str:
    """Bytes as people read them: 2.1 MB, 143 KB."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def level_label(level: int | None) -> str:
    """The label of the highest level in a mask or flag ("R" for 4)."""
    if not level:
        return "PG"
    highest = max((lv for lv in BROWSING_LEVELS if lv & int(level)), default=NsfwLevel.PG)
    return LEVEL_LABELS[highest]


def date(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d") if value is not None else ""


def environment(loader: jinja2.BaseLoader) -> dict[str, Any]:
    return {"loader": loader, "autoescape": True, "trim_blocks": True, "lstrip_blocks": True,
            "undefined": jinja2.StrictUndefined}


def setup(app: web.Application, assets: Assets) -> None:
    env = aiohttp_jinja2.setup(app, **environment(jinja2.PackageLoader("node.web", "templates")))
    env.filters.update(human_size=human_size, level_label=level_label, date=date)
    env.globals.update(asset=assets.url, level_labels=LEVEL_LABELS, browsing_levels=BROWSING_LEVELS,
                       anonymous_max_level=ANONYMOUS_MAX_LEVEL, csrf_field=CSRF_FIELD)
    app[ASSETS] = assets


def render(request: web.Request, template: str, context: dict[str, Any] | None = None,
           status: int = 200) -> web.Response:
    """A page from `template` with the base context every page needs."""
    current = request.get(VISITOR)
    base = {
        "request": request,
        "visitor": current,
        "user": current.user if current is not None else None,
        "csrf_token": current.csrf_token if current is not None else "",
        "node_name": request.app[NODE].name,
        "path": request.path_qs,
    }
    base.update(context or {})
    response = aiohttp_jinja2.render_template(template, request, base, status=status)
    return response
