"""bounties (plugins/bounties): bounties, their entries and benefactors

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op


revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bounties",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("creator_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("nsfw_level", sa.Integer(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("reference_image_ids", sa.JSON(), nullable=False),
        sa.Column("entry_mode", sa.String(length=16), nullable=False),
        sa.Column("entry_limit", sa.Integer(), nullable=False),
        sa.Column("award_mode", sa.String(length=16), nullable=False),
        sa.Column("escrow_account_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["creator_id"], ["users.id"], name="fk_bounties_creator_id_users",
                                ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["escrow_account_id"], ["ledger_accounts.id"],
                                name="fk_bounties_escrow_account_id_ledger_accounts", ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name="pk_bounties"),
        sa.UniqueConstraint("escrow_account_id", name="uq_bounties_escrow_account_id"),
    )
    op.create_index("ix_bounties_creator_id", "bounties", ["creator_id"])
    op.create_index("ix_bounties_state", "bounties", ["state"])
    op.create_index("ix_bounties_expires_at", "bounties", ["expires_at"])
    op.create_table(
        "bounty_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("bounty_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=True),
        sa.Column("version_id", sa.Integer(), nullable=True),
        sa.Column("note", sa.String(length=1000), nullable=False),
        sa.Column("awarded", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["bounty_id"], ["bounties.id"], name="fk_bounty_entries_bounty_id_bounties",
                                ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_bounty_entries_user_id_users",
                                ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name="fk_bounty_entries_image_id_images",
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["version_id"], ["model_versions.id"],
                                name="fk_bounty_entries_version_id_model_versions", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_bounty_entries"),
    )
    op.create_index("ix_bounty_entries_bounty_id", "bounty_entries", ["bounty_id"])
    op.create_table(
        "bounty_benefactors",
        sa.Column("bounty_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("entry_id", sa.Integer(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["bounty_id"], ["bounties.id"], name="fk_bounty_benefactors_bounty_id_bounties",
                                ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_bounty_benefactors_user_id_users",
                                ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["entry_id"], ["bounty_entries.id"],
                                name="fk_bounty_benefactors_entry_id_bounty_entries", ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("bounty_id", "user_id", name="pk_bounty_benefactors"),
    )
    op.create_index("ix_bounty_benefactors_user_id", "bounty_benefactors", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_bounty_benefactors_user_id", table_name="bounty_benefactors")
    op.drop_table("bounty_benefactors")
    op.drop_index("ix_bounty_entries_bounty_id", table_name="bounty_entries")
    op.drop_table("bounty_entries")
    op.drop_index("ix_bounties_expires_at", table_name="bounties")
    op.drop_index("ix_bounties_state", table_name="bounties")
    op.drop_index("ix_bounties_creator_id", table_name="bounties")
    op.drop_table("bounties")
