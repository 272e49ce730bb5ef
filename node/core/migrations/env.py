"""Alembic environment: migrations run on a connection handed over by node.core.db."""

from alembic import context

from node.core.db import declared_in_tables
from node.core.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `atrium db upgrade`, which opens the configured database")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things; batch mode rebuilds tables there and is a no-op elsewhere.
    render_as_batch=True,
    compare_type=True,
    include_object=declared_in_tables,
)
with context.begin_transaction():
    context.run_migrations()
