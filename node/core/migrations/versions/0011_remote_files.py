"""the files of followed nodes' published versions, one row each

Revision ID: 0011
Revises: 0010
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "remote_files",
        sa.Column("origin", sa.String(length=128), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("version_name", sa.String(length=255), nullable=False),
        sa.Column("base_model", sa.String(length=64), nullable=False),
        sa.Column("air", sa.String(length=512), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("primary", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("origin", "file_id", name="pk_remote_files"),
    )
    op.create_index("ix_remote_files_sha256", "remote_files", ["sha256"])
    op.create_index("ix_remote_files_model", "remote_files", ["origin", "model_id"])
    # Models mirrored before this table existed: their files from the versions they carry (the same
    # rows federation/sync.py writes, frozen here as migrations are).
    bind = op.get_bind()
    rows = []
    for origin, remote_id, versions in bind.execute(sa.text("SELECT origin, remote_id, versions FROM remote_models")):
        if isinstance(versions, str):
            versions = json.loads(versions)
        rows.extend(remote_file_rows(origin, remote_id, versions or []))
    if rows:
        op.bulk_insert(table, rows)


def remote_file_rows(origin: str, model_id: int, versions: list) -> list[dict]:
    rows = []
    for version in versions:
        if not isinstance(version, dict) or not isinstance(version.get("id"), int):
            continue
        for f in version.get("files") or []:
            if not (isinstance(f, dict) and isinstance(f.get("id"), int) and isinstance(f.get("sha256"), str)):
                continue
            rows.append({"origin": origin, "file_id": f["id"], "model_id": model_id, "version_id": version["id"],
                         "version_name": str(version.get("name") or "")[:255],
                         "base_model": str(version.get("baseModel") or "")[:64],
                         "air": str(version.get("air") or "")[:512], "name": str(f.get("name") or "")[:255],
                         "size": f["size"] if isinstance(f.get("size"), int) else 0,
                         "sha256": f["sha256"].lower()[:64], "primary": bool(f.get("primary"))})
    return rows


def downgrade() -> None:
    op.drop_index("ix_remote_files_model", table_name="remote_files")
    op.drop_index("ix_remote_files_sha256", table_name="remote_files")
    op.drop_table("remote_files")
