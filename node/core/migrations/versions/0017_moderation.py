"""reports, moderator actions, appeals, content labels; level locks on models and images

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (not a batch copy of the table, which on SQLite would lose the expression
    # indexes of migration 0003); the server default fills existing rows and stays harmlessly.
    op.add_column("models", sa.Column("level_locked", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("images", sa.Column("level_locked", sa.Boolean(), nullable=False, server_default=sa.false()))

    op.create_table(
        "reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reporter_id", sa.Integer(), nullable=False),
        sa.Column("target_kind", sa.String(length=8), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("claimant_name", sa.String(length=255), nullable=True),
        sa.Column("claimant_email", sa.String(length=254), nullable=True),
        sa.Column("evidence", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("open_key", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["reporter_id"], ["users.id"], name="fk_reports_reporter_id_users",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_reports"),
        sa.UniqueConstraint("open_key", name="uq_reports_open_key"),
    )
    op.create_index("ix_reports_reporter_id", "reports", ["reporter_id"])
    op.create_index("ix_reports_status", "reports", ["status"])
    op.create_index("ix_reports_created_at", "reports", ["created_at"])
    op.create_index("ix_reports_target", "reports", ["target_kind", "target_id"])

    op.create_table(
        "mod_actions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("moderator_id", sa.Integer(), nullable=True),
        sa.Column("target_kind", sa.String(length=8), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("target_origin", sa.String(length=128), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("level", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("report_ids", sa.JSON(), nullable=False),
        sa.Column("previous", sa.JSON(), nullable=True),
        sa.Column("appeal_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["moderator_id"], ["users.id"], name="fk_mod_actions_moderator_id_users",
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_mod_actions"),
    )
    op.create_index("ix_mod_actions_created_at", "mod_actions", ["created_at"])
    op.create_index("ix_mod_actions_target", "mod_actions", ["target_kind", "target_id"])

    op.create_table(
        "appeals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("action_id", sa.Integer(), nullable=False),
        sa.Column("appellant_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.Integer(), nullable=True),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["action_id"], ["mod_actions.id"], name="fk_appeals_action_id_mod_actions",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["appellant_id"], ["users.id"], name="fk_appeals_appellant_id_users",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["decided_by"], ["users.id"], name="fk_appeals_decided_by_users",
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_appeals"),
        sa.UniqueConstraint("action_id", name="uq_appeals_action_id"),
    )
    op.create_index("ix_appeals_appellant_id", "appeals", ["appellant_id"])
    op.create_index("ix_appeals_status", "appeals", ["status"])

    op.create_table(
        "content_labels",
        sa.Column("labeler", sa.String(length=128), nullable=False),
        sa.Column("origin", sa.String(length=128), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("labeler", "origin", "model_id", name="pk_content_labels"),
    )


def downgrade() -> None:
    op.drop_table("content_labels")
    op.drop_index("ix_appeals_status", table_name="appeals")
    op.drop_index("ix_appeals_appellant_id", table_name="appeals")
    op.drop_table("appeals")
    op.drop_index("ix_mod_actions_target", table_name="mod_actions")
    op.drop_index("ix_mod_actions_created_at", table_name="mod_actions")
    op.drop_table("mod_actions")
    op.drop_index("ix_reports_target", table_name="reports")
    op.drop_index("ix_reports_created_at", table_name="reports")
    op.drop_index("ix_reports_status", table_name="reports")
    op.drop_index("ix_reports_reporter_id", table_name="reports")
    op.drop_table("reports")
    op.drop_column("images", "level_locked")
    op.drop_column("models", "level_locked")
