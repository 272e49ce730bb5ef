"""search documents in normalised form (accents folded, lower case, letter/digit words)

Revision ID: 0004
Revises: 0003

Documents written before this revision hold the text as typed; SQLite's and PostgreSQL's tokenizers
split such text differently. Rewrite each one in the form node.core.search.search_document gives.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from node.core.search import search_document

    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT model_id, document FROM model_search")).all()
    for model_id, document in rows:
        normalised = search_document(document.split("\n"))
        if normalised != document:
            bind.execute(sa.text("UPDATE model_search SET document = :d WHERE model_id = :m"),
                         {"d": normalised, "m": model_id})


def downgrade() -> None:
    # The original spelling is not kept; normalised documents still search correctly.
    pass
