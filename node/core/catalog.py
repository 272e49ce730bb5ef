"""The catalog: creating, editing, publishing and removing models and versions, and the community's
reactions, reviews and comments on them. Who may do what is decided here, not in the HTTP layer.

Uploads of files and images live in `node/core/ingest.py`; read queries in `node/core/search.py`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from node.core.db import Database
from node.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from node.core.search import search_document
from node.core.tables import (Comment, Image, ImageReaction, Model, ModelFile, ModelReaction, ModelSearch,
                              ModelTag, ModelVersion, Review, Role, Tag, User, utcnow)
from node.core.vocabulary import (CommercialUse, ModelMode, ModelStatus, ModelType, NsfwLevel, ReactionKind,
                                  parse_enum)

NAME_MAX = 255
DESCRIPTION_MAX = 100_000
TAG_RE = re.compile(r"^[\w][\w .+#'-]{0,63}$", re.UNICODE)
MAX_TAGS = 30
MAX_TRAINED_WORDS = 100
TRAINED_WORD_MAX = 500
COMMENT_MAX = 10_000
REVIEW_MAX = 10_000


def version_air(node_name: str, model: Model, version: ModelVersion) -> str:
    """The AIR of a version published on this node: its source is the node's name."""
    from node.core.air import Air, air_type_for_model_type, ecosystem_for_base_model

    return str(Air(source=node_name, id=str(model.id), version=str(version.id),
                   ecosystem=ecosystem_for_base_model(version.base_model), type=air_type_for_model_type(model.type)))


def can_edit(user: User, model: Model) -> bool:
    """Owners edit their models; moderators and admins edit any."""
    return model.owner_id == user.id or Role(user.role).includes(Role.MODERATOR)


def check_text(value: Any, field_name: str, *, maximum: int, required: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{field_name}: expected text")
    value = value.strip()
    if required and not value:
        raise InvalidInput(f"{field_name}: must not be empty")
    if len(value) > maximum:
        raise InvalidInput(f"{field_name}: at most {maximum} characters")
    return value


def normalize_tags(tags: Iterable[str]) -> list[str]:
    """Lower-cased, de-duplicated tags; InvalidInput for tags that are not words."""
    result: list[str] = []
    for tag in tags:
        if not isinstance(tag, str):
            raise InvalidInput("tags: each tag must be text")
        name = " ".join(tag.strip().lower().split())
        if not TAG_RE.match(name):
            raise InvalidInput(f"tags: {tag!r} is not a valid tag (letters, digits, spaces and .+#'-, "
                               "at most 64 characters)")
        if name not in result:
            result.append(name)
    if len(result) > MAX_TAGS:
        raise InvalidInput(f"tags: at most {MAX_TAGS} tags")
    return result


def check_nsfw_level(level: Any) -> int:
    """A single content level (1, 2, 4, 8 or 16)."""
    allowed = [int(lvl) for lvl in NsfwLevel if lvl != NsfwLevel.BLOCKED]
    if isinstance(level, bool) or level not in allowed:
        raise InvalidInput(f"nsfw_level: must be one of {', '.join(map(str, allowed))} "
                           "(PG, PG-13, R, X, XXX)")
    return int(level)


def check_trained_words(words: Sequence[str]) -> list[str]:
    if not isinstance(words, (list, tuple)) or len(words) > MAX_TRAINED_WORDS:
        raise InvalidInput(f"trained_words: a list of at most {MAX_TRAINED_WORDS} trigger words")
    return [check_text(w, "trained_words", maximum=TRAINED_WORD_MAX) for w in words]


async def _toggle(session: AsyncSession, row: Any, key: tuple[Any, ...], on: bool) -> int:
    """Make `row` (a reaction) exist or not; +1, -1 or 0 as the count of such rows changed."""
    existing = await session.get(type(row), key)
    if on and existing is None:
        session.add(row)
        return 1
    if not on and existing is not None:
        await session.delete(existing)
        return -1
    return 0


@dataclass
class ModelChanges:
    """Fields a creator may set on a model; None means "leave as is"."""

    name: str | None = None
    description: str | None = None
    type: str | None = None
    tags: list[str] | None = None
    nsfw_level: int | None = None
    allow_no_credit: bool | None = None
    allow_commercial_use: list[str] | None = None
    allow_derivatives: bool | None = None
    allow_different_license: bool | None = None

    def apply(self, model: Model) -> None:
        if self.name is not None:
            model.name = check_text(self.name, "name", maximum=NAME_MAX)
        if self.description is not None:
            model.description = check_text(self.description, "description", maximum=DESCRIPTION_MAX,
                                           required=False)
        if self.type is not None:
            model.type = parse_enum(ModelType, self.type, "type").value
        if self.nsfw_level is not None:
            model.nsfw_level = check_nsfw_level(self.nsfw_level)
        for flag in ("allow_no_credit", "allow_derivatives", "allow_different_license"):
            value = getattr(self, flag)
            if value is not None:
                if not isinstance(value, bool):
                    raise InvalidInput(f"{flag}: expected true or false")
                setattr(model, flag, value)
        if self.allow_commercial_use is not None:
            uses = [parse_enum(CommercialUse, u, "allow_commercial_use").value for u in self.allow_commercial_use]
            model.allow_commercial_use = sorted(set(uses), key=[c.value for c in CommercialUse].index)


@dataclass
class VersionChanges:
    name: str | None = None
    description: str | None = None
    base_model: str | None = None
    trained_words: list[str] | None = None
    clip_skip: int | None = None

    def apply(self, version: ModelVersion) -> None:
        if self.name is not None:
            version.name = check_text(self.name, "name", maximum=NAME_MAX)
        if self.description is not None:
            version.description = check_text(self.description, "description", maximum=DESCRIPTION_MAX,
                                             required=False)
        if self.base_model is not None:
            version.base_model = check_text(self.base_model, "base_model", maximum=64)
        if self.trained_words is not None:
            version.trained_words = check_trained_words(self.trained_words)
        if self.clip_skip is not None:
            if isinstance(self.clip_skip, bool) or not isinstance(self.clip_skip, int) or not 1 <= self.clip_skip <= 12:
                raise InvalidInput("clip_skip: a whole number from 1 to 12")
            version.clip_skip = self.clip_skip


# What a change of status or mode is called in the federation log.
STATUS_KINDS = {ModelStatus.PUBLISHED: "model.published", ModelStatus.UNPUBLISHED: "model.unpublished",
                ModelStatus.DELETED: "model.deleted", ModelStatus.DRAFT: "model.unpublished"}
MODE_KINDS = {ModelMode.TAKEN_DOWN: "model.takedown", ModelMode.ARCHIVED: "model.archived", None: "model.restored"}
CatalogJournal = Callable[[AsyncSession, str, Model], Awaitable[None]]


@dataclass
class Catalog:
    """Catalog operations on one database.

    Each change to a model the public has seen (or sees now) is also handed to the `journals`, inside
    the change's transaction: the federation log appends its signed entry there, so the change and its
    entry commit together or not at all.
    """

    db: Database
    node_name: str
    journals: list[CatalogJournal] = field(default_factory=list)

    async def journal(self, session: AsyncSession, kind: str, model: Model) -> None:
        """Hand a change to `model` (made in `session`, not yet committed) to the journals."""
        await self._journal(session, kind, model)

    async def _journal(self, session: AsyncSession, kind: str, model: Model) -> None:
        if model.published_at is None:  # never public: nothing to tell
            return
        await session.flush()
        for journal in self.journals:
            await journal(session, kind, model)

    # -- loading with permission checks ------------------------------------------------------------

    async def _model(self, session: AsyncSession, model_id: int, user: User | None = None,
                     *, edit: bool = False) -> Model:
        model = await session.get(Model, model_id)
        if model is None or model.status == ModelStatus.DELETED:
            raise NotFound(f"no model {model_id}")
        visible = model.status == ModelStatus.PUBLISHED or (user is not None and can_edit(user, model))
        if not visible:
            raise NotFound(f"no model {model_id}")
        if edit and (user is None or not can_edit(user, model)):
            raise Forbidden(f"model {model_id} belongs to another creator; only its owner, moderators "
                            "and admins may change it")
        return model

    async def _version(self, session: AsyncSession, version_id: int, user: User | None = None,
                       *, edit: bool = False) -> tuple[ModelVersion, Model]:
        version = await session.get(ModelVersion, version_id)
        if version is None:
            raise NotFound(f"no model version {version_id}")
        model = await self._model(session, version.model_id, user, edit=edit)
        if version.status != ModelStatus.PUBLISHED and not (user is not None and can_edit(user, model)):
            raise NotFound(f"no model version {version_id}")
        return version, model

    # -- models ------------------------------------------------------------------------------------

    async def create_model(self, user: User, *, name: str, type: str, description: str = "",
                           tags: Sequence[str] = (), nsfw_level: int = 1, **licence: Any) -> Model:
        """A new draft model owned by `user` (who must be a creator)."""
        if not Role(user.role).includes(Role.CREATOR):
            raise Forbidden("publishing models needs the creator role; ask a moderator or admin")
        model = Model(owner_id=user.id, name="", type=ModelType.OTHER.value)
        ModelChanges(name=name, description=description, type=type, tags=list(tags), nsfw_level=nsfw_level,
                     **licence).apply(model)
        async with self.db.session() as session:
            session.add(model)
            await session.flush()
            await self._set_tags(session, model, normalize_tags(tags))
            await self._reindex(session, model)
            await session.commit()
            await session.refresh(model)
        return model

    async def update_model(self, user: User, model_id: int, changes: ModelChanges) -> Model:
        async with self.db.session() as session:
            model = await self._model(session, model_id, user, edit=True)
            if model.level_locked and changes.nsfw_level is not None and changes.nsfw_level != model.nsfw_level:
                # Only a recorded moderator action changes a locked level (node/core/reports.py).
                raise Conflict(f"nsfw_level: a moderator locked model {model_id}'s content level; the owner "
                               "may appeal the moderator's action (`atrium appeal`), moderators change it "
                               "with `atrium moderation action`", code="level_locked")
            changes.apply(model)
            model.updated_at = utcnow()
            if changes.tags is not None:
                await self._set_tags(session, model, normalize_tags(changes.tags))
            session.add(model)
            await self._reindex(session, model)
            await self._journal(session, "model.updated", model)
            await session.commit()
            await session.refresh(model)
        return model

    async def _set_tags(self, session: AsyncSession, model: Model, names: list[str]) -> None:
        await session.exec(delete(ModelTag).where(col(ModelTag.model_id) == model.id))  # type: ignore[call-overload]
        for name in names:
            tag = (await session.exec(select(Tag).where(Tag.name == name))).first()
            if tag is None:
                tag = Tag(name=name)
                session.add(tag)
                await session.flush()
            session.add(ModelTag(model_id=model.id, tag_id=tag.id))
        await session.flush()

    async def _reindex(self, session: AsyncSession, model: Model) -> None:
        """Rebuild the model's search document (name, description, tags, trigger words, creator)."""
        owner = await session.get(User, model.owner_id)
        tags = (await session.exec(select(Tag.name).join(ModelTag, col(ModelTag.tag_id) == col(Tag.id))
                                   .where(ModelTag.model_id == model.id))).all()
        words = (await session.exec(select(ModelVersion.trained_words)
                                    .where(ModelVersion.model_id == model.id))).all()
        parts = [model.name, " ".join(tags), " ".join(w for ws in words for w in (ws or [])),
                 owner.username if owner else "", model.description]
        document = search_document(parts)
        row = await session.get(ModelSearch, model.id)
        if row is None:
            session.add(ModelSearch(model_id=model.id, document=document))
        elif row.document != document:
            row.document = document
            session.add(row)
        await session.flush()

    async def set_status(self, user: User, model_id: int, status: ModelStatus) -> Model:
        """Publish, unpublish or delete a model.

        Publishing needs at least one version with a file; it publishes every version that has one.
        """
        async with self.db.session() as session:
            model = await self._model(session, model_id, user, edit=True)
            now = utcnow()
            if status == ModelStatus.PUBLISHED:
                versions = (await session.exec(select(ModelVersion).where(ModelVersion.model_id == model.id))).all()
                ready = []
                for version in versions:
                    has_file = (await session.exec(select(func.count()).select_from(ModelFile)
                                                   .where(ModelFile.version_id == version.id))).one()
                    if has_file:
                        ready.append(version)
                if not ready:
                    raise Conflict(f"model {model_id} has no version with a file yet; upload a file first")
                for version in ready:
                    if version.status != ModelStatus.PUBLISHED:
                        version.status = ModelStatus.PUBLISHED.value
                        version.published_at = version.published_at or now
                        session.add(version)
                model.published_at = model.published_at or now
            elif status == ModelStatus.DELETED:
                await session.exec(delete(ModelSearch).where(col(ModelSearch.model_id) == model.id))  # type: ignore[call-overload]
            model.status = status.value
            model.updated_at = now
            session.add(model)
            await self._journal(session, STATUS_KINDS[status], model)
            await session.commit()
            await session.refresh(model)
        return model

    async def set_mode(self, user: User, model_id: int, mode: ModelMode | None) -> Model:
        """Archive a model (no more downloads) or take it down (moderators only)."""
        async with self.db.session() as session:
            model = await self._model(session, model_id, user, edit=True)
            if mode == ModelMode.TAKEN_DOWN or model.mode == ModelMode.TAKEN_DOWN:
                if not Role(user.role).includes(Role.MODERATOR):
                    raise Forbidden("only moderators and admins take models down or restore them")
            model.mode = mode.value if mode else None
            model.updated_at = utcnow()
            session.add(model)
            await self._journal(session, MODE_KINDS[mode], model)
            await session.commit()
            await session.refresh(model)
        return model

    # -- versions ----------------------------------------------------------------------------------

    async def create_version(self, user: User, model_id: int, changes: VersionChanges) -> ModelVersion:
        if changes.name is None or changes.base_model is None:
            raise InvalidInput("a version needs a name and a base_model")
        async with self.db.session() as session:
            model = await self._model(session, model_id, user, edit=True)
            version = ModelVersion(model_id=model.id, name="", base_model="")
            changes.apply(version)
            session.add(version)
            await session.flush()
            await self._reindex(session, model)
            await self._journal(session, "model.updated", model)
            await session.commit()
            await session.refresh(version)
        return version

    async def update_version(self, user: User, version_id: int, changes: VersionChanges) -> ModelVersion:
        async with self.db.session() as session:
            version, model = await self._version(session, version_id, user, edit=True)
            changes.apply(version)
            version.updated_at = utcnow()
            session.add(version)
            await self._reindex(session, model)
            await self._journal(session, "model.updated", model)
            await session.commit()
            await session.refresh(version)
        return version

    async def delete_version(self, user: User, version_id: int) -> None:
        async with self.db.session() as session:
            version, model = await self._version(session, version_id, user, edit=True)
            await session.delete(version)
            await session.flush()
            await self._reindex(session, model)
            await self._journal(session, "model.updated", model)
            await session.commit()

    async def visible_model(self, user: User | None, model_id: int) -> Model:
        """A model if `user` may see it (published, or theirs to edit); NotFound otherwise."""
        async with self.db.read_session() as session:
            return await self._model(session, model_id, user)

    async def version_ids(self, model_id: int, *, published_only: bool = True) -> list[int]:
        """The model's version ids, newest first."""
        stmt = select(ModelVersion.id).where(ModelVersion.model_id == model_id)
        if published_only:
            stmt = stmt.where(ModelVersion.status == ModelStatus.PUBLISHED.value)
        async with self.db.read_session() as session:
            return list((await session.exec(stmt.order_by(col(ModelVersion.id).desc()))).all())

    async def visible_version(self, user: User | None, version_id: int) -> tuple[ModelVersion, Model]:
        """A version and its model if `user` may see them; NotFound otherwise."""
        async with self.db.read_session() as session:
            return await self._version(session, version_id, user)

    async def editable_version(self, user: User, version_id: int) -> tuple[ModelVersion, Model]:
        """A version and its model if `user` may change them; NotFound or Forbidden otherwise."""
        async with self.db.read_session() as session:
            return await self._version(session, version_id, user, edit=True)

    # -- community ---------------------------------------------------------------------------------

    async def react_to_model(self, user: User, model_id: int, reaction: str, on: bool = True) -> Model:
        """Add (or with `on=False` remove) a reaction; the model's like/dislike counts follow."""
        kind = parse_enum(ReactionKind, reaction, "reaction")
        async with self.db.session() as session:
            model = await self._model(session, model_id, user)
            delta = await _toggle(session, ModelReaction(model_id=model.id, user_id=user.id, reaction=kind.value),
                                  (model.id, user.id, kind.value), on)
            counter = {ReactionKind.LIKE: "like_count", ReactionKind.HEART: "like_count",
                       ReactionKind.DISLIKE: "dislike_count"}.get(kind)
            if delta and counter:
                await session.exec(update(Model).where(col(Model.id) == model.id)  # type: ignore[call-overload]
                                   .values({counter: getattr(Model, counter) + delta}))
            await session.commit()
            await session.refresh(model)
        return model

    async def react_to_image(self, user: User, image_id: int, reaction: str, on: bool = True) -> Image:
        kind = parse_enum(ReactionKind, reaction, "reaction")
        counter = f"{kind.value.lower()}_count"
        async with self.db.session() as session:
            image = await session.get(Image, image_id)
            if image is None:
                raise NotFound(f"no image {image_id}")
            delta = await _toggle(session, ImageReaction(image_id=image.id, user_id=user.id, reaction=kind.value),
                                  (image.id, user.id, kind.value), on)
            if delta:
                await session.exec(update(Image).where(col(Image.id) == image.id)  # type: ignore[call-overload]
                                   .values({counter: getattr(Image, counter) + delta}))
            await session.commit()
            await session.refresh(image)
        return image

    async def review(self, user: User, version_id: int, *, rating: int, recommended: bool | None = None,
                     text: str = "") -> Review:
        """Create or replace the user's one review of a version; rating stats follow."""
        if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
            raise InvalidInput("rating: a whole number from 1 to 5")
        recommended = rating >= 3 if recommended is None else recommended
        text = check_text(text, "text", maximum=REVIEW_MAX, required=False)
        async with self.db.session() as session:
            version, model = await self._version(session, version_id, user)
            if model.owner_id == user.id:
                raise Forbidden("creators do not review their own models")
            existing = (await session.exec(select(Review).where(Review.version_id == version.id,
                                                                Review.user_id == user.id))).first()
            old_rating, old_up = (existing.rating, existing.recommended) if existing else (0, None)
            if existing is None:
                existing = Review(version_id=version.id, user_id=user.id, rating=rating,
                                  recommended=recommended, text=text)
            else:
                existing.rating, existing.recommended, existing.text = rating, recommended, text
                existing.updated_at = utcnow()
            session.add(existing)
            new = 1 if old_up is None else 0
            up_delta = int(recommended) - (int(old_up) if old_up is not None else 0)
            down_delta = int(not recommended) - (int(not old_up) if old_up is not None else 0)
            await session.exec(update(ModelVersion).where(col(ModelVersion.id) == version.id)  # type: ignore[call-overload]
                               .values(rating_count=ModelVersion.rating_count + new,
                                       rating_sum=ModelVersion.rating_sum + rating - old_rating,
                                       thumbs_up_count=ModelVersion.thumbs_up_count + up_delta,
                                       thumbs_down_count=ModelVersion.thumbs_down_count + down_delta))
            await session.exec(update(Model).where(col(Model.id) == model.id)  # type: ignore[call-overload]
                               .values(rating_count=Model.rating_count + new,
                                       rating_sum=Model.rating_sum + rating - old_rating))
            await session.commit()
            await session.refresh(existing)
        return existing

    async def comment(self, user: User, model_id: int, text: str) -> Comment:
        text = check_text(text, "text", maximum=COMMENT_MAX)
        async with self.db.session() as session:
            model = await self._model(session, model_id, user)
            comment = Comment(model_id=model.id, user_id=user.id, text=text)
            session.add(comment)
            await session.exec(update(Model).where(col(Model.id) == model.id)  # type: ignore[call-overload]
                               .values(comment_count=Model.comment_count + 1))
            await session.commit()
            await session.refresh(comment)
        return comment

    async def comments(self, user: User | None, model_id: int, *, limit: int = 50,
                       before: int | None = None) -> list[tuple[Comment, str]]:
        """A model's comments with their authors' names, newest first; `before` pages by comment id."""
        if not 1 <= limit <= 200:
            raise InvalidInput("limit: must be from 1 to 200")
        async with self.db.read_session() as session:
            await self._model(session, model_id, user)
            stmt = (select(Comment, User.username).join(User, col(User.id) == col(Comment.user_id))
                    .where(Comment.model_id == model_id))
            if before is not None:
                stmt = stmt.where(col(Comment.id) < before)
            rows = (await session.exec(stmt.order_by(col(Comment.id).desc()).limit(limit))).all()
        return [(comment, name) for comment, name in rows]

    async def reviews(self, user: User | None, version_id: int, *, limit: int = 50,
                      before: int | None = None) -> list[tuple[Review, str]]:
        """A version's reviews with their authors' names, newest first."""
        if not 1 <= limit <= 200:
            raise InvalidInput("limit: must be from 1 to 200")
        async with self.db.read_session() as session:
            await self._version(session, version_id, user)
            stmt = (select(Review, User.username).join(User, col(User.id) == col(Review.user_id))
                    .where(Review.version_id == version_id))
            if before is not None:
                stmt = stmt.where(col(Review.id) < before)
            rows = (await session.exec(stmt.order_by(col(Review.id).desc()).limit(limit))).all()
        return [(review, name) for review, name in rows]

    async def count_download(self, version_id: int) -> None:
        """One more download of a version (and its model)."""
        async with self.db.session() as session:
            version = await session.get(ModelVersion, version_id)
            if version is None:
                return
            await session.exec(update(ModelVersion).where(col(ModelVersion.id) == version_id)  # type: ignore[call-overload]
                               .values(download_count=ModelVersion.download_count + 1))
            await session.exec(update(Model).where(col(Model.id) == version.model_id)  # type: ignore[call-overload]
                               .values(download_count=Model.download_count + 1))
            await session.commit()
