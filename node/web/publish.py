"""The publish flow: a form creates a draft model and its first version; the draft's page uploads files
(resumable, through the upload API, by static/publish.js) and example images; a last form publishes."""

from __future__ import annotations

from aiohttp import web

from node.api.bodies import int_param
from node.api.keys import NODE
from node.core.catalog import VersionChanges, can_edit
from node.core.errors import Forbidden, InvalidInput
from node.core.records import load_images, load_models
from node.core.sessions import BROWSING_LEVELS, LEVEL_LABELS
from node.core.tables import Role
from node.core.vocabulary import BASE_MODELS, CommercialUse, ModelStatus, ModelType
from node.web.account import field, form_data
from node.web.sessions import form, page, redirect, require_signed_in, visitor
from node.web.templating import render

routes = web.RouteTableDef()

MAX_TAGS = 30
MAX_WORDS = 100


def split_list(text: str, what: str, maximum: int) -> list[str]:
    items = [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]
    if len(items) > maximum:
        raise InvalidInput(f"{what}: at most {maximum}, separated by commas")
    return items


def new_model_context(values: dict[str, str] | None = None, error: str | None = None) -> dict[str, object]:
    return {"values": values or {}, "error": error, "model_types": [t.value for t in ModelType],
            "base_models": BASE_MODELS, "levels": [(int(lv), LEVEL_LABELS[lv]) for lv in BROWSING_LEVELS],
            "commercial_uses": [c.value for c in CommercialUse if c != CommercialUse.NONE]}


@routes.get("/publish")
@page
async def new_model_page(request: web.Request) -> web.Response:
    require_signed_in(request, Role.CREATOR)
    return render(request, "publish_new.html", new_model_context())


@routes.post("/publish")
@form(Role.CREATOR)
async def create_model(request: web.Request) -> web.Response:
    fields = await form_data(request)
    user = visitor(request).user
    catalog = request.app[NODE].catalog
    try:
        level_text = fields.get("nsfw_level", "1")
        if level_text not in {str(int(lv)) for lv in BROWSING_LEVELS}:
            raise InvalidInput("content level: choose PG, PG-13, R, X or XXX")
        model = await catalog.create_model(
            user, name=field(fields, "name", maximum=255), type=field(fields, "type", maximum=32),
            description=field(fields, "description", maximum=100_000, required=False),
            tags=split_list(field(fields, "tags", required=False), "tags", MAX_TAGS), nsfw_level=int(level_text),
            allow_no_credit="allow_no_credit" in fields, allow_derivatives="allow_derivatives" in fields,
            allow_different_license="allow_different_license" in fields,
            allow_commercial_use=[u for u in (c.value for c in CommercialUse) if f"use_{u}" in fields])
        await catalog.create_version(user, model.id, VersionChanges(
            name=field(fields, "version_name", maximum=255), base_model=field(fields, "base_model", maximum=64),
            trained_words=split_list(field(fields, "trained_words", maximum=10_000, required=False),
                                     "trigger words", MAX_WORDS)))
    except InvalidInput as exc:
        # The form again, with what was typed and what is wrong.
        return render(request, "publish_new.html", new_model_context(fields, exc.detail), status=400)
    return redirect(f"/publish/{model.id}")


async def _editable(request: web.Request) -> tuple[int, object]:
    current = require_signed_in(request, Role.CREATOR)
    model_id = int_param(request, "id")
    model = await request.app[NODE].catalog.visible_model(current.user, model_id)
    if not can_edit(current.user, model):  # type: ignore[arg-type]
        raise Forbidden(f"model {model_id} belongs to another creator")
    return model_id, model


@routes.get("/publish/{id}")
@page
async def draft_page(request: web.Request) -> web.Response:
    model_id, model = await _editable(request)
    node = request.app[NODE]
    [record] = await load_models(node.db, [model_id], include_drafts=True)
    version = record.versions[0] if record.versions else None
    images = await load_images(node.db, [i.id for i in version.images]) if version else []
    return render(request, "publish_model.html", {
        "record": record, "model": model, "version": version, "images": images,
        "levels": [(int(lv), LEVEL_LABELS[lv]) for lv in BROWSING_LEVELS],
        "published": model.status == ModelStatus.PUBLISHED})  # type: ignore[attr-defined]


@routes.post("/publish/{id}/publish")
@form(Role.CREATOR)
async def publish(request: web.Request) -> web.Response:
    model_id, _model = await _editable(request)
    node = request.app[NODE]
    model = await node.catalog.set_status(visitor(request).user, model_id, ModelStatus.PUBLISHED)
    node.distribution.schedule_model(model.id)  # torrents and the signed manifest, as the API does
    return redirect(f"/models/{model_id}")
