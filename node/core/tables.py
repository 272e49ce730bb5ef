"""Database tables (SQLModel). Every change here needs an Alembic migration in node/core/migrations;
tests/test_migrations.py fails when the two disagree."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

metadata = SQLModel.metadata
metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (SQLite keeps no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def timestamp(*, nullable: bool = False, index: bool = False) -> Any:
    """A UTC timestamp column; defaults to now when not nullable."""
    kwargs: dict[str, Any] = {"sa_type": UTCDateTime, "nullable": nullable, "index": index}
    if nullable:
        return Field(default=None, **kwargs)
    return Field(default_factory=utcnow, **kwargs)


class Role(StrEnum):
    """What a user may do. Each role includes the powers of the ones after it."""

    ADMIN = "admin"          # runs the node: users, plugins, federation, everything
    MODERATOR = "moderator"  # reviews reports, hides and takes down content
    CREATOR = "creator"      # publishes models and images
    MEMBER = "member"        # downloads, reviews, reacts, generates

    @property
    def rank(self) -> int:
        return list(reversed(Role)).index(self)

    def includes(self, other: Role) -> bool:
        """True when this role has at least the powers of `other`."""
        return self.rank >= other.rank


class User(SQLModel, table=True):
    """A person with an account on this node."""

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=39)
    # Lower-cased username: names are unique regardless of case.
    username_key: str = Field(max_length=39, unique=True)
    role: str = Field(default=Role.MEMBER.value, max_length=16)
    password_hash: str | None = Field(default=None, max_length=255)
    email: str | None = Field(default=None, max_length=254)
    disabled: bool = Field(default=False)
    created_at: datetime = timestamp()


class ApiToken(SQLModel, table=True):
    """An API token. Only its SHA-256 is stored; the token itself is shown once, at creation."""

    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    name: str = Field(max_length=100)
    token_hash: str = Field(max_length=64, unique=True)
    # The first characters of the token, so a user can tell tokens apart in a list.
    prefix: str = Field(max_length=16)
    created_at: datetime = timestamp()
    expires_at: datetime | None = timestamp(nullable=True)
    last_used_at: datetime | None = timestamp(nullable=True)
    revoked_at: datetime | None = timestamp(nullable=True)


# -- catalog ---------------------------------------------------------------------------------------


def json_column(default: Any = None) -> Any:
    """A JSON column (JSON on SQLite, json on PostgreSQL)."""
    if callable(default):
        return Field(default_factory=default, sa_type=sa.JSON, nullable=False)
    return Field(default=default, sa_type=sa.JSON, nullable=True)


class Model(SQLModel, table=True):
    """A model: what people search for; its versions hold the files."""

    __tablename__ = "models"

    id: int | None = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="users.id", ondelete="RESTRICT", index=True)
    name: str = Field(max_length=255)
    description: str = Field(default="", sa_type=sa.Text)
    type: str = Field(max_length=32, index=True)
    status: str = Field(default="Draft", max_length=16, index=True)
    mode: str | None = Field(default=None, max_length=16)
    nsfw_level: int = Field(default=1)
    # Set by a moderator (node/core/reports.py): the owner can no longer change nsfw_level.
    level_locked: bool = Field(default=False)
    allow_no_credit: bool = Field(default=True)
    allow_commercial_use: list[str] = json_column(lambda: ["Sell"])
    allow_derivatives: bool = Field(default=True)
    allow_different_license: bool = Field(default=True)
    created_at: datetime = timestamp()
    updated_at: datetime = timestamp()
    published_at: datetime | None = timestamp(nullable=True, index=True)
    # Stats, kept in step with reactions, reviews, comments and downloads in the same transaction.
    download_count: int = Field(default=0, index=True)
    like_count: int = Field(default=0)
    dislike_count: int = Field(default=0)
    comment_count: int = Field(default=0)
    rating_count: int = Field(default=0)
    rating_sum: int = Field(default=0)
    image_count: int = Field(default=0)


class Tag(SQLModel, table=True):
    __tablename__ = "tags"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)


class ModelTag(SQLModel, table=True):
    __tablename__ = "model_tags"

    model_id: int = Field(foreign_key="models.id", ondelete="CASCADE", primary_key=True)
    tag_id: int = Field(foreign_key="tags.id", ondelete="CASCADE", primary_key=True, index=True)


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_versions"

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="models.id", ondelete="CASCADE", index=True)
    name: str = Field(max_length=255)
    description: str = Field(default="", sa_type=sa.Text)
    base_model: str = Field(max_length=64, index=True)
    trained_words: list[str] = json_column(list)
    clip_skip: int | None = Field(default=None)
    status: str = Field(default="Draft", max_length=16)
    created_at: datetime = timestamp()
    updated_at: datetime = timestamp()
    published_at: datetime | None = timestamp(nullable=True)
    download_count: int = Field(default=0)
    rating_count: int = Field(default=0)
    rating_sum: int = Field(default=0)
    thumbs_up_count: int = Field(default=0)
    thumbs_down_count: int = Field(default=0)


class ModelFile(SQLModel, table=True):
    """A file of a version; its bytes are the blob named by `sha256`."""

    __tablename__ = "model_files"

    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="model_versions.id", ondelete="CASCADE", index=True)
    name: str = Field(max_length=255)
    size: int
    type: str = Field(default="Model", max_length=32)
    format: str = Field(default="SafeTensor", max_length=16)
    fp: str | None = Field(default=None, max_length=8)
    size_kind: str | None = Field(default=None, max_length=8)
    primary: bool = Field(default=False)
    sha256: str = Field(max_length=64, index=True)
    blake3: str = Field(max_length=64)
    crc32: str = Field(max_length=8)
    autov1: str | None = Field(default=None, max_length=8)
    autov3: str | None = Field(default=None, max_length=64)
    header_digest: str | None = Field(default=None, max_length=64)
    file_metadata: dict[str, Any] | None = json_column()
    pickle_scan_result: str = Field(default="Success", max_length=16)
    virus_scan_result: str = Field(default="Pending", max_length=16)
    created_at: datetime = timestamp()


class FileHash(SQLModel, table=True):
    """Every hash of every file, one row each, so a lookup by any hash kind is one index probe."""

    __tablename__ = "file_hashes"

    file_id: int = Field(foreign_key="model_files.id", ondelete="CASCADE", primary_key=True)
    kind: str = Field(max_length=8, primary_key=True)
    value: str = Field(max_length=64, index=True)  # lowercase hex


class Image(SQLModel, table=True):
    """An image: an example on a version, a user's post, or a generation result."""

    __tablename__ = "images"

    id: int | None = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    version_id: int | None = Field(default=None, foreign_key="model_versions.id", ondelete="SET NULL", index=True)
    sha256: str = Field(max_length=64, index=True)
    thumbnail_sha256: str | None = Field(default=None, max_length=64)
    mime: str = Field(max_length=32)
    width: int
    height: int
    size: int
    nsfw_level: int = Field(default=1)
    level_locked: bool = Field(default=False)  # set by a moderator, as on models
    meta: dict[str, Any] | None = json_column()
    created_at: datetime = timestamp(index=True)
    like_count: int = Field(default=0)
    heart_count: int = Field(default=0)
    laugh_count: int = Field(default=0)
    cry_count: int = Field(default=0)
    dislike_count: int = Field(default=0)
    comment_count: int = Field(default=0)


class ImageResource(SQLModel, table=True):
    """A resource an image says it was made with, linked to a catalog version when a hash matches."""

    __tablename__ = "image_resources"

    id: int | None = Field(default=None, primary_key=True)
    image_id: int = Field(foreign_key="images.id", ondelete="CASCADE", index=True)
    version_id: int | None = Field(default=None, foreign_key="model_versions.id", ondelete="SET NULL", index=True)
    name: str | None = Field(default=None, max_length=255)
    kind: str = Field(max_length=16)  # checkpoint, lora, embedding, vae...
    hash: str | None = Field(default=None, max_length=64)
    weight: float | None = Field(default=None)


class Review(SQLModel, table=True):
    """One review per member and version."""

    __tablename__ = "reviews"
    __table_args__ = (sa.UniqueConstraint("version_id", "user_id", name="uq_reviews_version_user"),)

    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="model_versions.id", ondelete="CASCADE", index=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE")
    rating: int
    recommended: bool
    text: str = Field(default="", sa_type=sa.Text)
    created_at: datetime = timestamp()
    updated_at: datetime = timestamp()


class ModelReaction(SQLModel, table=True):
    __tablename__ = "model_reactions"

    model_id: int = Field(foreign_key="models.id", ondelete="CASCADE", primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", primary_key=True)
    reaction: str = Field(max_length=8, primary_key=True)
    created_at: datetime = timestamp()


class ImageReaction(SQLModel, table=True):
    __tablename__ = "image_reactions"

    image_id: int = Field(foreign_key="images.id", ondelete="CASCADE", primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", primary_key=True)
    reaction: str = Field(max_length=8, primary_key=True)
    created_at: datetime = timestamp()


class Comment(SQLModel, table=True):
    __tablename__ = "comments"

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="models.id", ondelete="CASCADE", index=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE")
    text: str = Field(sa_type=sa.Text)
    created_at: datetime = timestamp()


class Upload(SQLModel, table=True):
    """A resumable upload in progress: bytes so far sit in a part file under the blob store."""

    __tablename__ = "uploads"

    id: str = Field(primary_key=True, max_length=32)
    owner_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    version_id: int = Field(foreign_key="model_versions.id", ondelete="CASCADE")
    filename: str = Field(max_length=255)
    size: int
    received: int = Field(default=0)
    file_type: str = Field(default="Model", max_length=32)
    created_at: datetime = timestamp()
    updated_at: datetime = timestamp()


class ModelSearch(SQLModel, table=True):
    """The text a model is found by (name, description, tags, trigger words, creator), one row per
    model, rebuilt whenever any of those change. SQLite indexes it with FTS5, PostgreSQL with a
    tsvector column; both are created by the migration, not declared here."""

    __tablename__ = "model_search"

    model_id: int = Field(foreign_key="models.id", ondelete="CASCADE", primary_key=True)
    document: str = Field(sa_type=sa.Text)


class FileTorrent(SQLModel, table=True):
    """A file's torrent (node/core/torrents.py), made when its version is published: the bencoded
    info dictionary and piece layers, without web seeds (those are added when it is served)."""

    __tablename__ = "file_torrents"

    file_id: int = Field(foreign_key="model_files.id", ondelete="CASCADE", primary_key=True)
    info_hash_v1: str = Field(max_length=40, index=True)
    info_hash_v2: str = Field(max_length=64, index=True)
    file_root: str = Field(max_length=64)
    piece_size: int
    data: bytes = Field(sa_type=sa.LargeBinary)
    created_at: datetime = timestamp()


class VersionManifest(SQLModel, table=True):
    """A version's signed manifest (node/core/manifests.py): the DSSE envelope exactly as signed and
    served. `files_digest` names the set of files it covers, so a changed version gets a new one."""

    __tablename__ = "version_manifests"

    version_id: int = Field(foreign_key="model_versions.id", ondelete="CASCADE", primary_key=True)
    envelope: bytes = Field(sa_type=sa.LargeBinary)
    files_digest: str = Field(max_length=64)
    key_id: str = Field(max_length=128)
    created_at: datetime = timestamp()


class LogEntry(SQLModel, table=True):
    """An entry of a node's signed federation log (this node's own, or one mirrored from a peer),
    stored as the exact bytes that were signed (federation/log.py)."""

    __tablename__ = "log_entries"

    origin: str = Field(max_length=128, primary_key=True)  # the node id that signed it
    seq: int = Field(primary_key=True)
    data: bytes = Field(sa_type=sa.LargeBinary)
    sig: bytes = Field(sa_type=sa.LargeBinary)
    entry_hash: str = Field(max_length=64)  # sha256(data): the next entry's `prev`
    leaf_hash: str = Field(max_length=64)  # RFC 6962 leaf hash of data
    kind: str = Field(max_length=32)
    created_at: datetime = timestamp()


class LogHead(SQLModel, table=True):
    """The latest entry of each log: locked while appending, so sequence numbers never collide."""

    __tablename__ = "log_heads"

    origin: str = Field(max_length=128, primary_key=True)
    seq: int = Field(default=0)
    entry_hash: str = Field(max_length=64)
    # After a key rotation (node/core/keychain.py): the key that signs the origin's next entries (None:
    # the key the origin's id stands for), and each retired key with the seq of the rotation that
    # retired it, so a follower refuses entries a retired key signs later.
    key_id: str | None = Field(default=None, max_length=128)
    retired_keys: dict[str, int] | None = json_column()


class Peer(SQLModel, table=True):
    """A node this node follows: where it is, who it is, and how syncing its log goes."""

    __tablename__ = "peers"

    id: int | None = Field(default=None, primary_key=True)
    url: str = Field(max_length=512, unique=True)
    node_id: str | None = Field(default=None, max_length=128, index=True)  # learnt at the first contact
    name: str | None = Field(default=None, max_length=64)
    state: str = Field(default="active", max_length=16)  # active, halted (fork / bad signature), blocked
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    evidence: dict[str, Any] | None = json_column()  # what made a halted peer stop, for the admin
    failures: int = Field(default=0)
    last_synced_at: datetime | None = timestamp(nullable=True)
    created_at: datetime = timestamp()


class RemoteModel(SQLModel, table=True):
    """A model published on another node, as its signed log last described it (the mirrored index)."""

    __tablename__ = "remote_models"

    origin: str = Field(max_length=128, primary_key=True)  # the origin node's id
    remote_id: int = Field(primary_key=True)
    origin_name: str = Field(max_length=64)
    origin_url: str | None = Field(default=None, max_length=512)  # where its files and manifests are
    name: str = Field(max_length=255)
    type: str = Field(max_length=32, index=True)
    description: str = Field(default="", sa_type=sa.Text)
    nsfw_level: int = Field(default=1)
    mode: str | None = Field(default=None, max_length=16)
    creator: str | None = Field(default=None, max_length=64)
    tags: list[str] = json_column(list)
    versions: list[dict[str, Any]] = json_column(list)
    seq: int  # the log entry this state comes from
    updated_at: datetime = timestamp()


class RemoteFile(SQLModel, table=True):
    """One file of a published version on a followed node: what by-hash lookups, AIR resolution, base
    model filters and the mirroring policy read (filled beside `remote_models` from the same entries)."""

    __tablename__ = "remote_files"
    __table_args__ = (sa.Index("ix_remote_files_model", "origin", "model_id"),)

    origin: str = Field(max_length=128, primary_key=True)
    file_id: int = Field(primary_key=True)  # the file's id on its origin
    model_id: int
    version_id: int
    version_name: str = Field(default="", max_length=255)
    base_model: str = Field(default="", max_length=64)
    air: str = Field(default="", max_length=512)
    name: str = Field(max_length=255)
    size: int = Field(default=0, sa_type=sa.BigInteger)
    sha256: str = Field(max_length=64, index=True)
    primary: bool = Field(default=False)


class MirroredFile(SQLModel, table=True):
    """A followed node's file this node holds a copy of by its mirroring policy (federation/mirroring.py):
    fetched through the swarm, checked against the origin's signed manifest, then seeded."""

    __tablename__ = "mirrored_files"

    origin: str = Field(max_length=128, primary_key=True)  # the origin node's id
    file_id: int = Field(primary_key=True)  # the file's id on its origin
    version_id: int
    model_id: int
    name: str = Field(max_length=255)
    sha256: str = Field(max_length=64, index=True)
    size: int = Field(default=0, sa_type=sa.BigInteger)
    info_hash_v2: str | None = Field(default=None, max_length=64)  # the origin's torrent, once known
    state: str = Field(default="fetching", max_length=16)  # fetching, stored, failed
    failures: int = Field(default=0)
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    retry_at: datetime | None = timestamp(nullable=True)  # a failed fetch is tried again from then on
    mirrored_at: datetime | None = timestamp(nullable=True)  # when the verified copy entered the store
    created_at: datetime = timestamp()


class Follower(SQLModel, table=True):
    """A node that follows this one: where to push "pull now", and whether it may read the log."""

    __tablename__ = "followers"

    id: int | None = Field(default=None, primary_key=True)
    node_id: str = Field(max_length=128, unique=True)
    url: str = Field(max_length=512)
    state: str = Field(default="approved", max_length=16)  # approved, pending, blocked
    key_id: str | None = Field(default=None, max_length=128)  # its current key, once it rotated
    last_push_at: datetime | None = timestamp(nullable=True)
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = timestamp()


# -- browser sessions ------------------------------------------------------------------------------


class BrowserSession(SQLModel, table=True):
    """A signed-in or anonymous browser session of the web pages (node/web). Only the SHA-256 of the
    cookie's secret is stored, like API tokens; the CSRF token is derived from the secret itself."""

    __tablename__ = "browser_sessions"

    id: int | None = Field(default=None, primary_key=True)
    secret_hash: str = Field(max_length=64, unique=True)
    user_id: int | None = Field(default=None, foreign_key="users.id", ondelete="CASCADE", index=True)
    # The highest content level shown (a single NsfwLevel flag); anonymous sessions keep it here.
    browsing_level: int = Field(default=1)
    created_at: datetime = timestamp()
    last_seen_at: datetime = timestamp()
    expires_at: datetime = timestamp(index=True)


class UserPreference(SQLModel, table=True):
    """What a signed-in user chose on the web pages, kept across sessions and devices."""

    __tablename__ = "user_preferences"

    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", primary_key=True)
    browsing_level: int = Field(default=1)


# -- moderation ------------------------------------------------------------------------------------


class Report(SQLModel, table=True):
    """A member's report of a model, version, image or user, waiting in (or done with) the moderator queue."""

    __tablename__ = "reports"
    __table_args__ = (sa.Index("ix_reports_target", "target_kind", "target_id"),)

    id: int | None = Field(default=None, primary_key=True)
    reporter_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    target_kind: str = Field(max_length=8)  # model, version, image, user
    target_id: int
    reason: str = Field(max_length=16)  # TOSViolation, NSFW, Ownership, Spam
    details: str = Field(default="", sa_type=sa.Text)
    claimant_name: str | None = Field(default=None, max_length=255)  # Ownership claims only
    claimant_email: str | None = Field(default=None, max_length=254)
    evidence: str | None = Field(default=None, sa_type=sa.Text)
    status: str = Field(default="open", max_length=16, index=True)  # open, actioned, dismissed
    # "reporter:kind:id" while open, NULL once resolved: one open report per reporter and target.
    open_key: str | None = Field(default=None, max_length=64, unique=True)
    created_at: datetime = timestamp(index=True)
    resolved_at: datetime | None = timestamp(nullable=True)


class ModAction(SQLModel, table=True):
    """One thing a moderator did, recorded for good (rows are only ever added)."""

    __tablename__ = "mod_actions"
    __table_args__ = (sa.Index("ix_mod_actions_target", "target_kind", "target_id"),)

    id: int | None = Field(default=None, primary_key=True)
    moderator_id: int | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    target_kind: str = Field(max_length=8)  # model, image, user, report, remote
    target_id: int
    target_origin: str | None = Field(default=None, max_length=128)  # remote models: their origin node
    action: str = Field(max_length=16)
    level: int | None = Field(default=None)
    reason: str = Field(default="", sa_type=sa.Text)
    report_ids: list[int] = json_column(list)
    # The state before the action (level, lock, status, mode, models a ban unpublished): what a granted
    # appeal puts back.
    previous: dict[str, Any] | None = json_column()
    appeal_id: int | None = Field(default=None)  # set on the action that granted an appeal
    created_at: datetime = timestamp(index=True)


class Appeal(SQLModel, table=True):
    """An owner's appeal against a moderator action; a moderator grants (reverts it) or denies it."""

    __tablename__ = "appeals"

    id: int | None = Field(default=None, primary_key=True)
    action_id: int = Field(foreign_key="mod_actions.id", ondelete="CASCADE", unique=True)
    appellant_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    text: str = Field(sa_type=sa.Text)
    status: str = Field(default="open", max_length=16, index=True)  # open, granted, denied
    decided_by: int | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    decision: str = Field(default="", sa_type=sa.Text)
    created_at: datetime = timestamp()
    decided_at: datetime | None = timestamp(nullable=True)


class ContentLabel(SQLModel, table=True):
    """A content level a node (the labeler) put on a model of some origin, from its signed `label`
    log entry (or this node's own moderators); which labels count is decided by trust
    (`[federation] trusted_labelers`, federation/labels.py)."""

    __tablename__ = "content_labels"

    labeler: str = Field(max_length=128, primary_key=True)
    origin: str = Field(max_length=128, primary_key=True)
    model_id: int = Field(primary_key=True)
    level: int
    seq: int = Field(default=0)  # the labeler's log entry
    created_at: datetime = timestamp()


# -- jobs ------------------------------------------------------------------------------------------


class Job(SQLModel, table=True):
    """A unit of long work (a generation, a training run) done by a worker; see node/core/jobs.py."""

    __tablename__ = "jobs"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=64)
    owner_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    # pending, running, succeeded, failed, cancelled, expired (node.core.jobs.JobStatus)
    status: str = Field(max_length=16, index=True)
    params: dict[str, Any] = json_column(dict)
    progress: float = Field(default=0.0)
    message: str = Field(default="", max_length=500)
    detail: dict[str, Any] | None = json_column()
    result: dict[str, Any] | None = json_column()
    error: str | None = Field(default=None, max_length=2000)
    # Claims so far; a job whose lease runs out is retried while attempts < max_attempts.
    attempts: int = Field(default=0)
    max_attempts: int = Field(default=3)
    gpu: bool = Field(default=False)
    cancel_requested: bool = Field(default=False)
    # The SHA-256 of the current attempt's lease token: only its holder may report on the job.
    lease_hash: str | None = Field(default=None, max_length=64)
    worker: str | None = Field(default=None, max_length=100)
    device: str | None = Field(default=None, max_length=32)
    lease_until: datetime | None = timestamp(nullable=True)
    heartbeat_at: datetime | None = timestamp(nullable=True)
    # [{"name", "size", "content_type"}] of the stored output files (DATA/jobs/<id>/files/).
    files: list[dict[str, Any]] = json_column(list)
    created_at: datetime = timestamp()
    started_at: datetime | None = timestamp(nullable=True)
    finished_at: datetime | None = timestamp(nullable=True, index=True)


class WorkerToken(SQLModel, table=True):
    """A remote worker's credential (`atrium workers add`): it may only claim and report on jobs. Only its
    SHA-256 is stored, like API tokens."""

    __tablename__ = "worker_tokens"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    token_hash: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=16)
    created_at: datetime = timestamp()
    last_seen_at: datetime | None = timestamp(nullable=True)
    revoked_at: datetime | None = timestamp(nullable=True)


# The ledger's and the bounties' tables live in modules of their own but belong to this one metadata
# (imported last: they build on the helpers above).
from node.core import bounty_tables, ledger_tables  # noqa: E402,F401
