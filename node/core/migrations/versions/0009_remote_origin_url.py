"""where a mirrored model's origin serves its files

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("remote_models") as batch:
        batch.add_column(sa.Column("origin_url", sa.String(length=512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("remote_models") as batch:
        batch.drop_column("origin_url")
