"""followed peers and the mirrored index of their models

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "peers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=512), nullable=False),
        sa.Column("node_id", sa.String(length=128), nullable=True),
        sa.Column("name", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("evidence", sa.JSON(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_peers"),
        sa.UniqueConstraint("url", name="uq_peers_url"),
    )
    op.create_index("ix_peers_node_id", "peers", ["node_id"])
    op.create_table(
        "remote_models",
        sa.Column("origin", sa.String(length=128), nullable=False),
        sa.Column("remote_id", sa.Integer(), nullable=False),
        sa.Column("origin_name", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("nsfw_level", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=True),
        sa.Column("creator", sa.String(length=64), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("versions", sa.JSON(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("origin", "remote_id", name="pk_remote_models"),
    )
    op.create_index("ix_remote_models_type", "remote_models", ["type"])


def downgrade() -> None:
    op.drop_index("ix_remote_models_type", table_name="remote_models")
    op.drop_table("remote_models")
    op.drop_index("ix_peers_node_id", table_name="peers")
    op.drop_table("peers")
