"""listing indexes: published models in each common sort order, and models by tag

Revision ID: 0003
Revises: 0002

Listings walk the index of their sort order among published models and stop after a page
(node.core.search): (status, sort key, id) for Newest/Oldest, Most Downloaded and Most Liked, and on
SQLite for Highest Rated, which sorts by an expression (PostgreSQL renders that expression differently
and plans it its own way). (tag_id, model_id) lists a tag's models without reading the table rows.

These indexes are not declared in node.core.tables (an expression index cannot be); db.py's
`declared_in_tables` tells Alembic's comparison to leave them alone.
"""

from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

SORT_COLUMNS = ("published_at", "download_count", "like_count")
# Must stay identical to node.core.search.rating_expr() as SQLAlchemy renders it for SQLite.
SQLITE_RATING = ("CASE WHEN (rating_count > 0) THEN CAST(rating_sum AS FLOAT) / (rating_count + 0.0) "
                 "ELSE 0.0 END")


def upgrade() -> None:
    op.execute("CREATE INDEX ix_model_tags_tag_model ON model_tags (tag_id, model_id)")
    for column in SORT_COLUMNS:
        op.execute(f"CREATE INDEX ix_models_status_{column} ON models (status, {column}, id)")
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"CREATE INDEX ix_models_status_rating ON models (status, {SQLITE_RATING}, id)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP INDEX IF EXISTS ix_models_status_rating")
    for column in SORT_COLUMNS:
        op.execute(f"DROP INDEX IF EXISTS ix_models_status_{column}")
    op.execute("DROP INDEX IF EXISTS ix_model_tags_tag_model")
