"""Bounties: a community pays into a bounty's escrow for the model, LoRA, data set or image it wants.

Every movement of currency is a ledger transaction (node/core/ledger.py), so a bounty's escrow balance is
always its outstanding pool: the shares of benefactors that have been neither awarded nor refunded.

Rules (docs/bounties.md):
- creating a bounty moves its starting amount from the creator into the escrow (the creator is the first
  benefactor); other users add to the pool while it is open and not expired;
- entries (an image and/or a model version of the entrant's) are accepted until expiry; in mode
  `benefactors` only benefactors may enter; each user has at most `entry_limit` entries;
- each benefactor awards its whole share, once, to one entry of somebody else's, until the bounty closes;
- at expiry, a bounty with no entries refunds every benefactor; after expiry plus the grace period the
  unawarded shares go to the top entry by reactions (mode `single`) or are split among the entries in
  proportion to their reactions (mode `split`). Nothing is refunded once there are entries.
Each step runs in one database transaction that locks the bounty's row first, so that contributions,
awards and the closing job serialise per bounty; closing is guarded by the bounty's state and by
idempotency keys, so running it twice changes nothing.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from node.core.bounty_tables import Bounty, BountyBenefactor, BountyEntry
from node.core.catalog import check_nsfw_level, normalize_tags
from node.core.config import key
from node.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from node.core.ledger import SYSTEM, Actor, Ledger, Receipt, TxType, check_amount, check_idempotency_key, fingerprint
from node.core.ledger_tables import LedgerAccount
from node.core.tables import Image, Model, ModelFile, ModelVersion, User, utcnow

BOUNTY_TYPES = ("ModelCreation", "LoraCreation", "EmbedCreation", "DataSetCreation", "DataSetCaption",
                "ImageCreation", "Other")
ENTRY_MODES = ("open", "benefactors")
AWARD_MODES = ("single", "split")
NAME_MAX = 255
DESCRIPTION_MAX = 20_000
NOTE_MAX = 1000
REFERENCE_IMAGES_MAX = 20
ENTRY_LIMIT_MAX = 100
LIST_MAX = 100
ESCROW_PREFIX = "escrow:bounty:"


@dataclass
class BountySettings:
    """The `[plugins.bounties]` table."""

    grace_days: int = key(3, "Days after a bounty expires during which benefactors may still award their "
                          "shares; then the unawarded pool goes to the top entry by reactions.",
                          minimum=0, maximum=365)
    min_amount: int = key(1, "Smallest starting amount of a bounty and smallest contribution.", minimum=1)
    max_days: int = key(365, "Longest time from a bounty's creation to its expiry, in days.", minimum=1,
                        maximum=3650)
    expiry_check_seconds: int = key(300, "How often the node closes bounties that are due (expired without "
                                    "entries, or past their grace period), in seconds.", minimum=1,
                                    maximum=86400)


@dataclass(frozen=True)
class NewBounty:
    """What a creator asks for; `check` validates every field."""

    name: str
    amount: int
    expires_at: datetime
    description: str = ""
    type: str = "Other"
    entry_mode: str = "open"
    entry_limit: int = 1
    award_mode: str = "single"
    tags: tuple[str, ...] = ()
    nsfw_level: int = 1
    reference_image_ids: tuple[int, ...] = ()


def _choice(value: Any, choices: Iterable[str], field: str) -> str:
    for choice in choices:
        if isinstance(value, str) and value.strip().lower() == choice.lower():
            return choice
    raise InvalidInput(f"{field}: unknown value {value!r}; use one of: {', '.join(choices)}")


def split_by_weight(total: int, weights: list[tuple[int, int]]) -> dict[int, int]:
    """Divide `total` among (id, weight) pairs in proportion to weight, in whole units (largest remainder;
    ties go to the lower id). All weights zero: equal parts. The parts always sum to `total`."""
    if not weights:
        return {}
    if sum(w for _, w in weights) == 0:
        weights = [(i, 1) for i, _ in weights]
    whole = sum(w for _, w in weights)
    parts = {i: total * w // whole for i, w in weights}
    left = total - sum(parts.values())
    by_remainder = sorted(weights, key=lambda iw: (-(total * iw[1] % whole), iw[0]))
    for i, _ in by_remainder[:left]:
        parts[i] += 1
    return {i: p for i, p in parts.items() if p}


class Bounties:
    """Bounty operations on the node's database and ledger."""

    def __init__(self, ledger: Ledger, settings: BountySettings) -> None:
        self.ledger = ledger
        self.db = ledger.db
        self.settings = settings

    # -- validation ----------------------------------------------------------------------------

    def check(self, spec: NewBounty, now: datetime) -> NewBounty:
        """The spec with its values normalised; InvalidInput naming the first field that is wrong."""
        if not isinstance(spec.name, str) or not spec.name.strip() or len(spec.name) > NAME_MAX:
            raise InvalidInput(f"name must be 1-{NAME_MAX} characters")
        if not isinstance(spec.description, str) or len(spec.description) > DESCRIPTION_MAX:
            raise InvalidInput(f"description must be at most {DESCRIPTION_MAX} characters")
        amount = check_amount(spec.amount, self.ledger.settings.max_amount)
        if amount < self.settings.min_amount:
            raise InvalidInput(f"amount must be at least {self.settings.min_amount} on this node")
        if not isinstance(spec.expires_at, datetime) or spec.expires_at.tzinfo is None:
            raise InvalidInput("expires must be a date (YYYY-MM-DD) or a time with a zone")
        if spec.expires_at <= now:
            raise InvalidInput("expires must be in the future")
        if spec.expires_at > now + timedelta(days=self.settings.max_days):
            raise InvalidInput(f"expires must be within {self.settings.max_days} days")
        limit = spec.entry_limit
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= ENTRY_LIMIT_MAX:
            raise InvalidInput(f"entry_limit must be 1-{ENTRY_LIMIT_MAX}")
        refs = spec.reference_image_ids
        if len(refs) > REFERENCE_IMAGES_MAX or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0
                                                       for i in refs):
            raise InvalidInput(f"reference_image_ids must be at most {REFERENCE_IMAGES_MAX} image ids")
        return NewBounty(name=spec.name.strip(), amount=amount, expires_at=spec.expires_at,
                         description=spec.description, type=_choice(spec.type, BOUNTY_TYPES, "type"),
                         entry_mode=_choice(spec.entry_mode, ENTRY_MODES, "entry_mode"), entry_limit=limit,
                         award_mode=_choice(spec.award_mode, AWARD_MODES, "award_mode"),
                         tags=tuple(normalize_tags(spec.tags)), nsfw_level=check_nsfw_level(spec.nsfw_level),
                         reference_image_ids=tuple(dict.fromkeys(refs)))

    # -- operations ----------------------------------------------------------------------------

    async def _locked(self, session: AsyncSession, bounty_id: int) -> Bounty:
        # FOR UPDATE on PostgreSQL (SQLite's BEGIN IMMEDIATE already holds the one write lock).
        bounty = (await session.exec(select(Bounty).where(Bounty.id == bounty_id).with_for_update())).first()
        if bounty is None:
            raise NotFound(f"no bounty {bounty_id}")
        return bounty

    async def create(self, user: User, spec: NewBounty, *, idempotency_key: str | None = None,
                     now: datetime | None = None) -> tuple[Bounty, Receipt]:
        """Open a bounty; its amount moves from `user` into a new escrow account."""
        now = now or utcnow()
        spec = self.check(spec, now)
        idempotency_key = check_idempotency_key(idempotency_key)
        actor = Actor.of(user)
        fp = fingerprint("bounty.create", spec.name, spec.amount, spec.expires_at.isoformat(), spec.description,
                         spec.type, spec.entry_mode, spec.entry_limit, spec.award_mode, spec.tags, spec.nsfw_level,
                         spec.reference_image_ids)

        async def work(session: AsyncSession) -> tuple[Bounty, Receipt]:
            replay = await self.ledger.find(session, actor, idempotency_key, fp)
            if replay is not None:
                bounty = await session.get(Bounty, int(replay.transaction.subject.split(":")[1]))  # type: ignore[union-attr]
                return bounty, replay  # type: ignore[return-value]
            for image_id in spec.reference_image_ids:
                image = await session.get(Image, image_id)
                if image is None or image.owner_id != user.id:
                    raise InvalidInput(f"reference image {image_id} is not an image of yours")
            payer = await self.ledger.user_account(session, user.id)  # type: ignore[arg-type]
            # The escrow's key names the bounty, whose id is known only after the insert.
            escrow = await self.ledger.system_account(session, f"escrow:new:{secrets.token_hex(8)}", "escrow")
            bounty = Bounty(creator_id=user.id, name=spec.name, description=spec.description, type=spec.type,  # type: ignore[arg-type]
                            nsfw_level=spec.nsfw_level, tags=list(spec.tags),
                            reference_image_ids=list(spec.reference_image_ids), entry_mode=spec.entry_mode,
                            entry_limit=spec.entry_limit, award_mode=spec.award_mode, escrow_account_id=escrow,
                            starts_at=now, expires_at=spec.expires_at, created_at=now)
            session.add(bounty)
            await session.flush()
            await session.exec(update(LedgerAccount).where(col(LedgerAccount.id) == escrow)  # type: ignore[call-overload]
                               .values(key=f"{ESCROW_PREFIX}{bounty.id}"))
            session.add(BountyBenefactor(bounty_id=bounty.id, user_id=user.id, amount=spec.amount,  # type: ignore[arg-type]
                                         created_at=now))
            receipt = await self.ledger.post(session, type=TxType.BOUNTY_CONTRIBUTION, actor=actor, fingerprint=fp,
                                             postings={payer: -spec.amount, escrow: spec.amount},
                                             reason=f"starting amount of bounty {bounty.id}",
                                             subject=f"bounty:{bounty.id}", idempotency_key=idempotency_key)
            return bounty, receipt

        return await self.ledger.run(work)

    async def contribute(self, user: User, bounty_id: int, amount: int, *, idempotency_key: str | None = None,
                         now: datetime | None = None) -> Receipt:
        """Add `amount` from `user` to an open bounty's pool (adding to the user's share)."""
        amount = check_amount(amount, self.ledger.settings.max_amount)
        if amount < self.settings.min_amount:
            raise InvalidInput(f"amount must be at least {self.settings.min_amount} on this node")
        idempotency_key = check_idempotency_key(idempotency_key)
        actor = Actor.of(user)
        fp = fingerprint("bounty.contribute", bounty_id, amount)

        async def work(session: AsyncSession) -> Receipt:
            # The replay check comes after the bounty's lock: a concurrent twin that holds it may be about
            # to commit this very key.
            bounty = await self._locked(session, bounty_id)
            replay = await self.ledger.find(session, actor, idempotency_key, fp)
            if replay is not None:
                return replay
            at = now or utcnow()
            if bounty.state != "open" or at >= bounty.expires_at:
                raise Conflict(f"bounty {bounty_id} is closed to contributions", code="bounty_closed")
            share = await session.get(BountyBenefactor, (bounty_id, user.id))
            if share is not None and share.outcome is not None:
                raise Conflict("you have already awarded your share of this bounty; it takes no more from you",
                               code="already_awarded")
            payer = await self.ledger.user_account(session, user.id)  # type: ignore[arg-type]
            if share is None:
                session.add(BountyBenefactor(bounty_id=bounty_id, user_id=user.id, amount=amount,  # type: ignore[arg-type]
                                             created_at=at))
            else:
                await session.exec(update(BountyBenefactor)  # type: ignore[call-overload]
                                   .where(col(BountyBenefactor.bounty_id) == bounty_id,
                                          col(BountyBenefactor.user_id) == user.id)
                                   .values(amount=BountyBenefactor.amount + amount))
            return await self.ledger.post(session, type=TxType.BOUNTY_CONTRIBUTION, actor=actor, fingerprint=fp,
                                          postings={payer: -amount, bounty.escrow_account_id: amount},
                                          reason=f"contribution to bounty {bounty_id}", subject=f"bounty:{bounty_id}",
                                          idempotency_key=idempotency_key)

        return await self.ledger.run(work)

    async def enter(self, user: User, bounty_id: int, *, image_id: int | None = None, version_id: int | None = None,
                    note: str = "", now: datetime | None = None) -> BountyEntry:
        """Submit an image and/or a model version of `user`'s to an open bounty."""
        if image_id is None and version_id is None:
            raise InvalidInput("an entry needs an image_id or a version_id (or both)")
        if not isinstance(note, str) or len(note) > NOTE_MAX:
            raise InvalidInput(f"note must be at most {NOTE_MAX} characters")

        async def work(session: AsyncSession) -> BountyEntry:
            at = now or utcnow()
            bounty = await self._locked(session, bounty_id)
            if bounty.state != "open" or at >= bounty.expires_at:
                raise Conflict(f"bounty {bounty_id} takes no more entries", code="bounty_closed")
            if bounty.entry_mode == "benefactors" and await session.get(BountyBenefactor, (bounty_id, user.id)) is None:
                raise Forbidden("only benefactors may enter this bounty: contribute to it first")
            count = (await session.exec(select(func.count()).select_from(BountyEntry).where(
                BountyEntry.bounty_id == bounty_id, BountyEntry.user_id == user.id))).one()
            if count >= bounty.entry_limit:
                raise Conflict(f"you already have {count} entries in this bounty, its limit per user",
                               code="entry_limit")
            if image_id is not None:
                image = await session.get(Image, image_id)
                if image is None or image.owner_id != user.id:
                    raise InvalidInput(f"image {image_id} is not an image of yours")
            if version_id is not None:
                owner = (await session.exec(select(Model.owner_id).join(
                    ModelVersion, col(ModelVersion.model_id) == col(Model.id)).where(ModelVersion.id == version_id))).first()
                if owner != user.id:
                    raise InvalidInput(f"model version {version_id} is not a version of yours")
                files = (await session.exec(select(func.count()).select_from(ModelFile)
                                            .where(ModelFile.version_id == version_id))).one()
                if not files:
                    raise InvalidInput(f"model version {version_id} has no files yet: upload them first")
            entry = BountyEntry(bounty_id=bounty_id, user_id=user.id, image_id=image_id, version_id=version_id,  # type: ignore[arg-type]
                                note=note.strip(), created_at=at)
            session.add(entry)
            await session.flush()
            return entry

        return await self.ledger.run(work)

    async def award(self, user: User, bounty_id: int, entry_id: int, *, idempotency_key: str | None = None) -> Receipt:
        """Give `user`'s whole share of the pool to one entry; each benefactor awards once."""
        idempotency_key = check_idempotency_key(idempotency_key)
        actor = Actor.of(user)
        fp = fingerprint("bounty.award", bounty_id, entry_id)

        async def work(session: AsyncSession) -> Receipt:
            bounty = await self._locked(session, bounty_id)  # before the replay check, as in `contribute`
            replay = await self.ledger.find(session, actor, idempotency_key, fp)
            if replay is not None:
                return replay
            if bounty.state != "open":
                raise Conflict(f"bounty {bounty_id} is closed", code="bounty_closed")
            entry = await session.get(BountyEntry, entry_id)
            if entry is None or entry.bounty_id != bounty_id:
                raise NotFound(f"bounty {bounty_id} has no entry {entry_id}")
            if entry.user_id == user.id:
                raise Forbidden("you cannot award your own entry")
            share = await session.get(BountyBenefactor, (bounty_id, user.id))
            if share is None:
                raise Forbidden("only the bounty's benefactors award it: contribute to it first")
            if share.outcome is not None:
                raise Conflict(f"your share was already {share.outcome}", code="already_awarded")
            done = await session.exec(update(BountyBenefactor)  # type: ignore[call-overload]
                                      .where(col(BountyBenefactor.bounty_id) == bounty_id,
                                             col(BountyBenefactor.user_id) == user.id,
                                             col(BountyBenefactor.outcome).is_(None))
                                      .values(outcome="awarded", entry_id=entry_id, decided_at=utcnow()))
            if done.rowcount != 1:
                raise Conflict("your share was already awarded", code="already_awarded")
            await session.exec(update(BountyEntry).where(col(BountyEntry.id) == entry_id)  # type: ignore[call-overload]
                               .values(awarded=BountyEntry.awarded + share.amount))
            winner = await self.ledger.user_account(session, entry.user_id)
            return await self.ledger.post(session, type=TxType.BOUNTY_AWARD, actor=actor, fingerprint=fp,
                                          postings={bounty.escrow_account_id: -share.amount, winner: share.amount},
                                          reason=f"award of bounty {bounty_id} to entry {entry_id}",
                                          subject=f"bounty:{bounty_id}", idempotency_key=idempotency_key)

        return await self.ledger.run(work)

    # -- closing -------------------------------------------------------------------------------

    async def expire(self, now: datetime | None = None) -> list[tuple[int, str]]:
        """Close every bounty that is due at `now`; returns (bounty id, outcome) for each one closed.
        Safe to run twice, and from several processes at once."""
        now = now or utcnow()
        async with self.db.read_session() as session:
            due = (await session.exec(select(Bounty.id).where(Bounty.state == "open", col(Bounty.expires_at) <= now)
                                      .order_by(col(Bounty.id)))).all()
        closed = []
        for bounty_id in due:
            outcome = await self.close(bounty_id, now)  # type: ignore[arg-type]
            if outcome is not None:
                closed.append((bounty_id, outcome))
        return closed

    async def close(self, bounty_id: int, now: datetime | None = None) -> str | None:
        """Close one bounty if it is due: `refunded` (no entries), `awarded` (after the grace period),
        or None (not due yet, or already closed)."""
        now = now or utcnow()

        async def work(session: AsyncSession) -> str | None:
            bounty = await self._locked(session, bounty_id)
            if bounty.state != "open" or now < bounty.expires_at:
                return None
            entries = (await session.exec(select(BountyEntry).where(BountyEntry.bounty_id == bounty_id)
                                          .order_by(col(BountyEntry.id)))).all()
            if not entries:
                await self._refund(session, bounty, now)
                return "refunded"
            if now < bounty.expires_at + timedelta(days=self.settings.grace_days):
                return None
            await self._give_rest(session, bounty, list(entries), now)
            return "awarded"

        return await self.ledger.run(work)

    async def _outstanding(self, session: AsyncSession, bounty_id: int) -> list[BountyBenefactor]:
        return list((await session.exec(select(BountyBenefactor).where(
            BountyBenefactor.bounty_id == bounty_id, col(BountyBenefactor.outcome).is_(None))
            .order_by(col(BountyBenefactor.user_id)))).all())

    async def _set_state(self, session: AsyncSession, bounty: Bounty, state: str, now: datetime) -> None:
        done = await session.exec(update(Bounty).where(col(Bounty.id) == bounty.id, col(Bounty.state) == "open")  # type: ignore[call-overload]
                                  .values(state=state, closed_at=now))
        if done.rowcount != 1:  # another process closed it between our read and this write
            raise Conflict(f"bounty {bounty.id} was closed meanwhile", code="bounty_closed")

    async def _refund(self, session: AsyncSession, bounty: Bounty, now: datetime) -> None:
        await self._set_state(session, bounty, "refunded", now)
        shares = await self._outstanding(session, bounty.id)  # type: ignore[arg-type]
        postings: dict[int, int] = {}
        for share in shares:
            account = await self.ledger.user_account(session, share.user_id)
            postings[account] = postings.get(account, 0) + share.amount
        await session.exec(update(BountyBenefactor).where(  # type: ignore[call-overload]
            col(BountyBenefactor.bounty_id) == bounty.id, col(BountyBenefactor.outcome).is_(None))
            .values(outcome="refunded", decided_at=now))
        total = sum(postings.values())
        if total:
            postings[bounty.escrow_account_id] = -total
            key = f"refund:bounty:{bounty.id}"
            await self.ledger.post(session, type=TxType.REFUND, actor=SYSTEM, fingerprint=fingerprint(key),
                                   postings=postings, reason=f"bounty {bounty.id} expired without entries",
                                   subject=f"bounty:{bounty.id}", idempotency_key=key)

    async def _give_rest(self, session: AsyncSession, bounty: Bounty, entries: list[BountyEntry], now: datetime) -> None:
        await self._set_state(session, bounty, "awarded", now)
        shares = await self._outstanding(session, bounty.id)  # type: ignore[arg-type]
        total = sum(s.amount for s in shares)
        if not total:
            return
        scores = [(e.id, await self._reactions(session, e)) for e in entries]
        if bounty.award_mode == "split":
            parts = split_by_weight(total, scores)  # type: ignore[arg-type]
        else:  # the most reactions; among equals, the earliest entry
            top = max(scores, key=lambda s: (s[1], -s[0]))[0]
            parts = {top: total}
        by_id = {e.id: e for e in entries}
        postings: dict[int, int] = {bounty.escrow_account_id: -total}
        for entry_id, part in parts.items():
            account = await self.ledger.user_account(session, by_id[entry_id].user_id)
            postings[account] = postings.get(account, 0) + part
            await session.exec(update(BountyEntry).where(col(BountyEntry.id) == entry_id)  # type: ignore[call-overload]
                               .values(awarded=BountyEntry.awarded + part))
        single = next(iter(parts)) if len(parts) == 1 else None
        await session.exec(update(BountyBenefactor).where(  # type: ignore[call-overload]
            col(BountyBenefactor.bounty_id) == bounty.id, col(BountyBenefactor.outcome).is_(None))
            .values(outcome="auto", entry_id=single, decided_at=now))
        key = f"close:bounty:{bounty.id}"
        await self.ledger.post(session, type=TxType.BOUNTY_AWARD, actor=SYSTEM, fingerprint=fingerprint(key),
                               postings=postings, reason=f"unawarded pool of bounty {bounty.id} after its grace period",
                               subject=f"bounty:{bounty.id}", idempotency_key=key)

    async def _reactions(self, session: AsyncSession, entry: BountyEntry) -> int:
        """An entry's reactions: its image's likes, hearts, laughs and cries, plus its version's thumbs up."""
        score = 0
        if entry.image_id is not None:
            image = await session.get(Image, entry.image_id)
            if image is not None:
                score += image.like_count + image.heart_count + image.laugh_count + image.cry_count
        if entry.version_id is not None:
            version = await session.get(ModelVersion, entry.version_id)
            if version is not None:
                score += version.thumbs_up_count
        return score

    # -- reading -------------------------------------------------------------------------------

    async def view(self, bounty_id: int) -> dict[str, Any]:
        """A bounty with its pool, benefactors and entries, as JSON-ready data."""
        async with self.db.read_session() as session:
            row = (await session.exec(select(Bounty, User.username, LedgerAccount.balance)
                                      .join(User, col(User.id) == col(Bounty.creator_id))
                                      .join(LedgerAccount, col(LedgerAccount.id) == col(Bounty.escrow_account_id))
                                      .where(Bounty.id == bounty_id))).first()
            if row is None:
                raise NotFound(f"no bounty {bounty_id}")
            bounty, creator, pool = row
            shares = (await session.exec(select(BountyBenefactor, User.username)
                                         .join(User, col(User.id) == col(BountyBenefactor.user_id))
                                         .where(BountyBenefactor.bounty_id == bounty_id)
                                         .order_by(col(BountyBenefactor.created_at), col(BountyBenefactor.user_id)))).all()
            entries = (await session.exec(select(BountyEntry, User.username)
                                          .join(User, col(User.id) == col(BountyEntry.user_id))
                                          .where(BountyEntry.bounty_id == bounty_id).order_by(col(BountyEntry.id)))).all()
        data = bounty_json(bounty, creator, pool, len(entries))
        data["benefactors"] = [{"username": name, "amount": s.amount, "outcome": s.outcome, "entry_id": s.entry_id}
                               for s, name in shares]
        data["entries"] = [entry_json(e, name) for e, name in entries]
        return data

    async def list(self, *, state: str | None = None, before: int | None = None,
                   limit: int = 50) -> tuple[list[dict[str, Any]], int | None]:
        """Bounties, newest first, optionally in one state; the cursor of the next page (or None)."""
        if state is not None and state not in ("open", "awarded", "refunded"):
            raise InvalidInput("state must be open, awarded or refunded")
        if not 1 <= limit <= LIST_MAX:
            raise InvalidInput(f"limit must be 1-{LIST_MAX}")
        entries = (select(BountyEntry.bounty_id, func.count().label("n")).group_by(col(BountyEntry.bounty_id))
                   .subquery())
        query = (select(Bounty, User.username, LedgerAccount.balance, entries.c.n)
                 .join(User, col(User.id) == col(Bounty.creator_id))
                 .join(LedgerAccount, col(LedgerAccount.id) == col(Bounty.escrow_account_id))
                 .outerjoin(entries, entries.c.bounty_id == col(Bounty.id)))
        if state is not None:
            query = query.where(Bounty.state == state)
        if before is not None:
            query = query.where(col(Bounty.id) < before)
        async with self.db.read_session() as session:
            rows = (await session.exec(query.order_by(col(Bounty.id).desc()).limit(limit + 1))).all()
        items = [bounty_json(b, creator, pool, n or 0) for b, creator, pool, n in rows[:limit]]
        return items, (rows[limit - 1][0].id if len(rows) > limit else None)

    async def escrow_mismatches(self) -> list[tuple[int, int, int]]:
        """(bounty id, escrow balance, outstanding shares) for every bounty where the two differ: none,
        unless something is wrong."""
        outstanding = (select(BountyBenefactor.bounty_id, func.sum(BountyBenefactor.amount).label("owed"))
                       .where(col(BountyBenefactor.outcome).is_(None)).group_by(col(BountyBenefactor.bounty_id))
                       .subquery())
        async with self.db.read_session() as session:
            rows = (await session.exec(select(Bounty.id, LedgerAccount.balance, outstanding.c.owed)
                                       .join(LedgerAccount, col(LedgerAccount.id) == col(Bounty.escrow_account_id))
                                       .outerjoin(outstanding, outstanding.c.bounty_id == col(Bounty.id)))).all()
        return [(i, b, int(o or 0)) for i, b, o in rows if b != int(o or 0)]


def bounty_json(bounty: Bounty, creator: str, pool: int, entry_count: int) -> dict[str, Any]:
    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {"id": bounty.id, "name": bounty.name, "description": bounty.description, "type": bounty.type,
            "creator": creator, "pool": pool, "entry_count": entry_count, "state": bounty.state,
            "nsfw_level": bounty.nsfw_level, "tags": list(bounty.tags),
            "reference_image_ids": list(bounty.reference_image_ids), "entry_mode": bounty.entry_mode,
            "entry_limit": bounty.entry_limit, "award_mode": bounty.award_mode, "starts_at": when(bounty.starts_at),
            "expires_at": when(bounty.expires_at), "closed_at": when(bounty.closed_at),
            "created_at": when(bounty.created_at)}


def entry_json(entry: BountyEntry, username: str) -> dict[str, Any]:
    return {"id": entry.id, "bounty_id": entry.bounty_id, "username": username, "image_id": entry.image_id,
            "version_id": entry.version_id, "note": entry.note, "awarded": entry.awarded,
            "created_at": entry.created_at.isoformat()}


_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_expiry(text: Any) -> datetime:
    """When a bounty expires: `YYYY-MM-DD` means at the end of that day (UTC); or an ISO time with a zone."""
    if not isinstance(text, str) or len(text) > 40:
        raise InvalidInput("expires must be a date YYYY-MM-DD or an ISO 8601 time with a zone")
    try:
        if _DATE_RE.match(text):
            return datetime.fromisoformat(text).replace(tzinfo=UTC) + timedelta(days=1)
        value = datetime.fromisoformat(text)
    except (ValueError, OverflowError):  # OverflowError: the day after 9999-12-31
        raise InvalidInput(f"expires: {text!r} is not a date YYYY-MM-DD or an ISO 8601 time") from None
    if value.tzinfo is None:
        raise InvalidInput("expires: give the time zone, e.g. 2026-12-01T12:00:00+00:00")
    return value.astimezone(UTC)
