"""Reports, moderator actions and appeals: the moderator queue and everything done from it.

Members report a model, a version, an image or a user (TOS violation, NSFW, an ownership claim by an
artist, spam); reports wait in the moderator queue. Moderators act on a report, or directly on a
target: relabel (set the content level), lock or unlock the level, unpublish, take down, restore, ban,
unban, dismiss. Every action is a `ModAction` row, added in the same transaction as the change it
records and never changed afterwards. The owner affected by an action may appeal it once; a moderator
grants the appeal (the action is reverted, and the revert recorded as an action of its own) or denies it.

Changes the public sees travel to followers as signed log entries: the model's own entry
(`model.updated`, `model.unpublished`, `model.takedown`, ...) through the catalog's journals, and a
`label` entry for each relabel through `label_journals` (federation/log.py appends both).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from node.core.catalog import MODE_KINDS, STATUS_KINDS, Catalog, check_text
from node.core.db import Database
from node.core.errors import Conflict, Forbidden, InvalidInput, NotFound, RateLimited
from node.core.tables import (Appeal, ContentLabel, Image, ModAction, Model, ModelVersion, RemoteModel, Report,
                              Role, User, utcnow)
from node.core.vocabulary import ModelMode, ModelStatus, NsfwLevel, parse_enum

DETAILS_MAX = 5000
EVIDENCE_MAX = 10_000
REASON_MAX = 2000
APPEAL_MAX = 5000
PAGE_MAX = 200
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}$")
TARGET_RE = re.compile(r"^(model|version|image|user|remote):(.{1,160})$")
LEVEL_NAMES = {"pg": NsfwLevel.PG, "pg13": NsfwLevel.PG13, "pg-13": NsfwLevel.PG13, "r": NsfwLevel.R,
               "x": NsfwLevel.X, "xxx": NsfwLevel.XXX}
LEVEL_LABELS = {NsfwLevel.PG: "PG", NsfwLevel.PG13: "PG-13", NsfwLevel.R: "R", NsfwLevel.X: "X",
                NsfwLevel.XXX: "XXX", NsfwLevel.BLOCKED: "Blocked"}


class ReportReason(StrEnum):
    TOS_VIOLATION = "TOSViolation"
    NSFW = "NSFW"
    OWNERSHIP = "Ownership"  # an artist says the resource copies their work
    SPAM = "Spam"


class ReportStatus(StrEnum):
    OPEN = "open"
    ACTIONED = "actioned"
    DISMISSED = "dismissed"


class TargetKind(StrEnum):
    MODEL = "model"
    VERSION = "version"
    IMAGE = "image"
    USER = "user"
    REMOTE = "remote"  # a followed node's model in the mirrored index (relabel only)


class Action(StrEnum):
    RELABEL = "relabel"
    LOCK_LEVEL = "lock_level"
    UNLOCK_LEVEL = "unlock_level"
    UNPUBLISH = "unpublish"
    TAKEDOWN = "takedown"
    RESTORE = "restore"
    BAN = "ban"
    UNBAN = "unban"
    DISMISS = "dismiss"


# Actions that take something from an owner, and so may be appealed.
APPEALABLE = frozenset({Action.RELABEL, Action.LOCK_LEVEL, Action.UNPUBLISH, Action.TAKEDOWN, Action.BAN})
# What each kind of target can have done to it (a version's actions apply to its model).
ACTIONS_FOR = {
    TargetKind.MODEL: frozenset(Action) - {Action.BAN, Action.UNBAN},
    TargetKind.IMAGE: frozenset({Action.RELABEL, Action.LOCK_LEVEL, Action.UNLOCK_LEVEL, Action.TAKEDOWN,
                                 Action.RESTORE, Action.DISMISS}),
    TargetKind.USER: frozenset({Action.BAN, Action.UNBAN, Action.DISMISS}),
    TargetKind.REMOTE: frozenset({Action.RELABEL}),
}

# (session, origin node id, model id, level): a relabel that followers should learn of.
LabelJournal = Callable[[AsyncSession, str, int, int], Awaitable[None]]


def parse_level(value: Any, field_name: str = "level") -> int:
    """A single content level from 1/2/4/8/16 or its name (PG, PG-13, R, X, XXX)."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in LEVEL_NAMES:
            return int(LEVEL_NAMES[key])
        if key.isdigit():
            value = int(key)
    if isinstance(value, int) and not isinstance(value, bool) and value in {int(v) for v in LEVEL_NAMES.values()}:
        return value
    raise InvalidInput(f"{field_name}: must be one of PG, PG-13, R, X, XXX (or 1, 2, 4, 8, 16); got {value!r}")


def level_label(level: int | None) -> str:
    """The name of a single content level ("R"); the number when it is not one."""
    if level is None:
        return "none"
    try:
        return LEVEL_LABELS.get(NsfwLevel(level), str(level))
    except ValueError:
        return str(level)


@dataclass(frozen=True)
class Target:
    """What a report or an action is about: `kind:id`, `user:NAME` or `remote:ORIGIN:ID`."""

    kind: TargetKind
    id: int
    origin: str | None = None  # remote targets: the origin's node id or name

    def __str__(self) -> str:
        if self.kind == TargetKind.REMOTE:
            return f"remote:{self.origin}:{self.id}"
        return f"{self.kind.value}:{self.id}"


def parse_target(text: Any) -> tuple[TargetKind, str]:
    """`model:12` into (kind, "12"); InvalidInput naming the accepted forms otherwise."""
    if isinstance(text, str):
        found = TARGET_RE.match(text.strip())
        if found:
            return TargetKind(found.group(1)), found.group(2)
    raise InvalidInput(f"target: expected model:ID, version:ID, image:ID, user:NAME-or-ID or "
                       f"remote:ORIGIN:ID; got {text!r}")


@dataclass
class Page:
    """A page of rows and the cursor of the next one (None at the end)."""

    items: list[Any]
    next_cursor: int | None


@dataclass
class Reports:
    """Reports, actions and appeals on one database."""

    db: Database
    catalog: Catalog
    node_id: str
    reports_per_hour: int = 20
    label_journals: list[LabelJournal] = field(default_factory=list)

    # -- targets -----------------------------------------------------------------------------------

    async def _resolve(self, session: AsyncSession, text: Any) -> Target:
        kind, rest = parse_target(text)
        if kind == TargetKind.REMOTE:
            origin, _, number = rest.rpartition(":")
            if not origin or not number.isdigit() or len(number) > 18:
                raise InvalidInput(f"target: a remote model is remote:ORIGIN:ID; got {text!r}")
            row = (await session.exec(select(RemoteModel).where(
                sa.or_(RemoteModel.origin == origin, RemoteModel.origin_name == origin),
                RemoteModel.remote_id == int(number)))).first()
            if row is None:
                raise NotFound(f"no model {number} of a followed node {origin!r} in the mirrored index")
            return Target(kind, row.remote_id, row.origin)
        if kind == TargetKind.USER and not rest.isdigit():
            user = (await session.exec(select(User).where(User.username_key == rest.lower()))).first()
            if user is None:
                raise NotFound(f"no user named {rest!r}")
            return Target(kind, user.id)  # type: ignore[arg-type]
        if not rest.isdigit() or len(rest) > 18:
            raise InvalidInput(f"target: {kind.value}:ID needs a positive whole number; got {text!r}")
        return Target(kind, int(rest))

    async def _owner_of(self, session: AsyncSession, target: Target, viewer: User | None = None) -> int | None:
        """The user a target belongs to (NotFound when it does not exist or `viewer` may not see it)."""
        if target.kind in (TargetKind.MODEL, TargetKind.VERSION):
            model = await self._model_for(session, target)
            visible = model.status == ModelStatus.PUBLISHED or viewer is None or model.owner_id == viewer.id
            if not visible:
                raise NotFound(f"no {target.kind.value} {target.id}")
            return model.owner_id
        if target.kind == TargetKind.IMAGE:
            image = await session.get(Image, target.id)
            if image is None or (viewer is not None and image.nsfw_level & NsfwLevel.BLOCKED
                                 and image.owner_id != viewer.id):
                raise NotFound(f"no image {target.id}")
            return image.owner_id
        if target.kind == TargetKind.USER:
            user = await session.get(User, target.id)
            if user is None:
                raise NotFound(f"no user {target.id}")
            return user.id
        return None

    async def _model_for(self, session: AsyncSession, target: Target) -> Model:
        model_id = target.id
        if target.kind == TargetKind.VERSION:
            version = await session.get(ModelVersion, target.id)
            if version is None:
                raise NotFound(f"no version {target.id}")
            model_id = version.model_id
        model = await session.get(Model, model_id)
        if model is None or model.status == ModelStatus.DELETED:
            raise NotFound(f"no {target.kind.value} {target.id}")
        return model

    # -- reports -----------------------------------------------------------------------------------

    async def report(self, user: User, target: str, reason: str, *, details: str = "",
                     claimant_name: str | None = None, claimant_email: str | None = None,
                     evidence: str | None = None) -> Report:
        """File a report; one open report per reporter and target, at most `reports_per_hour` an hour."""
        kind = parse_enum(ReportReason, reason, "reason")
        details = check_text(details, "details", maximum=DETAILS_MAX, required=False)
        if kind == ReportReason.OWNERSHIP:
            claimant_name = check_text(claimant_name if claimant_name is not None else "", "claimant_name",
                                       maximum=255)
            if not isinstance(claimant_email, str) or not EMAIL_RE.match(claimant_email.strip()):
                raise InvalidInput("claimant_email: an ownership claim needs an email address to reach the artist")
            claimant_email = claimant_email.strip()
            evidence = check_text(evidence if evidence is not None else "", "evidence", maximum=EVIDENCE_MAX)
        elif claimant_name or claimant_email or evidence:
            raise InvalidInput("claimant_name, claimant_email and evidence belong to Ownership reports only")
        async with self.db.session() as session:
            resolved = await self._resolve(session, target)
            if resolved.kind == TargetKind.REMOTE:
                raise InvalidInput("target: report a followed node's model to that node; here, moderators "
                                   "may relabel it")
            owner = await self._owner_of(session, resolved, user)
            if owner == user.id:
                raise InvalidInput(f"target: {resolved} is yours; you cannot report it")
            since = utcnow() - timedelta(hours=1)
            recent = (await session.exec(select(sa.func.count()).select_from(Report).where(
                Report.reporter_id == user.id, col(Report.created_at) >= since))).one()
            if recent >= self.reports_per_hour:
                raise RateLimited(f"at most {self.reports_per_hour} reports an hour; try again later",
                                  retry_after=600)
            report = Report(reporter_id=user.id, target_kind=resolved.kind.value, target_id=resolved.id,
                            reason=kind.value, details=details, claimant_name=claimant_name,
                            claimant_email=claimant_email, evidence=evidence,
                            open_key=f"{user.id}:{resolved}")
            session.add(report)
            try:
                await session.commit()
            except IntegrityError:
                raise Conflict(f"you already have an open report on {resolved}; a moderator will look at it") from None
            await session.refresh(report)
        return report

    async def queue(self, *, status: str | None = "open", reason: str | None = None, kind: str | None = None,
                    after: int | None = None, limit: int = 50) -> Page:
        """Reports oldest first (a queue); `after` is the previous page's cursor. Moderators only (the
        caller checks the role)."""
        _check_limit(limit)
        stmt = select(Report)
        if status:
            stmt = stmt.where(Report.status == parse_enum(ReportStatus, status, "status").value)
        if reason:
            stmt = stmt.where(Report.reason == parse_enum(ReportReason, reason, "reason").value)
        if kind:
            stmt = stmt.where(Report.target_kind == parse_enum(TargetKind, kind, "kind").value)
        if after is not None:
            stmt = stmt.where(col(Report.id) > after)
        async with self.db.read_session() as session:
            rows = list((await session.exec(stmt.order_by(col(Report.id)).limit(limit + 1))).all())
        return Page(rows[:limit], rows[limit - 1].id if len(rows) > limit else None)

    async def get_report(self, report_id: int) -> Report:
        async with self.db.read_session() as session:
            report = await session.get(Report, report_id)
        if report is None:
            raise NotFound(f"no report {report_id}")
        return report

    # -- actions -----------------------------------------------------------------------------------

    async def act_on_report(self, moderator: User, report_id: int, action: str, *, level: Any = None,
                            reason: str = "") -> ModAction:
        """Act on a report's target; every open report on that target is resolved with it."""
        async with self.db.read_session() as session:
            report = await session.get(Report, report_id)
        if report is None:
            raise NotFound(f"no report {report_id}")
        if report.status != ReportStatus.OPEN:
            raise Conflict(f"report {report_id} is already {report.status}")
        return await self.act(moderator, f"{report.target_kind}:{report.target_id}", action, level=level,
                              reason=reason, from_report=report_id)

    async def act(self, moderator: User, target: str, action: str, *, level: Any = None, reason: str = "",
                  from_report: int | None = None) -> ModAction:
        """Do one moderator action and record it (same transaction); returns the recorded action."""
        _require(moderator, Role.MODERATOR)
        what = Action(parse_enum(Action, action, "action"))
        reason = check_text(reason, "reason", maximum=REASON_MAX, required=False)
        if what in (Action.RELABEL,) and level is None:
            raise InvalidInput("level: relabel needs the new level (PG, PG-13, R, X or XXX)")
        new_level = parse_level(level) if level is not None else None
        if new_level is not None and what not in (Action.RELABEL, Action.LOCK_LEVEL):
            raise InvalidInput(f"level: only relabel and lock_level take a level, not {what.value}")
        async with self.db.session() as session:
            resolved = await self._resolve(session, target)
            reports = await self._open_reports(session, resolved)
            if from_report is not None and from_report not in [r.id for r in reports]:
                raise Conflict(f"report {from_report} is no longer open")
            if what == Action.DISMISS:
                if not reports:
                    raise Conflict(f"no open report on {resolved} to dismiss")
                previous: dict[str, Any] = {}
                recorded = resolved
            else:
                allowed = ACTIONS_FOR[TargetKind.MODEL if resolved.kind == TargetKind.VERSION else resolved.kind]
                if what not in allowed:
                    raise InvalidInput(f"action: {what.value} does not apply to {resolved.kind.value} targets "
                                       f"(use one of {', '.join(sorted(a.value for a in allowed))})")
                previous, recorded = await self._apply(session, moderator, resolved, what, new_level)
            record = ModAction(moderator_id=moderator.id, target_kind=recorded.kind.value, target_id=recorded.id,
                               target_origin=recorded.origin, action=what.value, level=new_level, reason=reason,
                               report_ids=[r.id for r in reports], previous=previous)
            session.add(record)
            done = ReportStatus.DISMISSED if what == Action.DISMISS else ReportStatus.ACTIONED
            for report in reports:
                report.status, report.open_key, report.resolved_at = done.value, None, utcnow()
                session.add(report)
            await session.commit()
            await session.refresh(record)
        return record

    async def _open_reports(self, session: AsyncSession, target: Target) -> list[Report]:
        kinds = [target.kind.value]
        ids = [target.id]
        if target.kind in (TargetKind.MODEL, TargetKind.VERSION):
            # Reports on a model and on its versions are one matter.
            model = await self._model_for(session, target)
            versions = (await session.exec(select(ModelVersion.id).where(ModelVersion.model_id == model.id))).all()
            conditions = [sa.and_(Report.target_kind == "model", Report.target_id == model.id)]
            if versions:
                conditions.append(sa.and_(Report.target_kind == "version", col(Report.target_id).in_(list(versions))))
            where: Any = sa.or_(*conditions)
        else:
            where = sa.and_(col(Report.target_kind).in_(kinds), col(Report.target_id).in_(ids))
        return list((await session.exec(select(Report).where(where, Report.status == ReportStatus.OPEN.value)
                                        .order_by(col(Report.id)))).all())

    async def _apply(self, session: AsyncSession, moderator: User, target: Target, what: Action,
                     level: int | None) -> tuple[dict[str, Any], Target]:
        """Change the target; returns its state before (for appeals) and the target as recorded."""
        if target.kind == TargetKind.REMOTE:
            return await self._label_remote(session, target, level), target  # type: ignore[arg-type]
        if target.kind == TargetKind.USER:
            return await self._ban(session, moderator, target, what == Action.BAN), target
        if target.kind == TargetKind.IMAGE:
            image = await session.get(Image, target.id)
            if image is None:
                raise NotFound(f"no image {target.id}")
            previous = {"level": image.nsfw_level, "locked": image.level_locked}
            if what == Action.TAKEDOWN:
                image.nsfw_level = int(NsfwLevel.BLOCKED)  # never shown, never served (files, pages)
            elif what == Action.RESTORE:
                if not image.nsfw_level & NsfwLevel.BLOCKED:
                    raise Conflict(f"image {image.id} is not taken down; nothing to restore")
                last = await self._last_takedown(session, target)
                image.nsfw_level = last if last is not None else NsfwLevel.PG
            else:
                self._relevel(image, what, level)
            session.add(image)
            return previous, target
        model = await self._model_for(session, target)
        recorded = Target(TargetKind.MODEL, model.id)  # type: ignore[arg-type]
        previous = {"level": model.nsfw_level, "locked": model.level_locked, "status": model.status,
                    "mode": model.mode}
        await self._change_model(session, model, what, level, restore_from=recorded)
        return previous, recorded

    def _relevel(self, row: Model | Image, what: Action, level: int | None) -> None:
        if what == Action.RELABEL:
            row.nsfw_level = level  # type: ignore[assignment]
        elif what == Action.LOCK_LEVEL:
            if level is not None:
                row.nsfw_level = level
            row.level_locked = True
        elif what == Action.UNLOCK_LEVEL:
            row.level_locked = False

    async def _change_model(self, session: AsyncSession, model: Model, what: Action, level: int | None,
                            restore_from: Target | None = None) -> None:
        before = model.nsfw_level
        kind = "model.updated"
        if what in (Action.RELABEL, Action.LOCK_LEVEL, Action.UNLOCK_LEVEL):
            self._relevel(model, what, level)
        elif what == Action.UNPUBLISH:
            if model.status != ModelStatus.PUBLISHED:
                raise Conflict(f"model {model.id} is not published (it is {model.status})")
            model.status, kind = ModelStatus.UNPUBLISHED.value, STATUS_KINDS[ModelStatus.UNPUBLISHED]
        elif what == Action.TAKEDOWN:
            if model.mode == ModelMode.TAKEN_DOWN:
                raise Conflict(f"model {model.id} is already taken down")
            model.mode, kind = ModelMode.TAKEN_DOWN.value, MODE_KINDS[ModelMode.TAKEN_DOWN]
        elif what == Action.RESTORE:
            if model.mode == ModelMode.TAKEN_DOWN:
                model.mode, kind = None, MODE_KINDS[None]
            elif model.status == ModelStatus.UNPUBLISHED and model.published_at is not None:
                # Only what a moderator unpublished: an owner's own unpublishing is theirs to undo.
                if await self._last_status_action(session, model.id) != Action.UNPUBLISH:  # type: ignore[arg-type]
                    raise Conflict(f"model {model.id} was not unpublished by a moderator's unpublish action: "
                                   "its owner unpublished it (theirs to publish again) or a ban did (unban)")
                model.status, kind = ModelStatus.PUBLISHED.value, STATUS_KINDS[ModelStatus.PUBLISHED]
            else:
                raise Conflict(f"model {model.id} is neither taken down nor unpublished; nothing to restore")
        model.updated_at = utcnow()
        session.add(model)
        await self.catalog.journal(session, kind, model)
        if model.nsfw_level != before and model.published_at is not None:
            for journal in self.label_journals:
                await journal(session, self.node_id, model.id, model.nsfw_level)  # type: ignore[arg-type]

    async def _last_status_action(self, session: AsyncSession, model_id: int) -> str | None:
        """The latest unpublish or restore recorded on a model (None when there is none)."""
        return (await session.exec(select(ModAction.action).where(
            ModAction.target_kind == TargetKind.MODEL.value, ModAction.target_id == model_id,
            col(ModAction.action).in_([Action.UNPUBLISH.value, Action.RESTORE.value]))
            .order_by(col(ModAction.id).desc()))).first()

    async def _last_takedown(self, session: AsyncSession, target: Target) -> int | None:
        row = (await session.exec(select(ModAction).where(
            ModAction.target_kind == target.kind.value, ModAction.target_id == target.id,
            ModAction.action == Action.TAKEDOWN.value).order_by(col(ModAction.id).desc()))).first()
        return (row.previous or {}).get("level") if row else None

    async def _ban(self, session: AsyncSession, moderator: User, target: Target, ban: bool) -> dict[str, Any]:
        user = await session.get(User, target.id)
        if user is None:
            raise NotFound(f"no user {target.id}")
        if user.id == moderator.id:
            raise InvalidInput("you cannot ban yourself")
        if ban and Role(user.role).includes(Role.MODERATOR) and not Role(moderator.role).includes(Role.ADMIN):
            raise Forbidden(f"{user.username} is a {user.role}; only admins ban moderators")
        if ban and user.role == Role.ADMIN:
            raise Forbidden(f"{user.username} is an admin; change their role with `atrium users` first")
        previous: dict[str, Any] = {"disabled": user.disabled, "unpublished_models": []}
        if ban:
            if user.disabled:
                raise Conflict(f"{user.username} is already banned")
            # A banned user's published models leave the catalog (and the followers' mirrors) with them;
            # the ban's record lists them, so unban and a granted appeal publish exactly those again.
            models = (await session.exec(select(Model).where(Model.owner_id == user.id,
                                                              Model.status == ModelStatus.PUBLISHED.value)
                                         .order_by(col(Model.id)))).all()
            for model in models:
                await self._change_model(session, model, Action.UNPUBLISH, None)
                previous["unpublished_models"].append(model.id)
            user.disabled = True
        else:
            if not user.disabled:
                raise Conflict(f"{user.username} is not banned")
            user.disabled = False
            await self._republish(session, await self._last_ban_models(session, user.id))  # type: ignore[arg-type]
        session.add(user)
        return previous

    async def _last_ban_models(self, session: AsyncSession, user_id: int) -> list[int]:
        row = (await session.exec(select(ModAction).where(
            ModAction.target_kind == TargetKind.USER.value, ModAction.target_id == user_id,
            ModAction.action == Action.BAN.value).order_by(col(ModAction.id).desc()))).first()
        return list((row.previous or {}).get("unpublished_models") or []) if row else []

    async def _republish(self, session: AsyncSession, model_ids: Sequence[int]) -> None:
        for model_id in model_ids:
            model = await session.get(Model, model_id)
            if model is not None and model.status == ModelStatus.UNPUBLISHED:
                model.status = ModelStatus.PUBLISHED.value
                model.updated_at = utcnow()
                session.add(model)
                await self.catalog.journal(session, STATUS_KINDS[ModelStatus.PUBLISHED], model)

    async def _label_remote(self, session: AsyncSession, target: Target, level: int) -> dict[str, Any]:
        row = (await session.exec(select(RemoteModel).where(RemoteModel.origin == target.origin,
                                                             RemoteModel.remote_id == target.id))).one()
        previous = {"level": row.nsfw_level}
        row.nsfw_level = level
        session.add(row)
        label = await session.get(ContentLabel, (self.node_id, target.origin, target.id))
        if label is None:
            label = ContentLabel(labeler=self.node_id, origin=target.origin, model_id=target.id, level=level)  # type: ignore[arg-type]
        label.level, label.created_at = level, utcnow()
        session.add(label)
        for journal in self.label_journals:
            await journal(session, target.origin, target.id, level)  # type: ignore[arg-type]
        return previous

    async def actions(self, *, target: str | None = None, before: int | None = None, limit: int = 50) -> Page:
        """Recorded actions, newest first; `before` is the previous page's cursor."""
        _check_limit(limit)
        stmt = select(ModAction)
        if target is not None:
            async with self.db.read_session() as session:
                resolved = await self._resolve(session, target)
            stmt = stmt.where(ModAction.target_kind == resolved.kind.value, ModAction.target_id == resolved.id)
            if resolved.origin is not None:
                stmt = stmt.where(ModAction.target_origin == resolved.origin)
        if before is not None:
            stmt = stmt.where(col(ModAction.id) < before)
        async with self.db.read_session() as session:
            rows = list((await session.exec(stmt.order_by(col(ModAction.id).desc()).limit(limit + 1))).all())
        return Page(rows[:limit], rows[limit - 1].id if len(rows) > limit else None)

    async def actions_against(self, user: User, *, limit: int = 50) -> list[ModAction]:
        """Appealable actions on `user`, their models or their images, newest first."""
        _check_limit(limit)
        models = select(Model.id).where(Model.owner_id == user.id)
        images = select(Image.id).where(Image.owner_id == user.id)
        stmt = select(ModAction).where(col(ModAction.action).in_([a.value for a in APPEALABLE]), sa.or_(
            sa.and_(ModAction.target_kind == "model", col(ModAction.target_id).in_(models)),
            sa.and_(ModAction.target_kind == "image", col(ModAction.target_id).in_(images)),
            sa.and_(ModAction.target_kind == "user", ModAction.target_id == user.id)))
        async with self.db.read_session() as session:
            return list((await session.exec(stmt.order_by(col(ModAction.id).desc()).limit(limit))).all())

    # -- appeals -----------------------------------------------------------------------------------

    async def appeal(self, user: User, action_id: int, text: str) -> Appeal:
        """The affected owner appeals an action, once."""
        text = check_text(text, "text", maximum=APPEAL_MAX)
        async with self.db.session() as session:
            action = await session.get(ModAction, action_id)
            if action is None:
                raise NotFound(f"no moderator action {action_id}")
            owner = await self._owner_of(session, Target(TargetKind(action.target_kind), action.target_id)) \
                if action.target_kind in ("model", "image", "user") else None
            if owner != user.id:
                raise Forbidden(f"action {action_id} is not about you or your work; only the owner may appeal it")
            if user.disabled and not (action.target_kind == TargetKind.USER and action.action == Action.BAN):
                raise Forbidden("a banned account may appeal its ban, nothing else")
            if action.action not in APPEALABLE:
                raise InvalidInput(f"action {action_id} ({action.action}) cannot be appealed; appeal "
                                   f"{', '.join(sorted(a.value for a in APPEALABLE))} actions")
            appeal = Appeal(action_id=action_id, appellant_id=user.id, text=text)
            session.add(appeal)
            try:
                await session.commit()
            except IntegrityError:
                raise Conflict(f"action {action_id} has already been appealed") from None
            await session.refresh(appeal)
        return appeal

    async def appeals(self, *, status: str | None = "open", appellant: User | None = None,
                      after: int | None = None, limit: int = 50) -> Page:
        """Appeals oldest first (moderators), or one appellant's own."""
        _check_limit(limit)
        stmt = select(Appeal)
        if status:
            if status not in ("open", "granted", "denied"):
                raise InvalidInput(f"status: use one of open, granted, denied; got {status!r}")
            stmt = stmt.where(Appeal.status == status)
        if appellant is not None:
            stmt = stmt.where(Appeal.appellant_id == appellant.id)
        if after is not None:
            stmt = stmt.where(col(Appeal.id) > after)
        async with self.db.read_session() as session:
            rows = list((await session.exec(stmt.order_by(col(Appeal.id)).limit(limit + 1))).all())
        return Page(rows[:limit], rows[limit - 1].id if len(rows) > limit else None)

    async def decide(self, moderator: User, appeal_id: int, *, grant: bool, reason: str = "") -> Appeal:
        """Grant (revert the action, recorded as an action of its own) or deny an open appeal."""
        _require(moderator, Role.MODERATOR)
        reason = check_text(reason, "reason", maximum=REASON_MAX, required=False)
        async with self.db.session() as session:
            appeal = await session.get(Appeal, appeal_id)
            if appeal is None:
                raise NotFound(f"no appeal {appeal_id}")
            if appeal.status != "open":
                raise Conflict(f"appeal {appeal_id} was already {appeal.status}")
            action = await session.get(ModAction, appeal.action_id)
            assert action is not None  # the foreign key cascades
            if grant:
                session.add(await self._revert(session, moderator, action, appeal_id, reason))
            appeal.status = "granted" if grant else "denied"
            appeal.decided_by, appeal.decision, appeal.decided_at = moderator.id, reason, utcnow()
            session.add(appeal)
            await session.commit()
            await session.refresh(appeal)
        return appeal

    async def _revert(self, session: AsyncSession, moderator: User, action: ModAction, appeal_id: int,
                      reason: str) -> ModAction:
        before = action.previous or {}
        target = Target(TargetKind(action.target_kind), action.target_id)
        what = Action(action.action)
        undo = {Action.BAN: Action.UNBAN, Action.UNPUBLISH: Action.RESTORE, Action.TAKEDOWN: Action.RESTORE,
                Action.RELABEL: Action.RELABEL, Action.LOCK_LEVEL: Action.RELABEL}[what]
        level = None
        if what == Action.BAN:
            user = await session.get(User, target.id)
            if user is not None and user.disabled:
                user.disabled = bool(before.get("disabled"))
                session.add(user)
                await self._republish(session, before.get("unpublished_models") or [])
        elif target.kind == TargetKind.IMAGE:
            image = await session.get(Image, target.id)
            if image is None:
                raise NotFound(f"image {target.id} no longer exists")
            image.nsfw_level, image.level_locked = before.get("level", image.nsfw_level), bool(before.get("locked"))
            level = image.nsfw_level
            session.add(image)
        else:
            model = await session.get(Model, target.id)
            if model is None or model.status == ModelStatus.DELETED:
                raise NotFound(f"model {target.id} no longer exists")
            if what in (Action.RELABEL, Action.LOCK_LEVEL):
                level = before.get("level", model.nsfw_level)
                await self._change_model(session, model, Action.RELABEL, level)
                model.level_locked = bool(before.get("locked"))
            elif what == Action.TAKEDOWN and model.mode == ModelMode.TAKEN_DOWN:
                await self._change_model(session, model, Action.RESTORE, None)
            elif what == Action.UNPUBLISH and model.status == ModelStatus.UNPUBLISHED:
                await self._change_model(session, model, Action.RESTORE, None)
        return ModAction(moderator_id=moderator.id, target_kind=target.kind.value, target_id=target.id,
                         action=undo.value, level=level, reason=f"appeal {appeal_id} granted" +
                         (f": {reason}" if reason else ""), previous={"reverts": action.id}, appeal_id=appeal_id)


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= PAGE_MAX:
        raise InvalidInput(f"limit: must be from 1 to {PAGE_MAX}")


def _require(user: User, role: Role) -> None:
    if not Role(user.role).includes(role):
        raise Forbidden(f"this needs the {role.value} role; you are {user.role}")
