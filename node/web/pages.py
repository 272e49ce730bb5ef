"""The browsing pages: home, models (search), a model, an image, a creator. Handlers read through
node.core (search, records, catalog) at the visitor's browsing level and render templates."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from node.api.bodies import int_param
from node.api.keys import NODE
from node.api.followed import remote_query
from node.core.errors import InvalidInput, NotFound
from node.core.records import ImageRecord, ModelRecord, image_resources, load_images, load_models, load_versions
from node.core.search import ImageQuery, ModelQuery, find_images, find_models
from node.core.tables import Role
from node.core.vocabulary import (BASE_MODELS, FileFormat, ImageSort, ModelMode, ModelSort, ModelStatus, ModelType,
                                  NsfwLevel, Period, parse_enum)
from node.web.sessions import page, visitor
from node.web.templating import render

routes = web.RouteTableDef()

HOME_IMAGES = 12
HOME_MODELS = 8
LIST_MODELS = 24
LIST_FOLLOWED = 12  # followed nodes' models under a search's first page
REVIEWS_SHOWN = 20
# The home page's most-liked images are the month's most reacted (all time on a quiet node); ranking them
# sorts every candidate image (a second on 200,000), so the answer is kept this long per browsing level,
# and refreshed in the background while the previous one is still served.
LIKED_FRESH_SECONDS = 60.0
# The rest of the home page is the same for every visitor at a browsing level: kept this long.
HOME_FRESH_SECONDS = 10.0
MAX_QUERY_LENGTH = 200
# Keys of an image's meta shown apart (prompts) or not at all (the lists behind the resource links).
META_SHOWN_APART = ("prompt", "negativePrompt")
META_HIDDEN = ("hashes", "resources", "civitaiResources")
HASHES_SHOWN = ("SHA256", "AutoV2", "AutoV3", "BLAKE3", "CRC32")
# Civitai's licence flags, as the readable lines its model pages show.
COMMERCIAL_USES = (("Image", "Sell images they generate"),
                   ("RentCivit", "Run on generation services of Atrium nodes"),
                   ("Rent", "Run on services that generate images for money"),
                   ("Sell", "Sell this model or merges using this model"))


@dataclass
class Card:
    """A model as a listing shows it: the record and its cover image (None when none is visible)."""

    record: ModelRecord
    cover: Any

    @property
    def model(self) -> Any:
        return self.record.model


def cards(records: list[ModelRecord]) -> list[Card]:
    result = []
    for record in records:
        cover = next((image for v in record.versions for image in v.images), None)
        result.append(Card(record=record, cover=cover))
    return result


async def model_cards(request: web.Request, q: ModelQuery) -> tuple[list[Card], str | None]:
    db = request.app[NODE].db
    found = await find_models(db, q)
    records = await load_models(db, found.ids, image_levels=q.browsing_level)
    return cards(records), found.next_cursor


async def image_cards(request: web.Request, q: ImageQuery) -> tuple[list[ImageRecord], str | None]:
    db = request.app[NODE].db
    found = await find_images(db, q)
    return await load_images(db, found.ids), found.next_cursor


class StaleWhileRevalidate:
    """Values kept for `fresh` seconds per key; an older value is still answered at once while one
    background task computes its successor, so only the very first request of a key waits."""

    def __init__(self, fresh: float) -> None:
        self.fresh = fresh
        self.values: dict[Any, tuple[float, Any]] = {}
        self.pending: dict[Any, asyncio.Task[Any]] = {}

    async def get(self, key: Any, compute: Callable[[], Awaitable[Any]]) -> Any:
        found = self.values.get(key)
        if found is not None and time.monotonic() - found[0] < self.fresh:
            return found[1]
        task = self.pending.get(key)
        if task is None:
            task = self.pending[key] = asyncio.ensure_future(self._compute(key, compute))
        if found is not None:
            return found[1]
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Cancel the computations under way (the node is stopping)."""
        for task in list(self.pending.values()):
            task.cancel()
        await asyncio.gather(*self.pending.values(), return_exceptions=True)

    async def _compute(self, key: Any, compute: Callable[[], Awaitable[Any]]) -> Any:
        try:
            value = await compute()
            self.values[key] = (time.monotonic(), value)
            return value
        finally:
            self.pending.pop(key, None)


LIKED = web.AppKey("web_liked_images", StaleWhileRevalidate)
HOME = web.AppKey("web_home_sections", StaleWhileRevalidate)


async def most_liked_images(request: web.Request, levels: int) -> list[ImageRecord]:
    async def compute() -> list[ImageRecord]:
        for period in (Period.MONTH, Period.ALL_TIME):
            found, _ = await image_cards(request, ImageQuery(limit=HOME_IMAGES, sort=ImageSort.MOST_REACTIONS.value,
                                                             period=period, levels=levels))
            if len(found) == HOME_IMAGES:
                break
        return found

    return await request.app[LIKED].get(levels, compute)  # type: ignore[no-any-return]


@routes.get("/")
@page
async def home(request: web.Request) -> web.Response:
    levels = visitor(request).levels

    async def sections() -> dict[str, Any]:
        recent, _ = await image_cards(request, ImageQuery(limit=HOME_IMAGES, sort=ImageSort.NEWEST.value,
                                                          levels=levels))
        newest, _ = await model_cards(request, ModelQuery(limit=HOME_MODELS, sort=ModelSort.NEWEST,
                                                          browsing_level=levels))
        downloaded, _ = await model_cards(request, ModelQuery(limit=HOME_MODELS, sort=ModelSort.MOST_DOWNLOADED,
                                                              browsing_level=levels))
        return {"recent_images": recent, "newest_models": newest, "downloaded_models": downloaded}

    context = dict(await request.app[HOME].get(levels, sections))
    context["liked_images"] = await most_liked_images(request, levels)
    return render(request, "home.html", context)


def _choice(request: web.Request, name: str, enum: Any, default: Any) -> Any:
    text = request.query.get(name, "")
    return parse_enum(enum, text, name) if text else default


@routes.get("/models")
@page
async def models(request: web.Request) -> web.Response:
    query = request.query.get("query", "").strip()
    if len(query) > MAX_QUERY_LENGTH:
        raise InvalidInput(f"the search text is longer than {MAX_QUERY_LENGTH} characters")
    type_ = _choice(request, "type", ModelType, None)
    sort = _choice(request, "sort", ModelSort, ModelSort.NEWEST if not query else ModelSort.HIGHEST_RATED)
    period = _choice(request, "period", Period, Period.ALL_TIME)
    base_model = request.query.get("base_model", "")
    if base_model and base_model not in BASE_MODELS:
        raise InvalidInput(f"base model: unknown value {base_model!r}; use one of: {', '.join(BASE_MODELS)}")
    tag = request.query.get("tag", "").strip()[:64]
    levels = visitor(request).levels
    nsfw_text = request.query.get("level", "")
    if nsfw_text:
        # One content level, within what the visitor browses at.
        level = next((lv for lv in NsfwLevel if lv.name == nsfw_text.upper().replace("-", "")), None)
        if level is None or level == NsfwLevel.BLOCKED:
            raise InvalidInput("level: one of PG, PG-13, R, X, XXX")
        levels &= int(level)
    q = ModelQuery(limit=LIST_MODELS, cursor=request.query.get("cursor") or None, query=query or None,
                   tag=tag or None, types=[type_.value] if type_ else [], base_models=[base_model] if base_model else [],
                   sort=sort, period=period, browsing_level=levels)
    found, next_cursor = await model_cards(request, q) if levels else ([], None)
    with_followed = _followed_flag(request)
    followed = await followed_cards(request, q) if with_followed and levels and not q.cursor else []
    filters = {k: v for k, v in (("query", query), ("type", type_.value if type_ else ""), ("base_model", base_model),
                                 ("tag", tag), ("sort", sort.value), ("period", period.value),
                                 ("level", nsfw_text), ("followed", "on" if with_followed else "off")) if v}
    return render(request, "models.html", {
        "cards": found, "next_cursor": next_cursor, "filters": filters, "query": query,
        "followed": followed, "with_followed": with_followed,
        "model_types": [t.value for t in ModelType], "base_models": BASE_MODELS,
        "sorts": [s.value for s in ModelSort], "periods": [p.value for p in Period]})


def _followed_flag(request: web.Request) -> bool:
    node = request.app[NODE]
    # The form sends a hidden "off" before its checkbox's "on": the last value is the visitor's choice.
    text = (request.query.getall("followed", []) or [""])[-1].lower()
    if text not in ("", "1", "on", "true", "0", "off", "false"):
        raise InvalidInput("followed: on or off")
    flag = text in ("1", "on", "true") if text else node.config.federation.api_includes_followed
    return flag and node.federation is not None


async def followed_cards(request: web.Request, q: ModelQuery) -> list[Any]:
    """The first followed nodes' models matching a search (the mirrored index; docs/federation.md)."""
    if q.period != Period.ALL_TIME:
        return []
    page = await request.app[NODE].federation.mirror.find(remote_query(q), limit=LIST_FOLLOWED)
    return page.rows


async def showcase(db: Any, record: ModelRecord, chosen: Any) -> list[ImageRecord]:
    """A version's example images as load_models read them (the first IMAGES_PER_VERSION, at the
    visitor's levels), named by who posted them: the creator, mostly, which needs no other read."""
    others = [image.id for image in chosen.images if image.owner_id != record.model.owner_id]
    names = {r.image.id: r.username for r in await load_images(db, others)} if others else {}
    return [ImageRecord(image=image, username=names.get(image.id, record.creator.username),
                        base_model=chosen.version.base_model) for image in chosen.images]


def licence_lines(model: Any) -> list[tuple[bool, str]]:
    """The model's permissions as (allowed, sentence) lines."""
    uses = set(model.allow_commercial_use or [])
    lines = [(bool(model.allow_no_credit), "Use the model without crediting the creator")]
    lines += [(use in uses, text) for use, text in COMMERCIAL_USES]
    lines += [(bool(model.allow_derivatives), "Share merges using this model"),
              (bool(model.allow_different_license), "Use different permissions on merges")]
    return lines


def may_edit(request: web.Request, model: Any) -> bool:
    user = visitor(request).user
    return user is not None and (model.owner_id == user.id or Role(user.role).includes(Role.MODERATOR))


@routes.get("/models/{id}")
@page
async def model_page(request: web.Request) -> web.Response:
    node = request.app[NODE]
    current = visitor(request)
    model_id = int_param(request, "id")
    # One read for the model and every version (drafts too: whether the visitor may see them is
    # decided here, as catalog.visible_model would, without another round trip to the database).
    [record] = await load_models(node.db, [model_id], include_drafts=True, image_levels=current.levels) or [None]
    model = record.model if record is not None else None
    if model is None or model.status == ModelStatus.DELETED:
        raise NotFound(f"no model {model_id}")
    editor = may_edit(request, model)
    if model.status != ModelStatus.PUBLISHED and not editor:
        raise NotFound(f"no model {model_id}")
    if not editor:
        record.versions = [v for v in record.versions if v.version.status == ModelStatus.PUBLISHED]
    hidden = not (model.nsfw_level & current.levels) and not editor
    if hidden:
        return render(request, "hidden.html", {"what": "model", "level": model.nsfw_level}, status=200)
    chosen = record.versions[0] if record.versions else None
    if "version" in request.query:
        wanted = request.query["version"]
        chosen = next((v for v in record.versions if str(v.version.id) == wanted), None)
        if chosen is None:
            raise NotFound(f"model {model_id} has no version {wanted!r}")
    gallery: list[ImageRecord] = []
    reviews: list[Any] = []
    if chosen is not None and model.mode != ModelMode.TAKEN_DOWN:
        gallery = await showcase(node.db, record, chosen)
        if chosen.version.rating_count:  # kept in step with the reviews: none means no query
            reviews = await node.catalog.reviews(current.user, chosen.version.id, limit=REVIEWS_SHOWN)
    files = [] if model.mode in (ModelMode.ARCHIVED, ModelMode.TAKEN_DOWN) or chosen is None else chosen.files
    return render(request, "model.html", {
        "record": record, "model": model, "chosen": chosen, "files": files, "gallery": gallery,
        "reviews": reviews, "licence": licence_lines(model), "editor": editor, "hashes_shown": HASHES_SHOWN,
        "safetensor": FileFormat.SAFETENSOR.value})


def generation_text(meta: dict[str, Any]) -> str:
    """An image's generation data as A1111 writes it (prompt, negative prompt, settings line), for copying."""
    lines = []
    if meta.get("prompt"):
        lines.append(str(meta["prompt"]))
    if meta.get("negativePrompt"):
        lines.append(f"Negative prompt: {meta['negativePrompt']}")
    settings = [f"{key}: {value}" for key, value in meta.items()
                if key not in META_SHOWN_APART + META_HIDDEN and isinstance(value, (str, int, float))]
    if settings:
        lines.append(", ".join(settings))
    return "\n".join(lines)


@routes.get("/images/{id}")
@page
async def image_page(request: web.Request) -> web.Response:
    node = request.app[NODE]
    current = visitor(request)
    image_id = int_param(request, "id")
    [record] = await load_images(node.db, [image_id]) or [None]
    if record is None or record.image.nsfw_level & NsfwLevel.BLOCKED:
        raise NotFound(f"no image {image_id}")
    image = record.image
    source = None
    if image.version_id is not None:
        try:
            source = await node.catalog.visible_version(current.user, image.version_id)
        except NotFound:
            raise NotFound(f"no image {image_id}") from None
        if source[1].mode == ModelMode.TAKEN_DOWN and not may_edit(request, source[1]):
            raise NotFound(f"no image {image_id}")
    if not (image.nsfw_level & current.levels) and not (current.user is not None and current.user.id == image.owner_id):
        return render(request, "hidden.html", {"what": "image", "level": image.nsfw_level})
    resources = (await image_resources(node.db, [image_id])).get(image_id, [])
    linked = {r.version_id for r in resources if r.version_id is not None}
    if image.version_id is not None:
        linked.add(image.version_id)
    models_by_version = {record.version.id: model for record, model in await load_versions(node.db, sorted(linked))
                         if model.status == ModelStatus.PUBLISHED or may_edit(request, model)}
    meta = image.meta or {}
    settings = [(key, value) for key, value in meta.items() if key not in META_SHOWN_APART + META_HIDDEN]
    return render(request, "image.html", {
        "record": record, "image": image, "meta": meta, "settings": settings, "resources": resources,
        "models_by_version": models_by_version, "generation_text": generation_text(meta),
        "source": source})


@routes.get("/creators/{username}")
@page
async def creator_page(request: web.Request) -> web.Response:
    node = request.app[NODE]
    current = visitor(request)
    creator = await node.accounts.get_user(request.match_info["username"][:64])
    q = ModelQuery(limit=LIST_MODELS, cursor=request.query.get("cursor") or None, username=creator.username,
                   sort=ModelSort.NEWEST, browsing_level=current.levels)
    found, next_cursor = await model_cards(request, q)
    images, _ = await image_cards(request, ImageQuery(limit=HOME_IMAGES, username=creator.username,
                                                      levels=current.levels))
    return render(request, "creator.html", {"creator": creator, "cards": found, "next_cursor": next_cursor,
                                            "images": images})
