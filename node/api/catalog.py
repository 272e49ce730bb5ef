"""The native catalog API for creators and members: models, versions, publishing, reactions, reviews
and comments. Handlers parse, authorize and call `node.core.catalog`; answers use Civitai's shapes."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import Field

from node.api.auth import current_user, optional_user, requires
from node.api.bodies import Body, int_param, read_body
from node.api.civitai import model_json, version_json
from node.api.keys import NODE
from node.core.catalog import ModelChanges, VersionChanges
from node.core.errors import InvalidInput, NotFound
from node.core.records import load_models, load_versions
from node.core.tables import Role
from node.core.vocabulary import ModelMode, ModelStatus, parse_enum

routes = web.RouteTableDef()


class ModelBody(Body):
    name: str | None = Field(default=None, max_length=255)
    type: str | None = Field(default=None, max_length=32)
    description: str | None = Field(default=None, max_length=100_000)
    tags: list[str] | None = Field(default=None, max_length=30)
    nsfw_level: int | None = None
    allow_no_credit: bool | None = None
    allow_commercial_use: list[str] | None = Field(default=None, max_length=5)
    allow_derivatives: bool | None = None
    allow_different_license: bool | None = None

    def changes(self) -> ModelChanges:
        return ModelChanges(**self.model_dump())


class VersionBody(Body):
    name: str | None = Field(default=None, max_length=255)
    base_model: str | None = Field(default=None, max_length=64)
    description: str | None = Field(default=None, max_length=100_000)
    trained_words: list[str] | None = Field(default=None, max_length=100)
    clip_skip: int | None = None

    def changes(self) -> VersionChanges:
        return VersionChanges(**self.model_dump())


class ModeBody(Body):
    mode: str | None


class ReactionBody(Body):
    reaction: str = Field(max_length=16)
    on: bool = True


class ReviewBody(Body):
    rating: int
    recommended: bool | None = None
    text: str = Field(default="", max_length=10_000)


class CommentBody(Body):
    text: str = Field(max_length=10_000)


async def model_answer(request: web.Request, model_id: int, status: int = 200) -> web.Response:
    records = await load_models(request.app[NODE].db, [model_id], include_drafts=True)
    if not records:
        raise NotFound(f"no model {model_id}")
    return web.json_response(model_json(request, records[0]), status=status)


@routes.post("/api/node/v1/models")
@requires(Role.CREATOR)
async def create_model(request: web.Request) -> web.Response:
    body = await read_body(request, ModelBody)
    changes = body.changes()
    if changes.name is None or changes.type is None:
        raise InvalidInput("a model needs a name and a type")
    licence = {k: v for k, v in body.model_dump().items()
               if k.startswith("allow_") and v is not None}
    model = await request.app[NODE].catalog.create_model(
        current_user(request), name=changes.name, type=changes.type, description=changes.description or "",
        tags=changes.tags or [], nsfw_level=changes.nsfw_level or 1, **licence)
    return await model_answer(request, model.id, 201)  # type: ignore[arg-type]


@routes.get("/api/node/v1/models/{id}")
@requires(Role.MEMBER)
async def get_own_model(request: web.Request) -> web.Response:
    """A model as its owner (or a moderator) sees it, drafts included."""
    model_id = int_param(request, "id")
    await request.app[NODE].catalog.visible_model(current_user(request), model_id)
    return await model_answer(request, model_id)


@routes.patch("/api/node/v1/models/{id}")
@requires(Role.MEMBER)
async def update_model(request: web.Request) -> web.Response:
    body = await read_body(request, ModelBody)
    model = await request.app[NODE].catalog.update_model(current_user(request), int_param(request, "id"),
                                                         body.changes())
    return await model_answer(request, model.id)  # type: ignore[arg-type]


async def _set_status(request: web.Request, status: ModelStatus) -> web.Response:
    model = await request.app[NODE].catalog.set_status(current_user(request), int_param(request, "id"), status)
    if status == ModelStatus.DELETED:
        return web.json_response({"id": model.id, "status": model.status})
    if status == ModelStatus.PUBLISHED:
        request.app[NODE].distribution.schedule_model(model.id)  # torrents and the signed manifest
    return await model_answer(request, model.id)  # type: ignore[arg-type]


@routes.post("/api/node/v1/models/{id}/publish")
@requires(Role.MEMBER)
async def publish_model(request: web.Request) -> web.Response:
    return await _set_status(request, ModelStatus.PUBLISHED)


@routes.post("/api/node/v1/models/{id}/unpublish")
@requires(Role.MEMBER)
async def unpublish_model(request: web.Request) -> web.Response:
    return await _set_status(request, ModelStatus.UNPUBLISHED)


@routes.delete("/api/node/v1/models/{id}")
@requires(Role.MEMBER)
async def delete_model(request: web.Request) -> web.Response:
    return await _set_status(request, ModelStatus.DELETED)


@routes.put("/api/node/v1/models/{id}/mode")
@requires(Role.MEMBER)
async def set_mode(request: web.Request) -> web.Response:
    body = await read_body(request, ModeBody)
    mode = ModelMode(parse_enum(ModelMode, body.mode, "mode")) if body.mode else None
    model = await request.app[NODE].catalog.set_mode(current_user(request), int_param(request, "id"), mode)
    return await model_answer(request, model.id)  # type: ignore[arg-type]


@routes.post("/api/node/v1/models/{id}/versions")
@requires(Role.MEMBER)
async def create_version(request: web.Request) -> web.Response:
    body = await read_body(request, VersionBody)
    version = await request.app[NODE].catalog.create_version(current_user(request), int_param(request, "id"),
                                                             body.changes())
    return await version_answer(request, version.id, 201)  # type: ignore[arg-type]


async def version_answer(request: web.Request, version_id: int, status: int = 200) -> web.Response:
    found = await load_versions(request.app[NODE].db, [version_id])
    if not found:
        raise NotFound(f"no model version {version_id}")
    record, model = found[0]
    return web.json_response(version_json(request, record, model, with_model=True), status=status)


@routes.patch("/api/node/v1/versions/{id}")
@requires(Role.MEMBER)
async def update_version(request: web.Request) -> web.Response:
    body = await read_body(request, VersionBody)
    version = await request.app[NODE].catalog.update_version(current_user(request), int_param(request, "id"),
                                                             body.changes())
    return await version_answer(request, version.id)  # type: ignore[arg-type]


@routes.delete("/api/node/v1/versions/{id}")
@requires(Role.MEMBER)
async def delete_version(request: web.Request) -> web.Response:
    version_id = int_param(request, "id")
    await request.app[NODE].catalog.delete_version(current_user(request), version_id)
    return web.json_response({"id": version_id, "deleted": True})


@routes.post("/api/node/v1/models/{id}/reactions")
@requires(Role.MEMBER)
async def react_model(request: web.Request) -> web.Response:
    body = await read_body(request, ReactionBody)
    model = await request.app[NODE].catalog.react_to_model(current_user(request), int_param(request, "id"),
                                                           body.reaction, body.on)
    return web.json_response({"id": model.id, "likeCount": model.like_count, "dislikeCount": model.dislike_count})


@routes.post("/api/node/v1/images/{id}/reactions")
@requires(Role.MEMBER)
async def react_image(request: web.Request) -> web.Response:
    body = await read_body(request, ReactionBody)
    image = await request.app[NODE].catalog.react_to_image(current_user(request), int_param(request, "id"),
                                                           body.reaction, body.on)
    return web.json_response({"id": image.id, "likeCount": image.like_count, "heartCount": image.heart_count,
                              "laughCount": image.laugh_count, "cryCount": image.cry_count,
                              "dislikeCount": image.dislike_count})


@routes.put("/api/node/v1/versions/{id}/review")
@requires(Role.MEMBER)
async def review_version(request: web.Request) -> web.Response:
    body = await read_body(request, ReviewBody)
    review = await request.app[NODE].catalog.review(current_user(request), int_param(request, "id"),
                                                    rating=body.rating, recommended=body.recommended, text=body.text)
    return web.json_response(review_json(review, current_user(request).username))


def review_json(review: Any, username: str | None = None) -> dict[str, Any]:
    return {"id": review.id, "modelVersionId": review.version_id, "rating": review.rating,
            "recommended": review.recommended, "text": review.text, "username": username,
            "createdAt": review.created_at.isoformat(), "updatedAt": review.updated_at.isoformat()}


def comment_json(comment: Any, username: str | None = None) -> dict[str, Any]:
    return {"id": comment.id, "modelId": comment.model_id, "text": comment.text, "username": username,
            "createdAt": comment.created_at.isoformat()}


def page_params(request: web.Request) -> tuple[int, int | None]:
    """`limit` (1-200, default 50) and `before` (an id, to page backwards) from the query string."""
    limit_text, before_text = request.query.get("limit", "50"), request.query.get("before")
    if not limit_text.isdigit():
        raise InvalidInput("limit: expected a whole number")
    if before_text is not None and not before_text.isdigit():
        raise InvalidInput("before: expected an id")
    return int(limit_text), int(before_text) if before_text is not None else None


@routes.get("/api/node/v1/versions/{id}/reviews")
async def list_reviews(request: web.Request) -> web.Response:
    limit, before = page_params(request)
    rows = await request.app[NODE].catalog.reviews(await optional_user(request), int_param(request, "id"),
                                                   limit=limit, before=before)
    return web.json_response({"items": [review_json(r, name) for r, name in rows]})


@routes.get("/api/node/v1/models/{id}/comments")
async def list_comments(request: web.Request) -> web.Response:
    limit, before = page_params(request)
    rows = await request.app[NODE].catalog.comments(await optional_user(request), int_param(request, "id"),
                                                    limit=limit, before=before)
    return web.json_response({"items": [comment_json(c, name) for c, name in rows]})


@routes.post("/api/node/v1/models/{id}/comments")
@requires(Role.MEMBER)
async def comment_model(request: web.Request) -> web.Response:
    body = await read_body(request, CommentBody)
    comment = await request.app[NODE].catalog.comment(current_user(request), int_param(request, "id"), body.text)
    return web.json_response(comment_json(comment, current_user(request).username), status=201)
