"""the key each log's origin signs with now, and the keys it retired (key rotation)

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("log_heads") as batch:
        batch.add_column(sa.Column("key_id", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("retired_keys", sa.JSON(), nullable=True))
    with op.batch_alter_table("followers") as batch:
        batch.add_column(sa.Column("key_id", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("followers") as batch:
        batch.drop_column("key_id")
    with op.batch_alter_table("log_heads") as batch:
        batch.drop_column("retired_keys")
        batch.drop_column("key_id")
