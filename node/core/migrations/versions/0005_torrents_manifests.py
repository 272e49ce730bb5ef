"""torrents of files and signed manifests of versions

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "file_torrents",
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("info_hash_v1", sa.String(length=40), nullable=False),
        sa.Column("info_hash_v2", sa.String(length=64), nullable=False),
        sa.Column("file_root", sa.String(length=64), nullable=False),
        sa.Column("piece_size", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["file_id"], ["model_files.id"], name="fk_file_torrents_file_id_model_files",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("file_id", name="pk_file_torrents"),
    )
    op.create_index("ix_file_torrents_info_hash_v1", "file_torrents", ["info_hash_v1"])
    op.create_index("ix_file_torrents_info_hash_v2", "file_torrents", ["info_hash_v2"])
    op.create_table(
        "version_manifests",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("files_digest", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["model_versions.id"],
                                name="fk_version_manifests_version_id_model_versions", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("version_id", name="pk_version_manifests"),
    )


def downgrade() -> None:
    op.drop_table("version_manifests")
    op.drop_index("ix_file_torrents_info_hash_v2", table_name="file_torrents")
    op.drop_index("ix_file_torrents_info_hash_v1", table_name="file_torrents")
    op.drop_table("file_torrents")
