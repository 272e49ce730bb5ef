"""the ledger: accounts with balances, transactions and postings

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op


revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("balance >= 0 OR kind = 'mint'", name="ck_ledger_accounts_balance_not_negative"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_ledger_accounts_user_id_users",
                                ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_accounts"),
        sa.UniqueConstraint("key", name="uq_ledger_accounts_key"),
        sa.UniqueConstraint("user_id", name="uq_ledger_accounts_user_id"),
    )
    op.create_table(
        "ledger_transactions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_transactions"),
        sa.UniqueConstraint("actor", "idempotency_key", name="uq_ledger_transactions_actor_key"),
    )
    op.create_index("ix_ledger_transactions_type", "ledger_transactions", ["type"])
    op.create_index("ix_ledger_transactions_subject", "ledger_transactions", ["subject"])
    op.create_table(
        "ledger_postings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transaction_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["transaction_id"], ["ledger_transactions.id"],
                                name="fk_ledger_postings_transaction_id_ledger_transactions", ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["account_id"], ["ledger_accounts.id"],
                                name="fk_ledger_postings_account_id_ledger_accounts", ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_postings"),
    )
    op.create_index("ix_ledger_postings_transaction_id", "ledger_postings", ["transaction_id"])
    op.create_index("ix_ledger_postings_account_id_id", "ledger_postings", ["account_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_ledger_postings_account_id_id", table_name="ledger_postings")
    op.drop_index("ix_ledger_postings_transaction_id", table_name="ledger_postings")
    op.drop_table("ledger_postings")
    op.drop_index("ix_ledger_transactions_subject", table_name="ledger_transactions")
    op.drop_index("ix_ledger_transactions_type", table_name="ledger_transactions")
    op.drop_table("ledger_transactions")
    op.drop_table("ledger_accounts")
