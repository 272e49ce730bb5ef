"""Complete records of models, versions, files and images, loaded in bulk (a handful of queries per
page, whatever its size) for the APIs and pages to render."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlmodel import col, select

from node.core.db import Database
from node.core.tables import (FileHash, Image, ImageResource, Model, ModelFile, ModelTag, ModelVersion, Tag,
                              User)

# How many example images a model listing carries per version.
IMAGES_PER_VERSION = 10


@dataclass
class FileRecord:
    file: ModelFile
    hashes: dict[str, str]  # Civitai hash kind -> uppercase hex


@dataclass
class VersionRecord:
    version: ModelVersion
    files: list[FileRecord] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)


@dataclass
class ModelRecord:
    model: Model
    creator: User
    tags: list[str]
    versions: list[VersionRecord]


async def load_models(db: Database, ids: Sequence[int], *, include_drafts: bool = False,
                      image_levels: int | None = None) -> list[ModelRecord]:
    """Records for the models with these ids, in the order given (missing ids are skipped).

    Only published versions are included unless `include_drafts`. `image_levels` restricts the
    example images to a content-level mask.
    """
    if not ids:
        return []
    async with db.session() as session:
        models = {m.id: m for m in (await session.exec(select(Model).where(col(Model.id).in_(ids)))).all()}
        owners = {u.id: u for u in (await session.exec(
            select(User).where(col(User.id).in_({m.owner_id for m in models.values()})))).all()}
        tags: dict[int, list[str]] = defaultdict(list)
        for model_id, name in (await session.exec(
                select(ModelTag.model_id, Tag.name).join(Tag, col(Tag.id) == col(ModelTag.tag_id))
                .where(col(ModelTag.model_id).in_(ids)).order_by(col(Tag.name)))).all():
            tags[model_id].append(name)
        version_stmt = select(ModelVersion).where(col(ModelVersion.model_id).in_(ids))
        if not include_drafts:
            version_stmt = version_stmt.where(ModelVersion.status == "Published")
        versions = (await session.exec(version_stmt.order_by(col(ModelVersion.id).desc()))).all()
        by_version = await _version_records(session, versions, image_levels)
    records = []
    for model_id in ids:
        model = models.get(model_id)
        if model is None:
            continue
        records.append(ModelRecord(model=model, creator=owners[model.owner_id], tags=tags.get(model_id, []),
                                   versions=[by_version[v.id] for v in versions if v.model_id == model_id]))
    return records


async def load_versions(db: Database, version_ids: Sequence[int], *,
                        image_levels: int | None = None) -> list[tuple[VersionRecord, Model]]:
    """Version records with their models, in the order given."""
    if not version_ids:
        return []
    async with db.session() as session:
        versions = (await session.exec(select(ModelVersion).where(col(ModelVersion.id).in_(version_ids)))).all()
        models = {m.id: m for m in (await session.exec(
            select(Model).where(col(Model.id).in_({v.model_id for v in versions})))).all()}
        by_version = await _version_records(session, versions, image_levels)
    order = {v.id: v for v in versions}
    return [(by_version[vid], models[order[vid].model_id]) for vid in version_ids if vid in order]


async def _version_records(session, versions: Sequence[ModelVersion],  # type: ignore[no-untyped-def]
                           image_levels: int | None) -> dict[int, VersionRecord]:
    records = {v.id: VersionRecord(version=v) for v in versions}
    if not records:
        return records
    files = (await session.exec(select(ModelFile).where(col(ModelFile.version_id).in_(records))
                                .order_by(col(ModelFile.primary).desc(), col(ModelFile.id)))).all()
    hashes: dict[int, dict[str, str]] = defaultdict(dict)
    if files:
        for row in (await session.exec(select(FileHash).where(col(FileHash.file_id).in_([f.id for f in files])))).all():
            hashes[row.file_id][row.kind] = row.value.upper()
    for f in files:
        records[f.version_id].files.append(FileRecord(file=f, hashes=hashes.get(f.id, {})))
    # The first few images of each version, without reading every image of popular versions.
    position = sa.func.row_number().over(partition_by=col(Image.version_id), order_by=col(Image.id)).label("n")
    ranked = select(col(Image.id), position).where(col(Image.version_id).in_(records))
    if image_levels is not None:
        ranked = ranked.where(col(Image.nsfw_level).op("&")(image_levels) != 0)
    ranked_sub = ranked.subquery()
    first_ids = select(ranked_sub.c.id).where(ranked_sub.c.n <= IMAGES_PER_VERSION)
    for image in (await session.exec(select(Image).where(col(Image.id).in_(first_ids)).order_by(col(Image.id)))).all():
        records[image.version_id].images.append(image)
    return records


async def image_resources(db: Database, image_ids: Sequence[int]) -> dict[int, list[ImageResource]]:
    """The resources each image was made with."""
    result: dict[int, list[ImageResource]] = defaultdict(list)
    if not image_ids:
        return result
    async with db.session() as session:
        for row in (await session.exec(select(ImageResource).where(col(ImageResource.image_id).in_(image_ids))
                                       .order_by(col(ImageResource.id)))).all():
            result[row.image_id].append(row)
    return result


@dataclass
class ImageRecord:
    image: Image
    username: str
    base_model: str | None


async def load_images(db: Database, ids: Sequence[int]) -> list[ImageRecord]:
    """Image records (with their owner's name and the version's base model), in the order given."""
    if not ids:
        return []
    async with db.session() as session:
        images = {i.id: i for i in (await session.exec(select(Image).where(col(Image.id).in_(ids)))).all()}
        owners = {u.id: u.username for u in (await session.exec(
            select(User).where(col(User.id).in_({i.owner_id for i in images.values()})))).all()}
        versions = {v.id: v.base_model for v in (await session.exec(
            select(ModelVersion).where(col(ModelVersion.id).in_(
                {i.version_id for i in images.values() if i.version_id is not None})))).all()}
    return [ImageRecord(image=images[i], username=owners.get(images[i].owner_id, "?"),
                        base_model=versions.get(images[i].version_id) if images[i].version_id else None)
            for i in ids if i in images]
