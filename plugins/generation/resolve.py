"""Finding what a generation request names, on the node: checkpoint and LoRA versions by AIR, LoRAs by
`<lora:name>` tags, and the init image. Every check a user can fail is an InvalidInput or NotFound that
says what to do; the result is the plain data a job's params hold (files by SHA-256, hashes for the
metadata, the family for loading).

A `<lora:NAME:W>` tag names a published LoRA (model type LORA, LoCon or DoRA) on this node whose primary
file is NAME, NAME.safetensors, or whose model is called NAME, compared without regard to case; when
several match, the request must name the one it means by AIR instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from sqlalchemy import func, or_
from sqlmodel import col, select

from node.core.air import Air
from node.core.catalog import version_air
from node.core.errors import InvalidInput, NotFound
from node.core.tables import Image, Model, ModelFile, ModelVersion, Role, User
from node.core.vocabulary import ModelMode, ModelStatus, NsfwLevel
from plugins.generation.checkpoints import Family, family_for

LORA_TYPES = ("LORA", "LoCon", "DoRA")


@dataclass(frozen=True)
class Resolved:
    """A version chosen for a generation and its primary weights file."""

    air: str
    version: ModelVersion
    model: Model
    file: ModelFile

    @property
    def name(self) -> str:
        """The name A1111 writes for it: the file name without its extension."""
        return PurePath(self.file.name).stem


async def resolve_version(node: Any, user: User, text: str, what: str) -> Resolved:
    """The published (or the user's own) version an AIR names on this node, with its primary file."""
    air = Air.parse(text)
    if air.source != node.name:
        raise NotFound(f"{what}: {air} names a resource on {air.source!r}; this node ({node.name!r}) "
                       "generates with its own catalog")
    if not air.id.isdigit() or (air.version is not None and not air.version.isdigit()):
        raise NotFound(f"{what}: no resource {air} on this node")
    if air.version is None:
        model = await node.catalog.visible_model(user, int(air.id))
        ids = await node.catalog.version_ids(model.id, published_only=not _may_edit(user, model))
        if not ids:
            raise NotFound(f"{what}: model {air.id} has no version to generate with")
        version, model = await node.catalog.visible_version(user, ids[0])
    else:
        version, model = await node.catalog.visible_version(user, int(air.version))
        if model.id != int(air.id):
            raise NotFound(f"{what}: model {air.id} has no version {air.version}")
    if model.mode == ModelMode.TAKEN_DOWN:
        raise NotFound(f"{what}: {air} was taken down by the node's moderators")
    file = await _weights_file(node, version)
    if file is None:
        raise InvalidInput(f"{what}: version {version.id} has no safetensors weights file")
    return Resolved(air=version_air(node.name, model, version), version=version, model=model, file=file)


def _may_edit(user: User, model: Model) -> bool:
    return model.owner_id == user.id or Role(user.role).includes(Role.MODERATOR)


async def _weights_file(node: Any, version: ModelVersion) -> ModelFile | None:
    async with node.db.read_session() as session:
        files = (await session.exec(select(ModelFile).where(ModelFile.version_id == version.id)
                                    .order_by(col(ModelFile.primary).desc(), col(ModelFile.id)))).all()
    return next((f for f in files if f.format == "SafeTensor" and f.type in ("Model", "Pruned Model")), None)


async def resolve_checkpoint(node: Any, user: User, text: str, extra: dict[str, str]) -> tuple[Resolved, Family]:
    """The checkpoint an AIR names and its family; InvalidInput when it is not a checkpoint."""
    found = await resolve_version(node, user, text, "model")
    if found.model.type != "Checkpoint":
        raise InvalidInput(f"model: {found.air} is a {found.model.type}, not a Checkpoint; give LoRAs in "
                           "loras or as <lora:name:weight> in the prompt")
    return found, family_for(found.version.base_model, extra)


async def resolve_lora(node: Any, user: User, text: str, family: Family, extra: dict[str, str],
                       what: str) -> Resolved:
    """A LoRA named by AIR, checked against the checkpoint's family."""
    found = await resolve_version(node, user, text, what)
    check_lora(found, family, extra, what)
    return found


def check_lora(found: Resolved, family: Family, extra: dict[str, str], what: str) -> None:
    if found.model.type not in LORA_TYPES:
        raise InvalidInput(f"{what}: {found.air} is a {found.model.type}, not a LoRA")
    try:
        lora_family = family_for(found.version.base_model, extra)
    except InvalidInput:
        lora_family = None
    if lora_family is None or lora_family.key != family.key:
        raise InvalidInput(f"{what}: {found.air} is a LoRA for {found.version.base_model!r}; the checkpoint is "
                           f"{family.label}, and LoRAs only fit the family they were trained for")


async def resolve_tag(node: Any, user: User, name: str, family: Family, extra: dict[str, str]) -> Resolved:
    """The LoRA a `<lora:name:...>` tag means (see the module docstring)."""
    lowered = name.strip().lower()
    names = {lowered, f"{lowered}.safetensors"}
    stmt = (select(ModelVersion.id).join(Model, col(Model.id) == col(ModelVersion.model_id))
            .join(ModelFile, col(ModelFile.version_id) == col(ModelVersion.id))
            .where(col(Model.type).in_(LORA_TYPES), Model.status == ModelStatus.PUBLISHED.value,
                   ModelVersion.status == ModelStatus.PUBLISHED.value, col(ModelFile.primary).is_(True),
                   or_(func.lower(ModelFile.name).in_(names), func.lower(Model.name) == lowered))
            .distinct())
    async with node.db.read_session() as session:
        ids = sorted((await session.exec(stmt)).all())
    what = f"prompt: <lora:{name}>"
    if not ids:
        raise InvalidInput(f"{what}: no published LoRA on this node has a file or model named {name!r}")
    if len(ids) > 1:
        raise InvalidInput(f"{what}: {len(ids)} LoRAs are named {name!r} (versions "
                           f"{', '.join(map(str, ids[:10]))}); name the one you mean by AIR in loras")
    version, model = await node.catalog.visible_version(user, ids[0])
    file = await _weights_file(node, version)
    if file is None:
        raise InvalidInput(f"{what}: version {version.id} has no safetensors weights file")
    found = Resolved(air=version_air(node.name, model, version), version=version, model=model, file=file)
    check_lora(found, family, extra, what)
    return found


async def resolve_init_image(node: Any, user: User, image_id: int) -> Image:
    """An image of the catalog the user may see, for image-to-image."""
    async with node.db.read_session() as session:
        image = await session.get(Image, image_id)
    if image is None or image.nsfw_level & NsfwLevel.BLOCKED:
        raise NotFound(f"init_image: no image {image_id}")
    if image.version_id is not None and image.owner_id != user.id:
        try:
            _version, model = await node.catalog.visible_version(user, image.version_id)
        except NotFound:
            raise NotFound(f"init_image: no image {image_id}") from None
        if model.mode == ModelMode.TAKEN_DOWN:
            raise NotFound(f"init_image: no image {image_id}")
    return image
